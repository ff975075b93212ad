//! The topology's bookkeeping end to end: reports and failures in, roles,
//! the write target, service and bans out. The rules themselves are tested
//! where they live (election.rs, health.rs).

use super::*;
use crate::config::Config;

/// Three nodes ("a", "b", "c") with the given roles.
fn topology(roles: [&str; 3], routing: &str) -> Topology {
    let mut text = format!("[routing]\n{routing}\n");
    for (name, role) in ["a", "b", "c"].iter().zip(roles) {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:5432\"\nrole = \"{role}\"\n"
        ));
    }
    text.push_str(
        "[[users]]\nname = \"app\"\npassword = \"secret\"\n[[databases]]\nname = \"app\"\n",
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    Topology::new(&config)
}

fn auto3() -> Topology {
    topology(["auto", "auto", "auto"], "ban_time = \"1h\"")
}

fn sample(in_recovery: bool, timeline: Timeline, lsn: u64) -> Sample {
    Sample {
        in_recovery,
        lsn: Lsn(lsn),
        insert_lsn: (!in_recovery).then_some(Lsn(lsn)),
        timeline,
        asked_at: Instant::now(),
    }
}

fn roles(topology: &Topology) -> Vec<Role> {
    topology.nodes().iter().map(NodeState::role).collect()
}

#[test]
fn failover_and_return_keeps_the_writes_on_the_promoted_node() {
    let topology = auto3();
    topology.report(0, sample(false, 1, 100));
    topology.report(1, sample(true, 1, 100));
    assert_eq!(
        topology.write_target(),
        WriteTarget::None,
        "c not checked yet"
    );
    topology.report(2, sample(true, 1, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
    let epoch = topology.epoch();

    // The primary stops; replica b is promoted.
    topology.check_failed(0, "stopped");
    assert_eq!(topology.write_target(), WriteTarget::None);
    topology.report(1, sample(false, 2, 200));
    assert_eq!(topology.write_target(), WriteTarget::Node(1));
    assert!(topology.epoch() > epoch);

    // The old primary returns, out of recovery on timeline 1.
    topology.report(0, sample(false, 1, 150));
    assert_eq!(topology.write_target(), WriteTarget::Node(1));
    assert_eq!(
        roles(&topology),
        [
            Role::Refused(Refusal::OlderTimeline),
            Role::Primary,
            Role::Replica
        ]
    );
    assert_eq!(topology.status(0), Status::Refused);
    assert!(
        !topology.replica_in_service(0),
        "a false primary gets no reads"
    );
    assert_eq!(topology.node(0).false_primaries(), 1);
    // Still refused at its next checks: counted once.
    topology.report(0, sample(false, 1, 150));
    assert_eq!(topology.node(0).false_primaries(), 1);

    // Even with the promoted node gone, the old one gets no writes.
    topology.check_failed(1, "stopped");
    assert_eq!(topology.write_target(), WriteTarget::None);
    topology.report(0, sample(false, 1, 150));
    assert_eq!(topology.write_target(), WriteTarget::None);

    // Rewound and following the new timeline: a replica again.
    topology.report(1, sample(false, 2, 300));
    topology.report(0, sample(true, 2, 300));
    assert_eq!(roles(&topology)[0], Role::Replica);
    assert_eq!(topology.status(0), Status::Up);
}

#[test]
fn a_second_claimant_is_refused_and_not_handed_the_writes_later() {
    let topology = auto3();
    topology.report(0, sample(false, 2, 100));
    topology.report(1, sample(true, 2, 100));
    topology.report(2, sample(true, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
    // b is promoted beside a: a keeps the writes.
    topology.report(1, sample(false, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
    assert_eq!(
        topology.node(1).role(),
        Role::Refused(Refusal::SecondPrimary)
    );
    // a goes away: b is not handed the writes.
    topology.check_failed(0, "gone");
    assert_eq!(topology.write_target(), WriteTarget::None);
    // a returns: it takes them again.
    topology.report(0, sample(false, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
}

#[test]
fn claimants_answering_in_the_first_round_are_contested() {
    let topology = auto3();
    // Nobody is elected before every node answered once: the first to
    // answer does not win by speed.
    topology.report(0, sample(false, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::None);
    topology.report(1, sample(false, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Contested);
    topology.report(2, sample(true, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Contested);
    assert_eq!(topology.primary(), None);
    let contested = Role::Refused(Refusal::Contested);
    assert_eq!(roles(&topology)[..2], [contested, contested]);
    assert_eq!(topology.status(0), Status::Refused);
    assert!(!topology.replica_in_service(0));
    // One goes away: it may come back claiming, so the contest stands.
    topology.check_failed(0, "gone");
    assert_eq!(topology.write_target(), WriteTarget::Contested);
    // It comes back rewound, as a replica: the other takes the writes.
    topology.report(0, sample(true, 2, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(1));
}

#[test]
fn a_replica_is_banned_after_ban_after_failures_and_back_at_a_good_check() {
    let topology = topology(["primary", "replica", "replica"], "ban_time = \"0ms\"");
    topology.report(0, sample(false, 1, 100));
    topology.report(1, sample(true, 1, 100));
    assert!(topology.replica_in_service(1));

    topology.check_failed(1, "down");
    assert!(!topology.replica_in_service(1), "out at the first failure");
    assert_eq!(topology.status(1), Status::Failing(1));
    assert!(!topology.is_banned(1));
    topology.check_failed(1, "down");
    assert!(topology.is_banned(1));
    assert_eq!(topology.node(1).bans(), 1);
    topology.check_failed(1, "down");
    assert_eq!(topology.node(1).bans(), 1, "failed checks do not ban again");
    // ban_time 0: the ban has run out; the first good check lifts it.
    assert_eq!(topology.ban_left(1), Some(Duration::ZERO));
    topology.report(1, sample(true, 1, 100));
    assert!(topology.replica_in_service(1));
    assert_eq!(topology.status(1), Status::Up);
}

#[test]
fn a_connection_failure_counts_toward_a_ban_but_does_not_ban_alone() {
    let topology = topology(["primary", "replica", "replica"], "ban_time = \"1h\"");
    topology.report(1, sample(true, 1, 100));
    topology.connection_failed(1, "connection refused");
    assert!(!topology.is_available(1), "a retried read goes elsewhere");
    assert!(!topology.is_banned(1));
    topology.report(1, sample(true, 1, 100));
    assert!(topology.is_available(1));
    topology.connection_failed(1, "connection refused");
    topology.connection_failed(1, "connection refused");
    assert!(topology.is_banned(1));
    // A good check within ban_time does not lift the ban.
    topology.report(1, sample(true, 1, 100));
    assert!(!topology.is_available(1));
}

#[test]
fn the_configured_primary_is_shown_unreachable_never_banned() {
    let topology = topology(["primary", "replica", "replica"], "ban_time = \"1h\"");
    topology.report(0, sample(false, 1, 100));
    for _ in 0..5 {
        topology.check_failed(0, "down");
    }
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
    assert_eq!(topology.status(0), Status::Unreachable);
    assert!(!topology.is_banned(0));
    assert_eq!(topology.ban_left(0), None);
    assert_eq!(topology.node(0).bans(), 0);
    topology.report(0, sample(false, 1, 100));
    assert_eq!(topology.status(0), Status::Up);
    assert!(topology.is_available(0));
}

#[test]
fn an_auto_primary_banned_while_away_takes_the_writes_at_once_on_return() {
    let topology = auto3();
    topology.report(0, sample(false, 1, 100));
    topology.report(1, sample(true, 1, 100));
    topology.report(2, sample(true, 1, 100));
    topology.check_failed(0, "restart");
    topology.check_failed(0, "restart");
    assert!(topology.is_banned(0));
    topology.report(0, sample(false, 1, 100));
    assert_eq!(topology.write_target(), WriteTarget::Node(0));
    assert!(!topology.is_banned(0));
    assert!(topology.is_available(0));
}

#[tokio::test]
async fn a_request_waits_for_a_primary_within_the_hold() {
    let topology = Arc::new(auto3());
    // No primary and no election: the wait ends at the hold.
    let asked = Instant::now();
    let target = topology.wait_for_primary(Duration::from_millis(50)).await;
    assert_eq!(target, WriteTarget::None);
    assert!(asked.elapsed() >= Duration::from_millis(50));

    // An election during the wait ends it.
    topology.report(0, sample(true, 1, 100));
    topology.report(2, sample(true, 1, 100));
    let waiting = tokio::spawn({
        let topology = topology.clone();
        async move { topology.wait_for_primary(Duration::from_secs(30)).await }
    });
    tokio::task::yield_now().await;
    topology.report(1, sample(false, 1, 100));
    let target = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the election")
        .expect("the waiting task ran");
    assert_eq!(target, WriteTarget::Node(1));
}

#[test]
fn a_reload_keeps_the_primary_the_newest_timeline_and_the_bans() {
    let old = auto3();
    old.report(0, sample(false, 1, 100));
    old.report(2, sample(true, 1, 100));
    old.check_failed(0, "stopped");
    old.report(1, sample(false, 2, 200));
    old.check_failed(2, "down");
    old.check_failed(2, "down");
    assert!(old.is_banned(2));

    let new = auto3();
    new.inherit(&old);
    assert_eq!(new.write_target(), WriteTarget::Node(1));
    assert!(new.is_banned(2));
    assert_eq!(new.node(2).bans(), 1);
    // The old primary's return is judged against the timeline seen
    // before the reload.
    new.report(0, sample(false, 1, 150));
    assert_eq!(new.write_target(), WriteTarget::Node(1));
    assert_eq!(new.node(0).role(), Role::Refused(Refusal::OlderTimeline));
}
