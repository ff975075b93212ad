//! Which node takes the writes: a pure function of what the monitors last
//! saw of each node, what each node's past answers hold against it, the
//! node that takes the writes now, and the newest timeline ever seen. The
//! rules keep writes on one history whatever order nodes come and go in:
//!
//! - a configured `role = "primary"` takes the writes, as configured;
//! - otherwise an `auto` node takes them only if it is out of recovery on
//!   the newest timeline seen, and the node taking them now keeps them
//!   while it stays so. A promotion moves the timeline on, so a primary
//!   that a failover left behind never wins again, even while the
//!   promoted node is unreachable;
//! - a node out of recovery that does not take the writes is refused (a
//!   false primary): no writes, no reads, and it is never handed the writes
//!   later (say when the primary goes away) until it has been in recovery;
//! - when several nodes qualify and none of them takes the writes now,
//!   none does until all but one have stepped down: refusing writes is
//!   recoverable, two histories are not. Without a node taking the writes,
//!   nobody is elected before every node has answered or failed once, so
//!   that the first to answer does not win by speed.

use crate::config::NodeRole;

pub type Timeline = u32;

/// The last thing a node's monitor learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No check has answered yet.
    Pending,
    /// The last check failed.
    Failed,
    Answered {
        in_recovery: bool,
        /// The timeline of the WAL the node writes (out of recovery) or of
        /// its last restartpoint (in recovery).
        timeline: Timeline,
    },
}

/// What a node's past answers hold against it, until it answers in
/// recovery (it was demoted, rewound or rebuilt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Claim {
    #[default]
    Clear,
    /// It was refused the writes while out of recovery.
    Refused,
    /// It was one of the claimants of a contested election: none of them
    /// takes the writes while another still claims them, reachable or not.
    Contested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub configured: NodeRole,
    pub check: Check,
    pub claim: Claim,
}

/// Why a node out of recovery does not take the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its timeline is older than the newest seen: a failover left it
    /// behind.
    OlderTimeline,
    /// Another node takes the writes, or did when this one claimed them.
    SecondPrimary,
    /// Several nodes claim the writes on the newest timeline and none took
    /// them before.
    Contested,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OlderTimeline => "its timeline is older than the newest seen",
            Refusal::SecondPrimary => "another node takes the writes",
            Refusal::Contested => "another node claims the writes on the same timeline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not known: no answer yet, the last check failed, or waiting for
    /// every node's first answer before an election.
    Unknown,
    /// Takes the writes.
    Primary,
    Replica,
    /// Out of recovery but may not take writes: gets no traffic.
    Refused(Refusal),
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Refused(Refusal::Contested) => "contested",
            Role::Refused(_) => "false_primary",
        }
    }

    pub fn is_refused(self) -> bool {
        matches!(self, Role::Refused(_))
    }

    /// One byte, for the atomic the router reads.
    pub fn encode(self) -> u8 {
        match self {
            Role::Unknown => 0,
            Role::Primary => 1,
            Role::Replica => 2,
            Role::Refused(Refusal::OlderTimeline) => 3,
            Role::Refused(Refusal::SecondPrimary) => 4,
            Role::Refused(Refusal::Contested) => 5,
        }
    }

    pub fn decode(byte: u8) -> Role {
        match byte {
            1 => Role::Primary,
            2 => Role::Replica,
            3 => Role::Refused(Refusal::OlderTimeline),
            4 => Role::Refused(Refusal::SecondPrimary),
            5 => Role::Refused(Refusal::Contested),
            _ => Role::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    Node(usize),
    /// No node may take writes now.
    None,
    /// Several nodes claim them, none is chosen: writes are refused.
    Contested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    pub target: WriteTarget,
    /// Each candidate's role, in order.
    pub roles: Vec<Role>,
    /// What each candidate's answers now hold against it, in order.
    pub claims: Vec<Claim>,
    /// The newest timeline seen, this round included.
    pub newest: Timeline,
}

/// Elects the node that takes the writes. `current` is the node that
/// takes them now, `newest_seen` the newest timeline seen before.
pub fn elect(candidates: &[Candidate], current: Option<usize>, newest_seen: Timeline) -> Election {
    let newest = candidates
        .iter()
        .filter_map(|c| match c.check {
            Check::Answered { timeline, .. } => Some(timeline),
            Check::Pending | Check::Failed => None,
        })
        .fold(newest_seen, Timeline::max);
    let on_newest = |c: &Candidate| matches!(c.check, Check::Answered { in_recovery: false, timeline } if timeline == newest);
    let qualifies =
        |c: &Candidate| c.configured == NodeRole::Auto && on_newest(c) && c.claim == Claim::Clear;
    // A contestant stops claiming when it answers in recovery or on an
    // older timeline; while unreachable it may come back claiming.
    let contests = |c: &Candidate| {
        c.claim == Claim::Contested && !matches!(c.check, Check::Answered { .. } if !on_newest(c))
    };
    let configured = candidates
        .iter()
        .position(|c| c.configured == NodeRole::Primary);
    let target = if let Some(index) = configured {
        WriteTarget::Node(index)
    } else if let Some(index) = current.filter(|&i| candidates.get(i).is_some_and(qualifies)) {
        WriteTarget::Node(index)
    } else {
        let claimants: Vec<usize> = (0..candidates.len())
            .filter(|&i| qualifies(&candidates[i]) || contests(&candidates[i]))
            .collect();
        let pending = candidates.iter().any(|c| c.check == Check::Pending);
        match claimants.as_slice() {
            [] => WriteTarget::None,
            [only] if on_newest(&candidates[*only]) && !pending => WriteTarget::Node(*only),
            [_] => WriteTarget::None,
            _ => WriteTarget::Contested,
        }
    };
    let (roles, claims) = candidates
        .iter()
        .enumerate()
        .map(|(index, candidate)| {
            if target == WriteTarget::Node(index) {
                return (Role::Primary, Claim::Clear);
            }
            match (candidate.configured, candidate.check) {
                (NodeRole::Replica, _) => (Role::Replica, Claim::Clear),
                // What it answered before still holds through an outage.
                (_, Check::Pending | Check::Failed) => (Role::Unknown, candidate.claim),
                (
                    _,
                    Check::Answered {
                        in_recovery: true, ..
                    },
                ) => (Role::Replica, Claim::Clear),
                _ if !on_newest(candidate) => {
                    (Role::Refused(Refusal::OlderTimeline), Claim::Refused)
                }
                _ if contests(candidate)
                    || (target == WriteTarget::Contested && qualifies(candidate)) =>
                {
                    (Role::Refused(Refusal::Contested), Claim::Contested)
                }
                // Waiting for every node's first answer.
                _ if target == WriteTarget::None && qualifies(candidate) => {
                    (Role::Unknown, Claim::Clear)
                }
                _ => (Role::Refused(Refusal::SecondPrimary), Claim::Refused),
            }
        })
        .unzip();
    Election {
        target,
        roles,
        claims,
        newest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Refusal::*;
    use Role::*;

    fn auto(check: Check) -> Candidate {
        Candidate {
            configured: NodeRole::Auto,
            check,
            claim: Claim::Clear,
        }
    }

    fn claimed(check: Check, claim: Claim) -> Candidate {
        Candidate {
            claim,
            ..auto(check)
        }
    }

    fn primary_on(timeline: Timeline) -> Check {
        Check::Answered {
            in_recovery: false,
            timeline,
        }
    }

    fn replica_on(timeline: Timeline) -> Check {
        Check::Answered {
            in_recovery: true,
            timeline,
        }
    }

    #[test]
    fn the_one_node_out_of_recovery_takes_the_writes() {
        let nodes = [
            auto(primary_on(1)),
            auto(replica_on(1)),
            auto(replica_on(1)),
        ];
        let election = elect(&nodes, None, 0);
        assert_eq!(election.target, WriteTarget::Node(0));
        assert_eq!(election.roles, [Primary, Replica, Replica]);
        assert_eq!(election.newest, 1);
    }

    #[test]
    fn a_promoted_replica_takes_over_from_a_primary_that_went_away() {
        let nodes = [
            auto(Check::Failed),
            auto(primary_on(2)),
            auto(replica_on(1)),
        ];
        let election = elect(&nodes, None, 1);
        assert_eq!(election.target, WriteTarget::Node(1));
        assert_eq!(election.roles, [Unknown, Primary, Replica]);
        assert_eq!(election.newest, 2);
    }

    #[test]
    fn an_old_primary_returning_on_its_old_timeline_is_a_false_primary() {
        // The split brain: the old primary is first in the config
        // and used to win.
        let nodes = [
            auto(primary_on(1)),
            auto(primary_on(2)),
            auto(replica_on(1)),
        ];
        let election = elect(&nodes, Some(1), 2);
        assert_eq!(election.target, WriteTarget::Node(1));
        assert_eq!(election.roles, [Refused(OlderTimeline), Primary, Replica]);
        assert_eq!(election.claims[0], Claim::Refused);
    }

    #[test]
    fn the_newest_timeline_is_remembered_while_the_promoted_node_is_away() {
        // Both gone for a while; the old primary returns first: it must
        // not take writes that the promoted node's history never sees.
        let nodes = [auto(primary_on(1)), auto(Check::Failed)];
        let election = elect(&nodes, None, 2);
        assert_eq!(election.target, WriteTarget::None);
        assert_eq!(election.roles, [Refused(OlderTimeline), Unknown]);
        assert_eq!(election.newest, 2);
    }

    #[test]
    fn the_current_primary_is_kept_against_a_second_claimant_on_its_timeline() {
        let nodes = [auto(primary_on(2)), auto(primary_on(2))];
        let election = elect(&nodes, Some(1), 2);
        assert_eq!(election.target, WriteTarget::Node(1));
        assert_eq!(election.roles, [Refused(SecondPrimary), Primary]);
        assert_eq!(election.claims, [Claim::Refused, Claim::Clear]);
    }

    #[test]
    fn a_refused_claimant_is_not_handed_the_writes_when_the_primary_goes() {
        let nodes = [claimed(primary_on(2), Claim::Refused), auto(Check::Failed)];
        let election = elect(&nodes, Some(1), 2);
        assert_eq!(election.target, WriteTarget::None);
        assert_eq!(election.roles, [Refused(SecondPrimary), Unknown]);
        // The primary returns: it takes the writes again.
        let nodes = [claimed(primary_on(2), Claim::Refused), auto(primary_on(2))];
        let election = elect(&nodes, None, 2);
        assert_eq!(election.target, WriteTarget::Node(1));
        // Once it has been in recovery, the refused node is clear.
        let nodes = [claimed(replica_on(2), Claim::Refused), auto(primary_on(2))];
        let election = elect(&nodes, Some(1), 2);
        assert_eq!(election.claims, [Claim::Clear, Claim::Clear]);
    }

    #[test]
    fn a_claim_is_kept_through_an_outage() {
        let nodes = [claimed(Check::Failed, Claim::Refused), auto(primary_on(2))];
        let election = elect(&nodes, Some(1), 2);
        assert_eq!(election.claims, [Claim::Refused, Claim::Clear]);
        assert_eq!(election.roles, [Unknown, Primary]);
    }

    #[test]
    fn two_claimants_on_the_newest_timeline_and_none_current_get_no_writes() {
        let nodes = [
            auto(primary_on(2)),
            auto(primary_on(2)),
            auto(primary_on(1)),
        ];
        let election = elect(&nodes, None, 1);
        assert_eq!(election.target, WriteTarget::Contested);
        assert_eq!(
            election.roles,
            [
                Refused(Contested),
                Refused(Contested),
                Refused(OlderTimeline)
            ]
        );
        assert_eq!(
            election.claims,
            [Claim::Contested, Claim::Contested, Claim::Refused]
        );
    }

    #[test]
    fn a_contest_lasts_until_all_but_one_claimant_steps_down() {
        let contested = |check| claimed(check, Claim::Contested);
        // One of them unreachable: it may come back claiming.
        let nodes = [contested(Check::Failed), contested(primary_on(2))];
        let election = elect(&nodes, None, 2);
        assert_eq!(election.target, WriteTarget::Contested);
        assert_eq!(election.roles, [Unknown, Refused(Contested)]);
        // A newcomer on the same timeline joins the contest.
        let nodes = [
            contested(Check::Failed),
            contested(primary_on(2)),
            auto(primary_on(2)),
        ];
        let election = elect(&nodes, None, 2);
        assert_eq!(election.target, WriteTarget::Contested);
        assert_eq!(election.claims[2], Claim::Contested);
        // One steps down (rewound as a replica): the other wins.
        let nodes = [contested(replica_on(2)), contested(primary_on(2))];
        let election = elect(&nodes, None, 2);
        assert_eq!(election.target, WriteTarget::Node(1));
        assert_eq!(election.roles, [Replica, Primary]);
        assert_eq!(election.claims, [Claim::Clear, Claim::Clear]);
    }

    #[test]
    fn nobody_is_elected_before_every_node_answered_once() {
        let nodes = [auto(primary_on(2)), auto(Check::Pending)];
        let election = elect(&nodes, None, 0);
        assert_eq!(election.target, WriteTarget::None);
        assert_eq!(election.roles, [Unknown, Unknown]);
        // A node that failed its first check does not hold the election up.
        let nodes = [auto(primary_on(2)), auto(Check::Failed)];
        assert_eq!(elect(&nodes, None, 0).target, WriteTarget::Node(0));
        // Nor does a new node hold up the primary there is.
        let nodes = [auto(primary_on(2)), auto(Check::Pending)];
        assert_eq!(elect(&nodes, Some(0), 2).target, WriteTarget::Node(0));
    }

    #[test]
    fn a_current_primary_left_behind_by_a_newer_timeline_loses_the_writes() {
        // Still up, but another node was promoted past it: the newer
        // timeline is where the cluster's manager sent the writes.
        let nodes = [auto(primary_on(1)), auto(primary_on(2))];
        let election = elect(&nodes, Some(0), 1);
        assert_eq!(election.target, WriteTarget::Node(1));
        assert_eq!(election.roles, [Refused(OlderTimeline), Primary]);
    }

    #[test]
    fn a_current_primary_that_fails_a_check_is_not_kept() {
        let nodes = [auto(Check::Failed), auto(replica_on(1))];
        let election = elect(&nodes, Some(0), 1);
        assert_eq!(election.target, WriteTarget::None);
        assert_eq!(election.roles, [Unknown, Replica]);
    }

    #[test]
    fn a_replica_timeline_counts_toward_the_newest() {
        // A replica already following the promoted node's timeline is
        // evidence enough against the old primary.
        let nodes = [
            auto(primary_on(1)),
            auto(Check::Failed),
            auto(replica_on(2)),
        ];
        let election = elect(&nodes, None, 1);
        assert_eq!(election.target, WriteTarget::None);
        assert_eq!(election.roles[0], Refused(OlderTimeline));
    }

    #[test]
    fn a_configured_primary_takes_the_writes_and_auto_claimants_are_refused() {
        let configured = Candidate {
            configured: NodeRole::Primary,
            ..auto(Check::Failed)
        };
        let nodes = [configured, auto(primary_on(2)), auto(replica_on(1))];
        let election = elect(&nodes, None, 1);
        assert_eq!(election.target, WriteTarget::Node(0));
        assert_eq!(election.roles, [Primary, Refused(SecondPrimary), Replica]);
    }

    #[test]
    fn a_configured_replica_stays_a_replica() {
        let replica = Candidate {
            configured: NodeRole::Replica,
            ..auto(primary_on(1))
        };
        let nodes = [auto(primary_on(1)), replica];
        let election = elect(&nodes, None, 0);
        assert_eq!(election.target, WriteTarget::Node(0));
        assert_eq!(election.roles, [Primary, Replica]);
    }

    #[test]
    fn roles_survive_their_encoding() {
        for role in [
            Unknown,
            Primary,
            Replica,
            Refused(OlderTimeline),
            Refused(SecondPrimary),
            Refused(Contested),
        ] {
            assert_eq!(Role::decode(role.encode()), role);
        }
    }
}
