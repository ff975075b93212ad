//! What pgrouter knows about its nodes right now: which one takes the
//! writes, which are in service, how far each replica lags, which are
//! banned or refused. Monitors and sessions report to it; the router reads
//! it on every routing decision, so what the router reads is atomics,
//! published from a ledger that reports update under a lock.

mod election;
mod health;
mod history;
pub mod lsn;
pub mod monitor;
mod reports;
#[cfg(test)]
mod tests;

use crate::config::{Config, NodeRole};
use election::{Check, Claim};
pub use election::{Refusal, Role, Timeline, WriteTarget};
use health::{BanRules, Health, Millis};
use history::PrimaryHistory;
pub use lsn::Lsn;
use reports::Announce;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// `Topology::primary`'s encodings of the write targets that are no node.
const NO_PRIMARY: usize = usize::MAX;
const CONTESTED: usize = usize::MAX - 1;

pub struct NodeState {
    pub name: Arc<str>,
    pub configured_role: NodeRole,
    pub weight: u32,
    /// The role the last election gave the node (`Role::encode`).
    role: AtomicU8,
    /// Whether the node may take traffic (`Health::in_service`).
    in_service: AtomicBool,
    /// The last check succeeded.
    healthy: AtomicBool,
    /// The primary's current WAL position, or a replica's replayed one.
    lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_millis: AtomicU64,
    /// The timeline of the node's last answer.
    timeline: AtomicU32,
    /// Times the node was banned, since pgrouter started.
    bans: AtomicU64,
    /// Times the node was found out of recovery while it may not take
    /// writes (a false primary, or contested), since pgrouter started.
    refusals: AtomicU64,
    pub address: String,
}

impl NodeState {
    pub fn bans(&self) -> u64 {
        self.bans.load(Relaxed)
    }

    pub fn false_primaries(&self) -> u64 {
        self.refusals.load(Relaxed)
    }

    pub fn role(&self) -> Role {
        Role::decode(self.role.load(Relaxed))
    }

    /// Whether the node takes the writes now.
    pub fn is_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Relaxed))
    }

    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Relaxed)
    }

    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_millis.load(Relaxed))
    }

    /// The timeline of the node's last answer (0 before the first).
    pub fn timeline(&self) -> Timeline {
        self.timeline.load(Relaxed)
    }
}

/// One monitor round's findings for a node.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub in_recovery: bool,
    /// pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a replica.
    pub lsn: Lsn,
    /// pg_current_wal_insert_lsn() on a primary.
    pub insert_lsn: Option<Lsn>,
    /// The timeline the node writes WAL on (out of recovery), or of its
    /// last restartpoint (in recovery).
    pub timeline: Timeline,
    /// When the check was sent.
    pub asked_at: Instant,
}

/// A reading of the primary's WAL insert position: at or past every
/// commit acknowledged before `asked_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertPosition {
    pub asked_at: Instant,
    pub lsn: Lsn,
    pub epoch: u64,
}

/// Whether a node takes traffic, as SHOW NODES tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    /// Failed checks or connections in a row, not banned (yet).
    Failing(u32),
    Banned,
    /// The node taking the writes fails its checks or connections.
    Unreachable,
    /// Out of recovery while it may not take writes: no traffic at all.
    Refused,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Failing(_) => "failing",
            Status::Banned => "banned",
            Status::Unreachable => "unreachable",
            Status::Refused => "refused",
        }
    }
}

/// What the monitors and sessions reported, by node: the election needs
/// every node's last answer at once, so reports update it under one lock.
struct Ledger {
    checks: Vec<Check>,
    /// What each node's past answers hold against it in elections.
    claims: Vec<Claim>,
    health: Vec<Health>,
    /// The newest timeline any node answered with, ever: a primary that a
    /// failover left behind stays refused while the promoted node is away.
    newest_timeline: Timeline,
}

pub struct Topology {
    nodes: Vec<NodeState>,
    started: Instant,
    /// The write target: a node's index, `NO_PRIMARY` or `CONTESTED`.
    primary: AtomicUsize,
    /// Bumped whenever another node becomes the primary; WAL positions
    /// taken under an older epoch mean nothing on the new timeline.
    epoch: AtomicU64,
    /// The new primary's position when it took over: a replica must reach
    /// it before it serves reads that must see writes from before.
    epoch_floor: AtomicU64,
    history: PrimaryHistory,
    insert_position: parking_lot::Mutex<Option<InsertPosition>>,
    ledger: parking_lot::Mutex<Ledger>,
    /// Woken when the write target changes (and on retirement), for the
    /// requests that wait for a primary (`failover_hold`).
    elected: Notify,
    rules: BanRules,
    max_lag: Duration,
    max_lag_bytes: u64,
    /// A reload replaced this topology: its monitors stop.
    retired: AtomicBool,
}

impl Topology {
    pub fn new(config: &Config) -> Topology {
        let nodes: Vec<NodeState> = config
            .nodes
            .iter()
            .map(|node| {
                let role = *node.role.get_ref();
                let elected = match role {
                    NodeRole::Primary => Role::Primary,
                    NodeRole::Replica => Role::Replica,
                    NodeRole::Auto => Role::Unknown,
                };
                NodeState {
                    name: node.name.get_ref().as_str().into(),
                    configured_role: role,
                    weight: node.weight,
                    role: AtomicU8::new(elected.encode()),
                    // Optimistic until the first check says otherwise.
                    in_service: AtomicBool::new(true),
                    healthy: AtomicBool::new(true),
                    lsn: AtomicU64::new(0),
                    lag_bytes: AtomicU64::new(0),
                    lag_millis: AtomicU64::new(0),
                    timeline: AtomicU32::new(0),
                    bans: AtomicU64::new(0),
                    refusals: AtomicU64::new(0),
                    address: node.address.to_string(),
                }
            })
            .collect();
        let primary = nodes
            .iter()
            .position(|n| n.configured_role == NodeRole::Primary)
            .unwrap_or(NO_PRIMARY);
        let routing = &config.routing;
        let ledger = Ledger {
            checks: vec![Check::Pending; nodes.len()],
            claims: vec![Claim::Clear; nodes.len()],
            health: vec![Health::Up; nodes.len()],
            newest_timeline: 0,
        };
        Topology {
            nodes,
            started: Instant::now(),
            primary: AtomicUsize::new(primary),
            epoch: AtomicU64::new(0),
            epoch_floor: AtomicU64::new(0),
            history: PrimaryHistory::default(),
            insert_position: parking_lot::Mutex::new(None),
            ledger: parking_lot::Mutex::new(ledger),
            elected: Notify::new(),
            rules: BanRules {
                ban_after: *routing.ban_after.get_ref(),
                ban_time: routing.ban_time.0.as_millis() as Millis,
            },
            max_lag: routing.max_replica_lag.0,
            max_lag_bytes: routing.max_replica_lag_bytes.0,
            retired: AtomicBool::new(false),
        }
    }

    /// Takes over what the topology being replaced by a reload knows of
    /// the nodes both have (same name and address), so that routing goes
    /// on as before until the new monitors have checked them.
    pub fn inherit(&self, old: &Topology) {
        let old_ledger = old.ledger.lock();
        let mut ledger = self.ledger.lock();
        ledger.newest_timeline = ledger.newest_timeline.max(old_ledger.newest_timeline);
        // The clocks of the two topologies started at different times.
        let (old_now, now) = (old.now_millis(), self.now_millis());
        let shift = |at: Millis| (at + now).saturating_sub(old_now);
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(before) = old
                .nodes
                .iter()
                .position(|o| o.name == node.name && o.address == node.address)
            else {
                continue;
            };
            let was = &old.nodes[before];
            ledger.checks[index] = old_ledger.checks[before];
            ledger.claims[index] = old_ledger.claims[before];
            let health = match old_ledger.health[before] {
                Health::Up => Health::Up,
                Health::Failing { failures, since } => Health::Failing {
                    failures,
                    since: shift(since),
                },
                Health::Banned { since, until } => Health::Banned {
                    since: shift(since),
                    until: shift(until),
                },
            };
            ledger.health[index] = health;
            node.in_service.store(health.in_service(), Relaxed);
            node.healthy.store(was.healthy(), Relaxed);
            node.role.store(was.role.load(Relaxed), Relaxed);
            node.lsn.store(was.lsn.load(Relaxed), Relaxed);
            node.lag_bytes.store(was.lag_bytes(), Relaxed);
            node.lag_millis.store(was.lag_millis.load(Relaxed), Relaxed);
            node.timeline.store(was.timeline(), Relaxed);
            node.bans.store(was.bans(), Relaxed);
            node.refusals.store(was.false_primaries(), Relaxed);
        }
        drop(old_ledger);
        // The node that took the writes keeps them, under its new index.
        let current = old.primary().and_then(|before| {
            let name = &old.nodes[before].name;
            self.nodes.iter().position(|n| &n.name == name)
        });
        self.primary.store(current.unwrap_or(NO_PRIMARY), Relaxed);
        self.elect(&mut ledger, Announce::No);
        drop(ledger);
        // The same primary: positions taken before the reload stay valid.
        let same_primary = match (self.primary(), old.primary()) {
            (Some(new), Some(before)) => self.nodes[new].name == old.nodes[before].name,
            _ => false,
        };
        if same_primary {
            self.epoch.store(old.epoch(), Relaxed);
            self.epoch_floor.store(old.epoch_floor().0, Relaxed);
            *self.insert_position.lock() = old.insert_position();
        } else {
            self.epoch.store(old.epoch() + 1, Relaxed);
        }
    }

    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        // Requests waiting for a primary here would wait in vain: no
        // monitor reports to a retired topology.
        self.elected.notify_waiters();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &NodeState {
        &self.nodes[index]
    }

    /// The node that takes writes now, if any.
    pub fn primary(&self) -> Option<usize> {
        let index = self.primary.load(Relaxed);
        (index < self.nodes.len()).then_some(index)
    }

    /// The node that takes writes now, or why none does.
    pub fn write_target(&self) -> WriteTarget {
        match self.primary.load(Relaxed) {
            CONTESTED => WriteTarget::Contested,
            index if index < self.nodes.len() => WriteTarget::Node(index),
            _ => WriteTarget::None,
        }
    }

    /// Waits up to `hold` while no node may take the writes, for one to
    /// be elected; returns the write target then. A contested election is
    /// not waited out: it ends only when a node steps down.
    pub async fn wait_for_primary(&self, hold: Duration) -> WriteTarget {
        let deadline = Instant::now() + hold;
        loop {
            let elected = self.elected.notified();
            tokio::pin!(elected);
            // Registered before looking, so that an election in between
            // is not missed.
            elected.as_mut().enable();
            let target = self.write_target();
            if target != WriteTarget::None || self.is_retired() {
                return target;
            }
            if tokio::time::timeout_at(deadline, elected).await.is_err() {
                return self.write_target();
            }
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }

    /// The newest reading of the primary's WAL insert position.
    pub fn insert_position(&self) -> Option<InsertPosition> {
        *self.insert_position.lock()
    }

    /// The lowest position a replica must have replayed to serve a session
    /// whose writes happened under `epoch`, or before any write.
    pub fn epoch_floor(&self) -> Lsn {
        Lsn(self.epoch_floor.load(Relaxed))
    }

    fn now_millis(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis + 1
    }

    /// Whether the node is banned. The write target never is: a ban
    /// would not move the writes anywhere.
    pub fn is_banned(&self, index: usize) -> bool {
        self.primary() != Some(index) && self.ledger.lock().health[index].is_banned()
    }

    /// How much longer the node's ban runs before a good check may lift
    /// it (zero: only the good check is missing); `None` when not banned.
    pub fn ban_left(&self, index: usize) -> Option<Duration> {
        if self.primary() == Some(index) {
            return None;
        }
        self.ledger.lock().health[index].ban_left(self.now_millis())
    }

    /// Whether the node takes traffic, and if not why.
    pub fn status(&self, index: usize) -> Status {
        if self.nodes[index].role().is_refused() {
            return Status::Refused;
        }
        let health = self.ledger.lock().health[index];
        match health {
            Health::Up => Status::Up,
            _ if self.primary() == Some(index) => Status::Unreachable,
            Health::Banned { .. } => Status::Banned,
            Health::Failing { .. } => Status::Failing(health.failures(self.rules)),
        }
    }

    /// Failures in a row the node has had (checks or connections).
    pub fn failures(&self, index: usize) -> u32 {
        self.ledger.lock().health[index].failures(self.rules)
    }

    /// Whether the node may take traffic at all.
    pub fn is_available(&self, index: usize) -> bool {
        self.nodes[index].in_service.load(Relaxed)
    }

    /// Whether a replica may serve reads: a replica, in service and not too
    /// far behind.
    pub fn replica_in_service(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        node.role() == Role::Replica
            && self.is_available(index)
            && node.lag_bytes() <= self.max_lag_bytes
            && node.lag() <= self.max_lag
    }
}
