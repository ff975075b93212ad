//! One client's statements, by the names it gave them, at most a fixed
//! number of them.
//!
//! PostgreSQL itself keeps every statement a session prepares; a pooler
//! that did the same would let one client that never closes its
//! statements (a name per query, as some drivers make) hold memory without
//! end. Past the limit the client's least recently used name is forgotten
//! (a later Bind of it gets PostgreSQL's 26000, "prepared statement does
//! not exist"), chosen by CLOCK as the classification cache does: a lookup
//! marks its name, and the hand passes over a marked name once, clearing
//! the mark, before evicting an unmarked one. A lookup (every Bind) thus
//! costs one hash lookup and a relaxed store, no allocation and no lock.

use super::Statement;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// One client's statements, by the names it gave them.
pub struct ClientStatements {
    by_name: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    /// Every name, each at its entry's `slot`: what the clock hand walks.
    ring: Vec<Arc<str>>,
    hand: usize,
    limit: usize,
    /// Names forgotten to stay within the limit, since the client came.
    evicted: u64,
}

struct Entry {
    statement: Arc<Statement>,
    slot: usize,
    /// Looked up since the hand last passed: spared once. Atomic only so
    /// that lookups can take `&self` in a `Sync` session.
    used: AtomicBool,
}

impl Default for ClientStatements {
    fn default() -> Self {
        ClientStatements::new(crate::config::DEFAULT_MAX_CLIENT_PREPARED_STATEMENTS)
    }
}

impl ClientStatements {
    /// A client's map holding at most `limit` names (at least one).
    pub fn new(limit: usize) -> ClientStatements {
        ClientStatements {
            by_name: HashMap::default(),
            ring: Vec::new(),
            hand: 0,
            limit: limit.max(1),
            evicted: 0,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        let entry = self.by_name.get(name)?;
        if !entry.used.load(Relaxed) {
            entry.used.store(true, Relaxed);
        }
        Some(&entry.statement)
    }

    /// Maps `name` to `statement` (replacing what it named), forgetting
    /// the least recently used name when the client holds its limit.
    pub fn insert(&mut self, name: &str, statement: Arc<Statement>) {
        if let Some(entry) = self.by_name.get_mut(name) {
            // The old statement's reference goes here.
            entry.statement = statement;
            *entry.used.get_mut() = true;
            return;
        }
        let name: Arc<str> = name.into();
        let entry = |slot| Entry {
            statement,
            slot,
            used: AtomicBool::new(false),
        };
        if self.ring.len() < self.limit {
            self.by_name.insert(name.clone(), entry(self.ring.len()));
            self.ring.push(name);
            return;
        }
        let slot = self.victim();
        let old = std::mem::replace(&mut self.ring[slot], name.clone());
        self.by_name.remove(&old);
        self.by_name.insert(name, entry(slot));
        if self.evicted == 0 {
            tracing::warn!(
                limit = self.limit,
                "a client holds its limit of prepared statements \
                 (pool.max_client_prepared_statements): its least recently used are forgotten"
            );
        }
        self.evicted += 1;
    }

    /// The slot to reuse: the first unmarked name from the hand on,
    /// clearing marks on the way (at most one turn and one step).
    fn victim(&mut self) -> usize {
        let len = self.ring.len();
        for _ in 0..=len {
            let at = self.hand % len;
            self.hand = (at + 1) % len;
            let spared = self
                .by_name
                .get(&self.ring[at])
                .is_some_and(|entry| entry.used.swap(false, Relaxed));
            if !spared {
                return at;
            }
        }
        self.hand
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let Some(entry) = self.by_name.remove(name) else {
            return false;
        };
        // The last name takes the freed slot, so the ring has no holes.
        if let Some(last) = self.ring.pop() {
            if entry.slot < self.ring.len() {
                if let Some(moved) = self.by_name.get_mut(&last) {
                    moved.slot = entry.slot;
                }
                self.ring[entry.slot] = last;
            }
        }
        true
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.ring.clear();
        self.hand = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Names forgotten to stay within the limit.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Checks that every name sits at its entry's slot.
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        assert_eq!(self.ring.len(), self.by_name.len());
        for (slot, name) in self.ring.iter().enumerate() {
            assert_eq!(self.by_name[name].slot, slot, "{name}");
        }
    }
}
