//! The prepared statements one server connection holds, by the names
//! pgrouter gave them (see `crate::prepared`), least recently used first
//! out.

use std::collections::HashMap;
use std::sync::Arc;

/// The statements one server connection holds, least recently used first
/// out.
#[derive(Default)]
pub struct ServerStatements {
    last_used: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    clock: u64,
}

impl ServerStatements {
    pub fn contains(&self, name: &str) -> bool {
        self.last_used.contains_key(name)
    }

    /// Marks a statement as held and just used.
    pub fn touch(&mut self, name: &Arc<str>) {
        self.clock += 1;
        self.last_used.insert(name.clone(), self.clock);
    }

    pub fn forget(&mut self, name: &str) {
        self.last_used.remove(name);
    }

    pub fn clear(&mut self) {
        self.last_used.clear();
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// The least recently used statements beyond `keep`, to be closed.
    pub fn over(&self, keep: usize) -> Vec<Arc<str>> {
        if self.last_used.len() <= keep {
            return Vec::new();
        }
        let mut by_age: Vec<(&Arc<str>, &u64)> = self.last_used.iter().collect();
        by_age.sort_by_key(|(_, used)| **used);
        by_age
            .into_iter()
            .take(self.last_used.len() - keep)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_go_first() {
        let mut held = ServerStatements::default();
        let names: Vec<Arc<str>> = ["a", "b", "c"].map(Arc::from).to_vec();
        for name in &names {
            held.touch(name);
        }
        held.touch(&names[0]);
        assert_eq!(held.over(1), vec![names[1].clone(), names[2].clone()]);
        assert!(held.over(3).is_empty());
    }
}
