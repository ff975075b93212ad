//! What the monitors and the sessions report, and the election run over
//! it: the ledger is updated under its lock, and what the router reads
//! (roles, service, the write target) is published from it.

use super::election::{self, Candidate, Check};
use super::health::{Change, Health};
use super::{InsertPosition, CONTESTED, NO_PRIMARY};
use super::{Ledger, NodeState, Refusal, Role, Sample, Timeline, Topology, WriteTarget};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

impl Topology {
    /// A session could not connect to the node, or lost its connection
    /// before any answer: one failure toward `ban_after`, and out of
    /// service until the monitor's next good check (so that a retried read
    /// goes elsewhere). A statement's own error is no failure of the node
    /// and must not be reported here.
    pub fn connection_failed(&self, index: usize, why: &str) {
        let mut ledger = self.ledger.lock();
        self.record_failure(&mut ledger, index, why);
    }

    /// Records a failed check.
    pub fn check_failed(&self, index: usize, why: &str) {
        self.nodes[index].healthy.store(false, Relaxed);
        let mut ledger = self.ledger.lock();
        ledger.checks[index] = Check::Failed;
        // Before the election: the write target's failure shows as
        // unreachable, and does not count toward a ban.
        self.record_failure(&mut ledger, index, why);
        self.elect(&mut ledger, Announce::Yes);
    }

    /// Records a successful check.
    pub fn report(&self, index: usize, sample: Sample) {
        let node = &self.nodes[index];
        let was_healthy = node.healthy.swap(true, Relaxed);
        if !was_healthy {
            tracing::info!(node = %node.name, "node is up");
        }
        node.lsn.store(sample.lsn.0, Relaxed);
        node.timeline.store(sample.timeline, Relaxed);
        {
            let mut ledger = self.ledger.lock();
            ledger.checks[index] = Check::Answered {
                in_recovery: sample.in_recovery,
                timeline: sample.timeline,
            };
            self.elect(&mut ledger, Announce::Yes);
            // After the election: a node that now takes the writes is
            // back at once, whatever ban it had as a replica.
            let bannable = self.primary() != Some(index);
            let (health, change) = ledger.health[index].succeeded(self.now_millis(), bannable);
            self.set_health(&mut ledger, index, health, change, "check succeeded");
        }
        if node.is_primary() {
            self.history.record(self.started.elapsed(), sample.lsn);
            if let Some(lsn) = sample.insert_lsn {
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
    }

    fn record_failure(&self, ledger: &mut Ledger, index: usize, why: &str) {
        let bannable = self.primary() != Some(index);
        let (health, change) = ledger.health[index].failed(self.now_millis(), self.rules, bannable);
        self.set_health(ledger, index, health, change, why);
    }

    fn set_health(
        &self,
        ledger: &mut Ledger,
        index: usize,
        health: Health,
        change: Change,
        why: &str,
    ) {
        let node = &self.nodes[index];
        ledger.health[index] = health;
        node.in_service.store(health.in_service(), Relaxed);
        let ban_time = Duration::from_millis(self.rules.ban_time);
        match change {
            Change::None => {}
            Change::WentDown if self.primary() == Some(index) => {
                tracing::warn!(node = %node.name, reason = why, "the primary is unreachable");
            }
            Change::WentDown => {
                tracing::warn!(node = %node.name, reason = why, "node out of service until a check succeeds");
            }
            Change::Banned => {
                node.bans.fetch_add(1, Relaxed);
                tracing::warn!(node = %node.name, reason = why, ?ban_time, "node banned");
            }
            Change::Recovered => tracing::info!(node = %node.name, "node back in service"),
        }
    }

    /// Runs the election over the ledger and publishes its outcome: each
    /// node's role, the write target, and with a new primary a new epoch.
    pub(super) fn elect(&self, ledger: &mut Ledger, announce: Announce) {
        let candidates: Vec<Candidate> = self
            .nodes
            .iter()
            .zip(ledger.checks.iter().zip(&ledger.claims))
            .map(|(node, (&check, &claim))| Candidate {
                configured: node.configured_role,
                check,
                claim,
            })
            .collect();
        let outcome = election::elect(&candidates, self.primary(), ledger.newest_timeline);
        ledger.newest_timeline = outcome.newest;
        ledger.claims.clone_from(&outcome.claims);
        for (node, &role) in self.nodes.iter().zip(&outcome.roles) {
            let before = Role::decode(node.role.swap(role.encode(), Relaxed));
            if before != role && announce == Announce::Yes {
                self.announce_role(node, before, role, outcome.newest);
            }
        }
        let encoded = match outcome.target {
            WriteTarget::Node(index) => index,
            WriteTarget::None => NO_PRIMARY,
            WriteTarget::Contested => CONTESTED,
        };
        let before = self.primary.swap(encoded, Relaxed);
        if before == encoded || announce == Announce::No {
            return;
        }
        match outcome.target {
            WriteTarget::Node(index) => {
                let node = &self.nodes[index];
                self.epoch_floor.store(node.lsn().0, Relaxed);
                self.epoch.fetch_add(1, Relaxed);
                self.history.clear();
                *self.insert_position.lock() = None;
                tracing::warn!(node = %node.name, timeline = node.timeline(), "node is now the primary");
            }
            WriteTarget::None => tracing::warn!("no primary is reachable"),
            WriteTarget::Contested => {
                let claimants: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|n| n.role() == Role::Refused(Refusal::Contested))
                    .map(|n| &*n.name)
                    .collect();
                tracing::error!(
                    nodes = ?claimants,
                    timeline = outcome.newest,
                    "several nodes claim to be the primary on the newest timeline and none took the writes before: writes are refused until all but one have stepped down"
                );
            }
        }
        self.elected.notify_waiters();
    }

    /// Logs a node's new role when it matters to an operator (a node
    /// taking the writes is logged with the write target), and counts
    /// false primaries.
    fn announce_role(&self, node: &NodeState, before: Role, role: Role, newest: Timeline) {
        if role.is_refused() && !before.is_refused() {
            node.refusals.fetch_add(1, Relaxed);
        }
        match role {
            // Logged once for all claimants, with the write target.
            Role::Refused(Refusal::Contested) => {}
            Role::Refused(refusal) => tracing::error!(
                node = %node.name,
                timeline = node.timeline(),
                newest_timeline = newest,
                "false primary: the node is out of recovery but {}; it gets no writes and no reads",
                refusal.label()
            ),
            Role::Primary | Role::Replica | Role::Unknown if before.is_refused() => {
                tracing::info!(node = %node.name, role = role.label(), "node no longer claims to be the primary");
            }
            Role::Primary | Role::Replica | Role::Unknown => {}
        }
    }
}

/// Whether an election's changes are logged, counted and start a new
/// epoch: not when a reload's new topology takes over the old one's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announce {
    Yes,
    No,
}
