//! What pgrouter knows about its nodes right now: which one is the primary,
//! which are up, how far each replica lags, which are banned. Monitors write
//! it, the router reads it on every routing decision, so it is all atomics.

mod history;
pub mod lsn;
pub mod monitor;

use crate::config::{Config, NodeRole};
use history::PrimaryHistory;
pub use lsn::Lsn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const NO_PRIMARY: usize = usize::MAX;

pub struct NodeState {
    pub name: Arc<str>,
    pub configured_role: NodeRole,
    pub weight: u32,
    /// Whether the node is the primary now: its configured role, or for
    /// role = "auto" what pg_is_in_recovery() last said.
    is_primary: AtomicBool,
    /// The last check succeeded.
    healthy: AtomicBool,
    /// Milliseconds since the topology started; 0: not banned.
    banned_until: AtomicU64,
    /// The primary's current WAL position, or a replica's replayed one.
    lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_millis: AtomicU64,
    /// Times the node was banned, since pgrouter started.
    bans: AtomicU64,
    pub address: String,
}

impl NodeState {
    pub fn bans(&self) -> u64 {
        self.bans.load(Relaxed)
    }

    pub fn is_primary(&self) -> bool {
        self.is_primary.load(Relaxed)
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
}

/// One monitor round's findings for a node.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub in_recovery: bool,
    /// pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a replica.
    pub lsn: Lsn,
    /// pg_current_wal_insert_lsn() on a primary.
    pub insert_lsn: Option<Lsn>,
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

pub struct Topology {
    nodes: Vec<NodeState>,
    started: Instant,
    primary: AtomicUsize,
    /// Bumped whenever another node becomes the primary; WAL positions
    /// taken under an older epoch mean nothing on the new timeline.
    epoch: AtomicU64,
    /// The new primary's position when it took over: a replica must reach
    /// it before it serves reads that must see writes from before.
    epoch_floor: AtomicU64,
    history: PrimaryHistory,
    insert_position: parking_lot::Mutex<Option<InsertPosition>>,
    ban_time: Duration,
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
                NodeState {
                    name: node.name.get_ref().as_str().into(),
                    configured_role: role,
                    weight: node.weight,
                    is_primary: AtomicBool::new(role == NodeRole::Primary),
                    // Optimistic until the first check says otherwise.
                    healthy: AtomicBool::new(true),
                    banned_until: AtomicU64::new(0),
                    lsn: AtomicU64::new(0),
                    lag_bytes: AtomicU64::new(0),
                    lag_millis: AtomicU64::new(0),
                    bans: AtomicU64::new(0),
                    address: node.address.to_string(),
                }
            })
            .collect();
        let primary = nodes
            .iter()
            .position(|n| n.configured_role == NodeRole::Primary)
            .unwrap_or(NO_PRIMARY);
        let routing = &config.routing;
        Topology {
            nodes,
            started: Instant::now(),
            primary: AtomicUsize::new(primary),
            epoch: AtomicU64::new(0),
            epoch_floor: AtomicU64::new(0),
            history: PrimaryHistory::default(),
            insert_position: parking_lot::Mutex::new(None),
            ban_time: routing.ban_time.0,
            max_lag: routing.max_replica_lag.0,
            max_lag_bytes: routing.max_replica_lag_bytes.0,
            retired: AtomicBool::new(false),
        }
    }

    /// Takes over what the topology being replaced by a reload knows of
    /// the nodes both have (same name and address), so that routing goes
    /// on as before until the new monitors have checked them.
    pub fn inherit(&self, old: &Topology) {
        for node in &self.nodes {
            let Some(before) = old
                .nodes
                .iter()
                .find(|o| o.name == node.name && o.address == node.address)
            else {
                continue;
            };
            node.healthy.store(before.healthy(), Relaxed);
            if node.configured_role == NodeRole::Auto {
                node.is_primary.store(before.is_primary(), Relaxed);
            }
            node.lsn.store(before.lsn.load(Relaxed), Relaxed);
            node.lag_bytes.store(before.lag_bytes(), Relaxed);
            node.lag_millis
                .store(before.lag_millis.load(Relaxed), Relaxed);
            node.bans.store(before.bans(), Relaxed);
            let banned_for = before
                .banned_until
                .load(Relaxed)
                .saturating_sub(old.now_millis());
            if banned_for > 0 {
                node.banned_until
                    .store(self.now_millis() + banned_for, Relaxed);
            }
        }
        self.elect_primary_quietly();
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

    fn elect_primary_quietly(&self) {
        let elected = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_primary() && self.nodes[i].healthy())
            .min_by_key(|&i| self.nodes[i].configured_role != NodeRole::Primary)
            .unwrap_or(NO_PRIMARY);
        self.primary.store(elected, Relaxed);
    }

    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// How much longer the node stays banned.
    pub fn ban_left(&self, index: usize) -> Duration {
        let until = self.nodes[index].banned_until.load(Relaxed);
        Duration::from_millis(until.saturating_sub(self.now_millis()))
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &NodeState {
        &self.nodes[index]
    }

    /// The node that takes writes now, if any is known.
    pub fn primary(&self) -> Option<usize> {
        let index = self.primary.load(Relaxed);
        (index != NO_PRIMARY).then_some(index)
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

    fn now_millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub fn is_banned(&self, index: usize) -> bool {
        self.nodes[index].banned_until.load(Relaxed) > self.now_millis()
    }

    /// Takes a node out of service for `ban_time`.
    pub fn ban(&self, index: usize, why: &str) {
        let node = &self.nodes[index];
        let until = self.now_millis() + self.ban_time.as_millis() as u64;
        let before = node.banned_until.swap(until, Relaxed);
        if before <= self.now_millis() {
            node.bans.fetch_add(1, Relaxed);
            tracing::warn!(node = %node.name, reason = why, ban_time = ?self.ban_time, "node banned");
        }
    }

    /// Whether the node may take traffic at all.
    pub fn is_available(&self, index: usize) -> bool {
        self.nodes[index].healthy() && !self.is_banned(index)
    }

    /// Whether a replica may serve reads: available and not too far behind.
    pub fn replica_in_service(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        !node.is_primary()
            && self.is_available(index)
            && node.lag_bytes() <= self.max_lag_bytes
            && node.lag() <= self.max_lag
    }

    /// Records a failed check: the node is down and banned.
    pub fn check_failed(&self, index: usize, why: &str) {
        self.nodes[index].healthy.store(false, Relaxed);
        self.ban(index, why);
        if self.primary() == Some(index) && self.nodes[index].configured_role == NodeRole::Auto {
            self.elect_primary();
        }
    }

    /// Records a successful check.
    pub fn report(&self, index: usize, sample: Sample) {
        let node = &self.nodes[index];
        let was_healthy = node.healthy.swap(true, Relaxed);
        if !was_healthy {
            tracing::info!(node = %node.name, "node is up");
        }
        node.lsn.store(sample.lsn.0, Relaxed);
        if node.configured_role == NodeRole::Auto {
            node.is_primary.store(!sample.in_recovery, Relaxed);
        }
        if node.is_primary() {
            self.history.record(self.started.elapsed(), sample.lsn);
            if let (Some(lsn), Some(_)) =
                (sample.insert_lsn, self.primary().filter(|&p| p == index))
            {
                *self.insert_position.lock() = Some(InsertPosition {
                    asked_at: sample.asked_at,
                    lsn,
                    epoch: self.epoch(),
                });
            }
            node.lag_bytes.store(0, Relaxed);
            node.lag_millis.store(0, Relaxed);
        } else {
            let primary_lsn = self.primary().map_or(sample.lsn, |p| self.nodes[p].lsn());
            let behind = primary_lsn.0.saturating_sub(sample.lsn.0);
            let lag = if behind == 0 {
                Duration::ZERO
            } else {
                self.history.lag_behind(self.started.elapsed(), sample.lsn)
            };
            node.lag_bytes.store(behind, Relaxed);
            node.lag_millis.store(lag.as_millis() as u64, Relaxed);
        }
        if node.configured_role == NodeRole::Auto || self.primary().is_none() {
            self.elect_primary();
        }
    }

    /// Picks the primary among the nodes that say they are one: a
    /// configured primary first, then the first `auto` node in config order.
    fn elect_primary(&self) {
        let claims = |index: &usize| {
            let node = &self.nodes[*index];
            node.is_primary() && node.healthy()
        };
        let elected = (0..self.nodes.len())
            .filter(claims)
            .min_by_key(|&i| self.nodes[i].configured_role != NodeRole::Primary)
            .unwrap_or(NO_PRIMARY);
        let before = self.primary.swap(elected, Relaxed);
        if before != elected && elected != NO_PRIMARY {
            let node = &self.nodes[elected];
            self.epoch_floor.store(node.lsn().0, Relaxed);
            self.epoch.fetch_add(1, Relaxed);
            self.history.clear();
            *self.insert_position.lock() = None;
            tracing::warn!(node = %node.name, "node is now the primary");
        } else if before != elected {
            tracing::warn!("no primary is reachable");
        }
    }
}
