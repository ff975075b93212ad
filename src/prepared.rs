//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing on a server connection it may
//! never have used. Each distinct statement (query text and parameter
//! types) gets one server-side name, the same for every client; a client's
//! name maps to it. A server connection is given a statement only when it
//! lacks it, and holds at most `max_prepared_statements` of them.

use crate::protocol::extended;
use crate::router::classify::Classification;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// One distinct statement, as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// A whole Parse message under `server_name`.
    pub parse: Bytes,
    /// Its routing classification, made once at Parse.
    pub class: Option<Arc<Classification>>,
}

/// Every statement any client has prepared, by content.
#[derive(Default)]
pub struct Registry {
    by_content: Mutex<HashMap<Box<[u8]>, Arc<Statement>>>,
    /// Server-side names are never reused, even for forgotten statements.
    named: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// The statement for this query and parameter types, created on first
    /// sight.
    pub fn intern(
        &self,
        query: &[u8],
        types: &[u8],
        class: impl FnOnce() -> Option<Arc<Classification>>,
    ) -> Arc<Statement> {
        let mut key = Vec::with_capacity(query.len() + 1 + types.len());
        key.extend_from_slice(query);
        key.push(0);
        key.extend_from_slice(types);
        let mut by_content = self.by_content.lock();
        if let Some(statement) = by_content.get(key.as_slice()) {
            return statement.clone();
        }
        let number = self
            .named
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let server_name: Arc<str> = format!("pgrouter_{number}").into();
        let mut parse = BytesMut::new();
        extended::parse_message(&mut parse, &server_name, query, types);
        let statement = Arc::new(Statement {
            server_name,
            parse: parse.freeze(),
            class: class(),
        });
        by_content.insert(key.into_boxed_slice(), statement.clone());
        statement
    }
}

impl Registry {
    /// Forgets a statement whose plan went stale (its table changed shape):
    /// the next Parse of the same text gets a fresh server-side name, so
    /// that it is prepared anew instead of reusing the stale one.
    pub fn invalidate(&self, statement: &Arc<Statement>) {
        self.by_content
            .lock()
            .retain(|_, known| !Arc::ptr_eq(known, statement));
    }
}

/// One client's statements, by the names it gave them.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<str>, Arc<Statement>, foldhash::fast::RandomState>,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    pub fn insert(&mut self, name: &str, statement: Arc<Statement>) {
        self.by_name.insert(name.into(), statement);
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_shares_a_server_name() {
        let registry = Registry::default();
        let a = registry.intern(b"select 1", &[0, 0], || None);
        let b = registry.intern(b"select 1", &[0, 0], || None);
        let c = registry.intern(b"select 2", &[0, 0], || None);
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.server_name, c.server_name);
        let parsed = extended::parse(&a.parse).unwrap();
        assert_eq!(parsed.name, &*a.server_name);
        assert_eq!(parsed.query, b"select 1");
    }
}
