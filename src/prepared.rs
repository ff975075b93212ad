//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing on a server connection it may
//! never have used. Each distinct statement (query text and parameter
//! types) gets one server-side name, the same for every client; a client's
//! name maps to it. A server connection is given a statement only when it
//! lacks it, and holds at most `max_prepared_statements` of them.
//!
//! Nothing here grows with what clients send beyond fixed bounds:
//!
//! - the registry holds a statement only while some client's name (or a
//!   request in flight) refers to it: its map keeps `Weak`s, and a
//!   statement leaves the map when its last `Arc` is dropped (a client's
//!   name removed, replaced, cleared, evicted, or the client gone). Server
//!   connections hold only its server-side name, until their LRU closes
//!   it; the same text parsed again later gets a new name;
//! - the registry holds at most `max_distinct_prepared_statements`: past
//!   that a new statement is refused ([`RegistryFull`]);
//! - each client holds at most `max_client_prepared_statements` names
//!   (see [`ClientStatements`]), its least recently used name going first.

mod client;

pub use client::ClientStatements;

use crate::protocol::extended;
use crate::router::classify::Classification;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

/// One distinct statement, as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    /// A whole Parse message under `server_name`.
    pub parse: Bytes,
    /// Its routing classification, made once at Parse.
    pub class: Option<Arc<Classification>>,
    /// The registry's key: the query, a NUL and the parameter types, which
    /// is the tail of `parse` (no second copy of the text).
    content: Bytes,
    /// The registry to leave when the last reference goes.
    home: Weak<Shelf>,
}

impl Drop for Statement {
    fn drop(&mut self) {
        if let Some(shelf) = self.home.upgrade() {
            shelf.forget(self);
        }
    }
}

/// A Parse of a new statement while the registry holds its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many prepared statements: clients hold {limit} distinct ones, the limit \
     (pool.max_distinct_prepared_statements)"
)]
pub struct RegistryFull {
    pub limit: usize,
}

impl From<RegistryFull> for crate::protocol::ProtocolError {
    fn from(full: RegistryFull) -> Self {
        crate::protocol::ProtocolError::TooMany {
            what: "prepared statements",
            max: full.limit,
        }
    }
}

/// Every statement some client has prepared and still refers to, by
/// content.
pub struct Registry {
    shelf: Arc<Shelf>,
}

/// The registry's state, which its statements point back to.
struct Shelf {
    by_content: Mutex<HashMap<Bytes, Weak<Statement>, foldhash::fast::RandomState>>,
    /// Server-side names are never reused, even for forgotten statements:
    /// a server connection may still hold an old one.
    named: AtomicU64,
    limit: AtomicUsize,
    /// Parses of a new statement refused at the limit.
    refused: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(crate::config::DEFAULT_MAX_DISTINCT_PREPARED_STATEMENTS)
    }
}

impl Registry {
    /// A registry holding at most `limit` distinct statements.
    pub fn new(limit: usize) -> Registry {
        Registry {
            shelf: Arc::new(Shelf {
                by_content: Mutex::new(HashMap::default()),
                named: AtomicU64::new(0),
                limit: AtomicUsize::new(limit),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Applies a reloaded configuration's limit (the registry outlives
    /// generations). Statements already held stay.
    pub fn set_limit(&self, limit: usize) {
        self.shelf.limit.store(limit, Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.shelf.limit.load(Relaxed)
    }

    /// Distinct statements held now.
    pub fn len(&self) -> usize {
        self.shelf.by_content.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses of new statements refused since start.
    pub fn refused(&self) -> u64 {
        self.shelf.refused.load(Relaxed)
    }

    /// The statement for this query and parameter types, created on first
    /// sight (`class` is asked then, outside the registry's lock). Refused
    /// when it is new and the registry holds its limit.
    pub fn intern(
        &self,
        query: &[u8],
        types: &[u8],
        class: impl FnOnce() -> Option<Arc<Classification>>,
    ) -> Result<Arc<Statement>, RegistryFull> {
        let mut key = Vec::with_capacity(query.len() + 1 + types.len());
        key.extend_from_slice(query);
        key.push(0);
        key.extend_from_slice(types);
        let limit = self.limit();
        {
            // Upgrading under the lock cannot drop a statement (whose drop
            // takes the lock): a failed upgrade touches no strong count.
            let by_content = self.shelf.by_content.lock();
            if let Some(statement) = by_content.get(key.as_slice()).and_then(Weak::upgrade) {
                return Ok(statement);
            }
            if by_content.len() >= limit {
                self.shelf.refused.fetch_add(1, Relaxed);
                return Err(RegistryFull { limit });
            }
        }
        // Classifying may take a while: not under the lock.
        let class = class();
        let mut by_content = self.shelf.by_content.lock();
        if let Some(statement) = by_content.get(key.as_slice()).and_then(Weak::upgrade) {
            // Another session created it meanwhile.
            return Ok(statement);
        }
        if by_content.len() >= limit {
            self.shelf.refused.fetch_add(1, Relaxed);
            return Err(RegistryFull { limit });
        }
        let number = self.shelf.named.fetch_add(1, Relaxed) + 1;
        let server_name: Arc<str> = format!("pgrouter_{number}").into();
        let mut parse = BytesMut::with_capacity(1 + 4 + server_name.len() + 1 + key.len());
        extended::parse_message(&mut parse, &server_name, query, types);
        let parse = parse.freeze();
        let content = parse.slice(parse.len() - key.len()..);
        let statement = Arc::new(Statement {
            server_name,
            parse,
            class,
            content: content.clone(),
            home: Arc::downgrade(&self.shelf),
        });
        // Replaces a dead entry whose statement is being dropped on
        // another thread (its drop then finds another and leaves it).
        by_content.insert(content, Arc::downgrade(&statement));
        Ok(statement)
    }

    /// Forgets a statement whose plan went stale (its table changed shape):
    /// the next Parse of the same text gets a fresh server-side name, so
    /// that it is prepared anew instead of reusing the stale one.
    pub fn invalidate(&self, statement: &Arc<Statement>) {
        self.shelf.forget(statement);
    }
}

impl Shelf {
    /// Removes `statement`'s entry if it is still the one under its
    /// content.
    fn forget(&self, statement: &Statement) {
        let mut by_content = self.by_content.lock();
        let current = by_content
            .get(&statement.content)
            .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), statement));
        if current {
            by_content.remove(&statement.content);
        }
        // Give back what a flood of statements made the map reserve; the
        // factor keeps this from happening on every removal.
        if by_content.capacity() > 1024 && by_content.len() * 4 < by_content.capacity() {
            let keep = by_content.len() * 2;
            by_content.shrink_to(keep);
        }
    }
}

#[cfg(test)]
mod tests;
