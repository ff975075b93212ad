//! Whether a node may take traffic, from the outcomes of its monitor's
//! checks and of the connections sessions open to it. A pure state
//! machine over a millisecond clock, so that the rules are tested without
//! waiting:
//!
//! - a failure takes the node out of service until a check succeeds again
//!   (a read that failed there must not be retried on it);
//! - `ban_after` failures in a row ban it: out of service for `ban_time`
//!   counted from the first of them, and after that until a check
//!   succeeds. Failures during a ban do not extend it, so a node that
//!   recovered after a long outage is back at its first good check;
//! - the node taking the writes is never banned (a ban would not move the
//!   writes anywhere): its failures only show that it is unreachable.

use std::time::Duration;

/// Milliseconds on the topology's clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last check succeeded and nothing failed since.
    Up,
    /// `failures` checks or connections failed in a row, the first at
    /// `since`: out of service until a check succeeds.
    Failing { failures: u32, since: Millis },
    /// Out of service until `until` (ban_time after the first failure of
    /// the streak that began at `since`) and then until a check succeeds.
    Banned { since: Millis, until: Millis },
}

/// `[routing]`'s ban settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanRules {
    /// Failures in a row that ban a node.
    pub ban_after: u32,
    pub ban_time: Millis,
}

/// What a step changed, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The node just left service (its first failure).
    WentDown,
    /// The node was just banned.
    Banned,
    /// The node is back in service.
    Recovered,
}

impl Health {
    /// A check or a connection failed at `now`. `bannable` is false for
    /// the node taking the writes.
    pub fn failed(self, now: Millis, rules: BanRules, bannable: bool) -> (Health, Change) {
        let (failures, since, change) = match self {
            // Not re-armed: the ban runs from the first failure.
            Health::Banned { .. } => return (self, Change::None),
            Health::Up => (1, now, Change::WentDown),
            Health::Failing { failures, since } => {
                (failures.saturating_add(1), since, Change::None)
            }
        };
        if bannable && failures >= rules.ban_after {
            let until = since.saturating_add(rules.ban_time);
            (Health::Banned { since, until }, Change::Banned)
        } else {
            (Health::Failing { failures, since }, change)
        }
    }

    /// A check succeeded at `now`. `bannable` is false for the node taking
    /// the writes, whose ban (from before it took them) is lifted at once.
    pub fn succeeded(self, now: Millis, bannable: bool) -> (Health, Change) {
        match self {
            Health::Up => (self, Change::None),
            Health::Banned { until, .. } if bannable && now < until => (self, Change::None),
            Health::Failing { .. } | Health::Banned { .. } => (Health::Up, Change::Recovered),
        }
    }

    pub fn in_service(self) -> bool {
        self == Health::Up
    }

    pub fn is_banned(self) -> bool {
        matches!(self, Health::Banned { .. })
    }

    /// Failures in a row so far (0 when up; a ban counts what banned it).
    pub fn failures(self, rules: BanRules) -> u32 {
        match self {
            Health::Up => 0,
            Health::Failing { failures, .. } => failures,
            Health::Banned { .. } => rules.ban_after,
        }
    }

    /// How long the ban still runs before a good check may lift it; zero
    /// once only the good check is missing. `None` when not banned.
    pub fn ban_left(self, now: Millis) -> Option<Duration> {
        match self {
            Health::Banned { until, .. } => Some(Duration::from_millis(until.saturating_sub(now))),
            Health::Up | Health::Failing { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BanRules = BanRules {
        ban_after: 2,
        ban_time: 10_000,
    };

    fn fail(health: Health, at: Millis) -> Health {
        health.failed(at, RULES, true).0
    }

    #[test]
    fn one_failure_takes_a_node_out_until_a_good_check_without_a_ban() {
        let (health, change) = Health::Up.failed(100, RULES, true);
        assert_eq!(
            health,
            Health::Failing {
                failures: 1,
                since: 100
            }
        );
        assert_eq!(change, Change::WentDown);
        assert!(!health.in_service());
        assert!(!health.is_banned());
        let (health, change) = health.succeeded(200, true);
        assert_eq!((health, change), (Health::Up, Change::Recovered));
    }

    #[test]
    fn ban_after_failures_in_a_row_ban_for_ban_time_from_the_first() {
        let health = fail(Health::Up, 1_000);
        let (health, change) = health.failed(1_100, RULES, true);
        assert_eq!(change, Change::Banned);
        assert_eq!(
            health,
            Health::Banned {
                since: 1_000,
                until: 11_000
            }
        );
        // Failed checks during the ban do not re-arm it.
        let mut during = health;
        for at in (1_200..20_000).step_by(100) {
            let (next, change) = during.failed(at, RULES, true);
            assert_eq!(change, Change::None);
            during = next;
        }
        assert_eq!(during, health);
        assert_eq!(during.ban_left(5_000), Some(Duration::from_millis(6_000)));
        assert_eq!(during.ban_left(20_000), Some(Duration::ZERO));
    }

    #[test]
    fn a_good_check_lifts_a_ban_only_once_it_has_run_out() {
        let banned = fail(fail(Health::Up, 0), 100);
        assert_eq!(banned.succeeded(5_000, true), (banned, Change::None));
        assert_eq!(
            banned.succeeded(10_000, true),
            (Health::Up, Change::Recovered)
        );
        // Long outage: back at the first good check after it.
        assert_eq!(
            banned.succeeded(60_000, true),
            (Health::Up, Change::Recovered)
        );
    }

    #[test]
    fn a_good_check_resets_the_count() {
        let health = fail(Health::Up, 0).succeeded(50, true).0;
        let health = fail(health, 100);
        assert_eq!(
            health,
            Health::Failing {
                failures: 1,
                since: 100
            }
        );
    }

    #[test]
    fn ban_after_one_bans_at_the_first_failure() {
        let rules = BanRules {
            ban_after: 1,
            ban_time: 500,
        };
        let (health, change) = Health::Up.failed(10, rules, true);
        assert_eq!(change, Change::Banned);
        assert_eq!(
            health,
            Health::Banned {
                since: 10,
                until: 510
            }
        );
    }

    #[test]
    fn the_write_target_is_never_banned() {
        let mut health = Health::Up;
        for at in 0..10 {
            health = health.failed(at * 100, RULES, false).0;
        }
        assert_eq!(
            health,
            Health::Failing {
                failures: 10,
                since: 0
            }
        );
        assert_eq!(
            health.succeeded(1_000, false),
            (Health::Up, Change::Recovered)
        );
        // A node banned before it was elected is lifted at its first good
        // check as the write target.
        let banned = fail(fail(Health::Up, 0), 100);
        assert_eq!(
            banned.succeeded(200, false),
            (Health::Up, Change::Recovered)
        );
    }
}
