//! `[routing]`: where statements may run, how replicas are chosen and
//! watched, and what a session must see of its own writes.

use super::{ByteSize, Duration};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastResponseTime,
    IpHash,
}

/// How a session is kept from reading stale data after its own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// Reads go to any eligible replica.
    Off,
    /// After a session's first write, all its reads go to the primary.
    Session,
    /// After each write, the session's reads go to the primary for `ryw_window`.
    Window,
    /// Reads go only to replicas that have replayed the session's last commit.
    Lsn,
}

/// What a read does when no replica may serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    Primary,
    Error,
}

/// Pins a database's or user's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    #[default]
    Auto,
    Primary,
    Replica,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// false: everything goes to the primary.
    pub read_write_split: bool,
    pub balance: Balance,
    /// Whether the primary also takes a share of reads.
    pub primary_reads: bool,
    pub read_your_writes: ReadYourWrites,
    pub ryw_window: Duration,
    /// A replica further behind than this gets no reads.
    pub max_replica_lag: Duration,
    pub max_replica_lag_bytes: ByteSize,
    /// How often each node's health, role and WAL position are checked.
    pub monitor_interval: Spanned<Duration>,
    /// A banned node gets no traffic for this long from its first failure,
    /// and after that until a check succeeds.
    pub ban_time: Duration,
    /// Failed checks or connections in a row that ban a node.
    pub ban_after: Spanned<u32>,
    /// How long a request that needs the primary waits while no node may
    /// take writes (a failover in progress) before it is refused; 0: not
    /// at all.
    pub failover_hold: Duration,
    pub fallback: Fallback,
    /// Functions that write although pg_proc does not say volatile.
    pub write_functions: Vec<String>,
    /// Volatile functions that do not write (safe on replicas).
    pub read_functions: Vec<String>,
    /// The user the monitor connects as; defaults to the first [[users]].
    pub monitor_user: Option<Spanned<String>>,
    /// The database the monitor connects to; defaults to the first
    /// [[databases]]' server_database.
    pub monitor_database: Option<String>,
    /// Distinct SQL texts whose routing decision is remembered.
    pub statement_cache_size: usize,
    /// Function names whose volatility (looked up in pg_proc) is
    /// remembered; 0: looked up every time.
    pub function_cache_size: usize,
    /// How long a function's volatility is remembered, so that a changed
    /// one is noticed.
    pub function_cache_ttl: Duration,
    /// SQL texts longer than this are classified on a helper thread, never
    /// on the thread serving clients.
    pub classify_offload_size: Spanned<ByteSize>,
    /// SQL texts longer than this are not parsed: they are routed by
    /// their first keyword, to the primary.
    pub classify_max_size: Spanned<ByteSize>,
    /// Threads that classify long texts.
    pub classify_threads: Spanned<usize>,
    /// Long texts waiting for a classify thread; past it a text is routed
    /// to the primary unparsed.
    pub classify_queue: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let ms = |n| Duration(std::time::Duration::from_millis(n));
        RoutingConfig {
            read_write_split: true,
            balance: Balance::LeastConnections,
            primary_reads: false,
            read_your_writes: ReadYourWrites::Lsn,
            ryw_window: ms(2000),
            max_replica_lag: ms(1000),
            max_replica_lag_bytes: ByteSize(16 << 20),
            monitor_interval: Spanned::new(0..0, ms(100)),
            ban_time: ms(10_000),
            ban_after: Spanned::new(0..0, 2),
            failover_hold: ms(0),
            fallback: Fallback::Primary,
            write_functions: Vec::new(),
            read_functions: Vec::new(),
            monitor_user: None,
            monitor_database: None,
            statement_cache_size: 10_000,
            function_cache_size: 10_000,
            function_cache_ttl: ms(60_000),
            classify_offload_size: Spanned::new(0..0, ByteSize(8 << 10)),
            classify_max_size: Spanned::new(0..0, ByteSize(1 << 20)),
            classify_threads: Spanned::new(0..0, 1),
            classify_queue: 32,
        }
    }
}
