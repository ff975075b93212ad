//! Which node may serve a request. The router takes values and returns
//! values: a classification of the SQL, the session's routing state and
//! the topology in; a node and the reason out. It never touches a socket
//! (only the function-volatility lookup talks to the primary, once per
//! function name).

pub mod balance;
pub mod cache;
mod classifier;
pub mod classify;
pub mod explain;
mod fingerprint;
mod functions;
mod offload;
mod writes;

use crate::config::{Config, Fallback, ReadYourWrites, Route};
use crate::topology::{Lsn, Topology, WriteTarget};
use balance::{Balancer, Candidate, NodeLoad};
use classifier::Classifier;
use classify::{Classification, Hint, Kind};
pub use fingerprint::{first_keyword, first_keyword_at};
use functions::Functions;
pub use offload::OffloadStats;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;
pub use writes::SessionWrites;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary = 0,
    Replica = 1,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

/// Why a request went where it went: for logs, metrics and EXPLAIN ROUTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The classifier found a write (its label says what).
    Write(&'static str),
    /// A SELECT calls a function that may write.
    WriteFunction,
    /// Changes session state, which lives on the primary for now.
    SessionState(&'static str),
    /// An explicit read-write transaction.
    Transaction,
    /// A read-only transaction.
    ReadOnlyTransaction,
    Read,
    /// The session must see its own writes and no replica has them yet.
    ReadYourWrites,
    Hint,
    /// `route` of the user or database, or `SET pgrouter.route`.
    Pinned,
    /// The parser could not read the SQL.
    ParseFailure,
    /// No replica may serve the read.
    Fallback,
    /// read_write_split is off, or session mode.
    NoSplit,
    /// Nothing to classify (e.g. a Bind of a statement parsed before).
    Unclassified,
}

impl Reason {
    pub const COUNT: usize = 13;

    /// Every reason, in `index` order.
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Write(""),
        Reason::WriteFunction,
        Reason::SessionState(""),
        Reason::Transaction,
        Reason::ReadOnlyTransaction,
        Reason::Read,
        Reason::ReadYourWrites,
        Reason::Hint,
        Reason::Pinned,
        Reason::ParseFailure,
        Reason::Fallback,
        Reason::NoSplit,
        Reason::Unclassified,
    ];

    pub fn index(&self) -> usize {
        match self {
            Reason::Write(_) => 0,
            Reason::WriteFunction => 1,
            Reason::SessionState(_) => 2,
            Reason::Transaction => 3,
            Reason::ReadOnlyTransaction => 4,
            Reason::Read => 5,
            Reason::ReadYourWrites => 6,
            Reason::Hint => 7,
            Reason::Pinned => 8,
            Reason::ParseFailure => 9,
            Reason::Fallback => 10,
            Reason::NoSplit => 11,
            Reason::Unclassified => 12,
        }
    }

    /// The label's Prometheus spelling.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Reason::Write(_) => "write",
            Reason::WriteFunction => "write_function",
            Reason::SessionState(_) => "session_state",
            Reason::Transaction => "transaction",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Read => "read",
            Reason::ReadYourWrites => "read_your_writes",
            Reason::Hint => "hint",
            Reason::Pinned => "pinned",
            Reason::ParseFailure => "parse_failure",
            Reason::Fallback => "fallback",
            Reason::NoSplit => "no_split",
            Reason::Unclassified => "unclassified",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Reason::Write(_) => "write",
            Reason::WriteFunction => "write function",
            Reason::SessionState(_) => "session state",
            Reason::Transaction => "transaction",
            Reason::ReadOnlyTransaction => "read-only transaction",
            Reason::Read => "read",
            Reason::ReadYourWrites => "read-your-writes",
            Reason::Hint => "hint",
            Reason::Pinned => "pinned",
            Reason::ParseFailure => "parse failure",
            Reason::Fallback => "fallback",
            Reason::NoSplit => "no split",
            Reason::Unclassified => "unclassified",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub node: usize,
    pub target: Target,
    pub reason: Reason,
    /// An autocommit read on a replica: it may be retried elsewhere when
    /// the replica fails or refuses it before answering.
    pub retryable: bool,
    /// Runs on the primary and may write: the session's read-your-writes
    /// state advances when it completes.
    pub may_write: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no primary node is reachable")]
    NoPrimary,
    /// Split brain averted: answered with 08006 like `NoPrimary`, which
    /// drivers treat as "try again or elsewhere".
    #[error(
        "several nodes claim to be the primary and none took the writes before: \
         writes are refused until all but one have stepped down (SHOW NODES)"
    )]
    Contested,
    #[error("no replica may serve this read and routing.fallback is \"error\"")]
    NoReplica,
}

/// What the router needs to know of one session.
#[derive(Debug, Clone)]
pub struct SessionRoute {
    /// The user's or database's `route`, or `SET pgrouter.route`.
    pub setting: Route,
    /// default_transaction_read_only is on: every transaction is read-only.
    pub read_only_default: bool,
    pub writes: SessionWrites,
}

pub struct Router {
    topology: Arc<Topology>,
    balancer: Balancer,
    loads: Vec<NodeLoad>,
    classifier: Classifier,
    functions: Functions,
    read_write_split: bool,
    primary_reads: bool,
    read_your_writes: ReadYourWrites,
    ryw_window: Duration,
    fallback: Fallback,
    /// How long a request for the primary waits while none is known.
    failover_hold: Duration,
    /// Whether any read can go to another node than the primary: without
    /// replicas, sessions' writes need no tracking.
    has_replicas: bool,
}

impl Router {
    pub fn new(config: &Config, topology: Arc<Topology>) -> Router {
        let routing = &config.routing;
        let weights: Vec<u32> = config.nodes.iter().map(|n| n.weight).collect();
        Router {
            balancer: Balancer::new(balance_policy(routing.balance), &weights),
            loads: config.nodes.iter().map(|_| NodeLoad::default()).collect(),
            classifier: Classifier::new(routing),
            functions: Functions::new(config),
            read_write_split: routing.read_write_split,
            primary_reads: routing.primary_reads,
            read_your_writes: routing.read_your_writes,
            ryw_window: routing.ryw_window.0,
            fallback: routing.fallback,
            failover_hold: routing.failover_hold.0,
            has_replicas: config.nodes.len() > 1,
            topology,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn load(&self, node: usize) -> &NodeLoad {
        &self.loads[node]
    }

    /// The read-your-writes mode in force: `Off` when no read can reach
    /// a replica anyway.
    pub fn read_your_writes(&self) -> ReadYourWrites {
        if self.read_write_split && self.has_replicas {
            self.read_your_writes
        } else {
            ReadYourWrites::Off
        }
    }

    pub fn splits(&self) -> bool {
        self.read_write_split
    }

    /// The classification of a SQL text, parsed once and then cached.
    /// Never parses a long text on this thread (see `classifier`): one
    /// not classified yet is judged by its leading words, which sends it
    /// to the primary, while a classify thread parses it for next time.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        self.classifier.get(sql)
    }

    /// The classification of a SQL text in the client's encoding: `None`
    /// when it is not UTF-8, which routes like unclassifiable text (to the
    /// primary) and still reaches the server as sent.
    pub fn classify_bytes(&self, sql: &[u8]) -> Option<Arc<Classification>> {
        std::str::from_utf8(sql).ok().map(|sql| self.classify(sql))
    }

    /// As [`Router::classify`], but a long text not classified yet is
    /// awaited from a classify thread (the runtime thread serves others
    /// meanwhile). Afterwards `classify` finds it in the cache.
    pub async fn classify_async(&self, sql: &str) -> Arc<Classification> {
        self.classifier.get_async(sql).await
    }

    /// Whether a text of `len` bytes is parsed on a classify thread (when
    /// not cached): what makes awaiting [`Router::classify_async`] before
    /// the synchronous calls worth it. Shorter texts need no await (and
    /// would be looked up twice).
    pub fn parses_off_thread(&self, len: usize) -> bool {
        self.classifier.parses_off_thread(len)
    }

    /// [`Router::classify_async`] of a text in the client's encoding.
    pub async fn classify_bytes_async(&self, sql: &[u8]) -> Option<Arc<Classification>> {
        match std::str::from_utf8(sql) {
            Ok(sql) => Some(self.classify_async(sql).await),
            Err(_) => None,
        }
    }

    /// The classification cache, for the console.
    pub fn class_cache(&self) -> &cache::ClassCache {
        self.classifier.cache()
    }

    /// The classify threads' counters.
    pub fn offload_stats(&self) -> OffloadStats {
        self.classifier.offload_stats()
    }

    /// Function names whose volatility is remembered (and the most there
    /// may be), and pg_proc lookups since start.
    pub fn function_cache(&self) -> (usize, usize, u64) {
        let (len, capacity) = self.functions.cached();
        (len, capacity, self.functions.lookups())
    }

    /// Whether a statement may run on a replica that serves a read, known
    /// without I/O: a plain read, no primary hint, and every function it
    /// calls already known not to write. Anything else is routed anew.
    pub fn reads_known(&self, class: &Classification) -> bool {
        class.kind == Kind::Read
            && class.hint != Some(Hint::Primary)
            && class
                .functions
                .iter()
                .all(|name| self.functions.known(name) == Some(false))
    }

    /// Remembers that a SQL text writes although it was classified as a
    /// read (it failed on a replica with 25006).
    pub fn learn_write(&self, sql: &str) {
        tracing::warn!(
            sql,
            "a read the classifier missed wrote: routing it to the primary from now on"
        );
        let mut class = (*self.classify(sql)).clone();
        class.kind = Kind::Write(LEARNED_WRITE);
        self.classifier.replace(sql, Arc::new(class));
    }

    fn primary(&self, reason: Reason, may_write: bool) -> Result<Decision, RouteError> {
        let node = match self.topology.write_target() {
            WriteTarget::Node(node) => node,
            WriteTarget::None => return Err(RouteError::NoPrimary),
            WriteTarget::Contested => return Err(RouteError::Contested),
        };
        Ok(Decision {
            node,
            target: Target::Primary,
            reason,
            retryable: false,
            may_write,
        })
    }

    /// Where a session-mode client's whole session runs.
    pub fn session_node(
        &self,
        session: &SessionRoute,
        client: IpAddr,
    ) -> Result<Decision, RouteError> {
        match session.setting {
            Route::Replica => self.read(Reason::Pinned, false, None, client),
            _ => self.primary(Reason::NoSplit, true),
        }
    }

    /// Routes the request that starts a transaction (or is one). A request
    /// that needs the primary while none is known waits for one up to
    /// `failover_hold`.
    pub async fn decide(
        &self,
        class: Option<&Classification>,
        session: &mut SessionRoute,
        client: IpAddr,
    ) -> Result<Decision, RouteError> {
        let decision = self.decide_now(class, session, client).await;
        if decision != Err(RouteError::NoPrimary) || self.failover_hold.is_zero() {
            return decision;
        }
        match self.topology.wait_for_primary(self.failover_hold).await {
            WriteTarget::Node(_) => self.decide_now(class, session, client).await,
            WriteTarget::None => Err(RouteError::NoPrimary),
            WriteTarget::Contested => Err(RouteError::Contested),
        }
    }

    /// Routes the request as the topology stands, without waiting.
    pub async fn decide_now(
        &self,
        class: Option<&Classification>,
        session: &mut SessionRoute,
        client: IpAddr,
    ) -> Result<Decision, RouteError> {
        if !self.read_write_split {
            return self.primary(Reason::NoSplit, true);
        }
        match session.setting {
            Route::Primary => return self.primary(Reason::Pinned, true),
            Route::Replica => return self.read(Reason::Pinned, false, None, client),
            Route::Auto => {}
        }
        let Some(class) = class else {
            return self.primary(Reason::Unclassified, true);
        };
        match class.hint {
            Some(Hint::Primary) => return self.primary(Reason::Hint, true),
            Some(Hint::Replica) => return self.read(Reason::Hint, false, None, client),
            None => {}
        }
        let floor = self.ryw_floor(&mut session.writes);
        match &class.kind {
            Kind::Read => {
                for name in &class.functions {
                    if self.functions.may_write(name, &self.topology).await {
                        return self.primary(Reason::WriteFunction, true);
                    }
                }
                self.read(Reason::Read, true, floor, client)
            }
            Kind::Begin { read_only: true } | Kind::SetTransactionReadOnly => {
                self.read(Reason::ReadOnlyTransaction, false, floor, client)
            }
            Kind::Begin { read_only: false } if session.read_only_default => {
                self.read(Reason::ReadOnlyTransaction, false, floor, client)
            }
            Kind::Begin { .. } => self.primary(Reason::Transaction, true),
            Kind::Write(what) => self.primary(Reason::Write(what), true),
            Kind::SessionState(what) => self.primary(Reason::SessionState(what), true),
            Kind::SetRoute(_) => self.primary(Reason::SessionState("set"), false),
            Kind::TransactionControl => self.primary(Reason::Transaction, false),
            Kind::Unparsable => {
                tracing::debug!("unparsable SQL routed to the primary");
                self.primary(Reason::ParseFailure, true)
            }
        }
    }

    /// The WAL position a replica must have replayed to serve this session
    /// (`Some(Lsn(u64::MAX))`: none may), or `None` for any replica.
    fn ryw_floor(&self, writes: &mut SessionWrites) -> Option<Lsn> {
        if self.read_your_writes == ReadYourWrites::Lsn {
            writes.resolve(self.topology.insert_position());
        }
        let last = writes.last()?;
        match self.read_your_writes {
            ReadYourWrites::Off => None,
            ReadYourWrites::Session => Some(Lsn(u64::MAX)),
            ReadYourWrites::Window => {
                (last.at.elapsed() < self.ryw_window).then_some(Lsn(u64::MAX))
            }
            ReadYourWrites::Lsn => Some(match last.lsn {
                Some((lsn, epoch)) if epoch == self.topology.epoch() => lsn,
                Some(_) => self.topology.epoch_floor(),
                None => Lsn(u64::MAX),
            }),
        }
    }

    /// Picks a node for a read: a replica in service that has replayed
    /// `floor`, or the primary when it takes reads; when none may,
    /// read-your-writes sends the read to the primary and otherwise
    /// `fallback` decides.
    fn read(
        &self,
        reason: Reason,
        retryable: bool,
        floor: Option<Lsn>,
        client: IpAddr,
    ) -> Result<Decision, RouteError> {
        let topology = &self.topology;
        let primary = topology.primary();
        let mut candidates = [Candidate {
            index: 0,
            weight: 0,
            load: &self.loads[0],
        }; MAX_CANDIDATES];
        let mut count = 0;
        let mut held_back = false;
        for (index, node) in topology.nodes().iter().enumerate().take(MAX_CANDIDATES) {
            let eligible = if Some(index) == primary {
                self.primary_reads && topology.is_available(index)
            } else if topology.replica_in_service(index) {
                let caught_up = floor.is_none_or(|floor| node.lsn() >= floor);
                held_back |= !caught_up;
                caught_up
            } else {
                false
            };
            if eligible {
                candidates[count] = Candidate {
                    index,
                    weight: node.weight,
                    load: &self.loads[index],
                };
                count += 1;
            }
        }
        if let Some(node) = self.balancer.pick(&candidates[..count], client) {
            let target = if Some(node) == primary {
                Target::Primary
            } else {
                Target::Replica
            };
            return Ok(Decision {
                node,
                target,
                reason,
                retryable: retryable && target == Target::Replica,
                may_write: false,
            });
        }
        if held_back || floor.is_some() {
            return self.primary(Reason::ReadYourWrites, false);
        }
        match self.fallback {
            Fallback::Primary => self.primary(Reason::Fallback, false),
            Fallback::Error => Err(RouteError::NoReplica),
        }
    }

    /// Marks the start and end of a request on a node, for balancing.
    pub fn started(&self, node: usize) {
        self.loads[node].begin();
    }

    pub fn finished(&self, node: usize, started: Instant) {
        let load = &self.loads[node];
        load.end();
        load.observe(started.elapsed());
    }
}

/// The reason label of a SQL text that failed on a replica with 25006.
pub const LEARNED_WRITE: &str = "learned write";

/// Reads are balanced over at most this many nodes (more are ignored), so
/// that a decision needs no allocation.
const MAX_CANDIDATES: usize = 16;

fn balance_policy(balance: crate::config::Balance) -> balance::Policy {
    use crate::config::Balance;
    match balance {
        Balance::RoundRobin => balance::Policy::RoundRobin,
        Balance::WeightedRoundRobin => balance::Policy::WeightedRoundRobin,
        Balance::LeastConnections => balance::Policy::LeastConnections,
        Balance::LeastResponseTime => balance::Policy::LeastResponseTime,
        Balance::IpHash => balance::Policy::IpHash,
    }
}
