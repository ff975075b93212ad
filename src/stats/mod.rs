//! What pgrouter counts: plain relaxed atomics bumped on the hot path,
//! read by the admin console (SHOW STATS) and copied into Prometheus once a
//! second by `export`. Counters live here, keyed by database, user and
//! node, rather than in a pool, so a reload that rebuilds a pool keeps
//! them counting up.

pub mod export;

use crate::router::{Reason, Target};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Counters of one pool: one database and user on one node.
pub struct PoolStats {
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub node: Arc<str>,
    /// By route: `Target::Primary` then `Target::Replica`.
    queries: [AtomicU64; 2],
    transactions: [AtomicU64; 2],
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    query_micros: AtomicU64,
    transaction_micros: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    query_duration: metrics::Histogram,
    transaction_duration: metrics::Histogram,
}

impl PoolStats {
    fn new(database: &str, user: &str, node: &str) -> PoolStats {
        let labels = [
            ("database", database.to_owned()),
            ("user", user.to_owned()),
            ("node", node.to_owned()),
        ];
        PoolStats {
            database: database.into(),
            user: user.into(),
            node: node.into(),
            queries: Default::default(),
            transactions: Default::default(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            query_micros: AtomicU64::new(0),
            transaction_micros: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            query_duration: metrics::histogram!("pgrouter_query_duration_seconds", &labels),
            transaction_duration: metrics::histogram!(
                "pgrouter_transaction_duration_seconds",
                &labels
            ),
        }
    }

    /// A ReadyForQuery: one query answered, and a transaction ended when
    /// the server is idle again.
    #[inline]
    pub fn count_ready(&self, route: Target, transaction_ended: bool) {
        self.queries[route as usize].fetch_add(1, Relaxed);
        if transaction_ended {
            self.transactions[route as usize].fetch_add(1, Relaxed);
        }
    }

    pub fn record_query(&self, took: Duration) {
        self.query_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.query_duration.record(took.as_secs_f64());
    }

    pub fn record_transaction(&self, took: Duration) {
        self.transaction_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.transaction_duration.record(took.as_secs_f64());
    }

    pub fn queries(&self, route: Target) -> u64 {
        self.queries[route as usize].load(Relaxed)
    }

    pub fn transactions(&self, route: Target) -> u64 {
        self.transactions[route as usize].load(Relaxed)
    }

    pub fn query_micros(&self) -> u64 {
        self.query_micros.load(Relaxed)
    }

    pub fn transaction_micros(&self) -> u64 {
        self.transaction_micros.load(Relaxed)
    }
}

/// Counters of one database and user, whichever node served them.
pub struct SetStats {
    pub database: Arc<str>,
    pub user: Arc<str>,
    decisions: [AtomicU64; Reason::COUNT],
    pub checkout_timeouts: AtomicU64,
    pub retries: AtomicU64,
    wait_micros: AtomicU64,
    checkout_wait: metrics::Histogram,
}

impl SetStats {
    fn new(database: &str, user: &str) -> SetStats {
        let labels = [("database", database.to_owned()), ("user", user.to_owned())];
        SetStats {
            database: database.into(),
            user: user.into(),
            decisions: std::array::from_fn(|_| AtomicU64::new(0)),
            checkout_timeouts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            checkout_wait: metrics::histogram!("pgrouter_checkout_wait_seconds", &labels),
        }
    }

    #[inline]
    pub fn count_decision(&self, reason: Reason) {
        self.decisions[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn decisions(&self, reason: Reason) -> u64 {
        self.decisions[reason.index()].load(Relaxed)
    }

    pub fn record_wait(&self, waited: Duration) {
        self.wait_micros
            .fetch_add(waited.as_micros() as u64, Relaxed);
        self.checkout_wait.record(waited.as_secs_f64());
    }

    pub fn wait_micros(&self) -> u64 {
        self.wait_micros.load(Relaxed)
    }
}

/// SQLSTATE classes are two characters of 0-9 and A-Z.
const CLASS_SYMBOLS: usize = 36;
static ERROR_CLASSES: [AtomicU64; CLASS_SYMBOLS * CLASS_SYMBOLS] =
    [const { AtomicU64::new(0) }; CLASS_SYMBOLS * CLASS_SYMBOLS];

fn class_symbol(byte: u8) -> Option<usize> {
    match byte {
        b'0'..=b'9' => Some((byte - b'0') as usize),
        b'A'..=b'Z' => Some((byte - b'A') as usize + 10),
        _ => None,
    }
}

fn symbol_char(index: usize) -> char {
    match index {
        0..=9 => (b'0' + index as u8) as char,
        _ => (b'A' + (index - 10) as u8) as char,
    }
}

/// Counts an ErrorResponse, from a server or pgrouter's own, by the
/// SQLSTATE's class (its first two characters).
pub fn count_error(code: &[u8]) {
    let (Some(&first), Some(&second)) = (code.first(), code.get(1)) else {
        return;
    };
    if let (Some(a), Some(b)) = (class_symbol(first), class_symbol(second)) {
        ERROR_CLASSES[a * CLASS_SYMBOLS + b].fetch_add(1, Relaxed);
    }
}

/// Every SQLSTATE class seen so far, with its count.
pub fn error_classes() -> Vec<(String, u64)> {
    ERROR_CLASSES
        .iter()
        .enumerate()
        .filter_map(|(index, count)| {
            let count = count.load(Relaxed);
            let class = format!(
                "{}{}",
                symbol_char(index / CLASS_SYMBOLS),
                symbol_char(index % CLASS_SYMBOLS)
            );
            (count > 0).then_some((class, count))
        })
        .collect()
}

/// Every counter, for as long as the process runs.
#[derive(Default)]
pub struct Stats {
    pools: Mutex<HashMap<(String, String, String), Arc<PoolStats>>>,
    sets: Mutex<HashMap<(String, String), Arc<SetStats>>>,
}

impl Stats {
    pub fn pool(&self, database: &str, user: &str, node: &str) -> Arc<PoolStats> {
        let key = (database.to_owned(), user.to_owned(), node.to_owned());
        self.pools
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(PoolStats::new(database, user, node)))
            .clone()
    }

    pub fn set(&self, database: &str, user: &str) -> Arc<SetStats> {
        let key = (database.to_owned(), user.to_owned());
        self.sets
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(SetStats::new(database, user)))
            .clone()
    }

    /// Every pool's counters, sorted by database, user and node.
    pub fn pools(&self) -> Vec<Arc<PoolStats>> {
        let mut pools: Vec<_> = self.pools.lock().values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user, &a.node).cmp(&(&b.database, &b.user, &b.node)));
        pools
    }

    pub fn sets(&self) -> Vec<Arc<SetStats>> {
        let mut sets: Vec<_> = self.sets.lock().values().cloned().collect();
        sets.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_are_counted_by_their_first_two_characters() {
        count_error(b"ZZ001");
        count_error(b"ZZ002");
        count_error(b"zz");
        count_error(b"Z");
        let classes = error_classes();
        assert!(classes.contains(&("ZZ".to_owned(), 2)), "{classes:?}");
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index, "{reason:?}");
        }
        let stats = Stats::default();
        let set = stats.set("db", "u");
        set.count_decision(Reason::ReadYourWrites);
        assert_eq!(set.decisions(Reason::ReadYourWrites), 1);
        assert_eq!(set.decisions(Reason::Read), 0);
    }

    #[test]
    fn counters_survive_a_second_lookup() {
        let stats = Stats::default();
        stats
            .pool("db", "u", "n")
            .count_ready(Target::Replica, true);
        let again = stats.pool("db", "u", "n");
        assert_eq!(again.queries(Target::Replica), 1);
        assert_eq!(again.transactions(Target::Replica), 1);
        assert_eq!(again.queries(Target::Primary), 0);
        assert_eq!(stats.pools().len(), 1);
    }
}
