use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn loads(n: usize) -> Vec<NodeLoad> {
    (0..n).map(|_| NodeLoad::default()).collect()
}

/// Candidates for every node, index i with `weights[i]`.
fn all<'a>(loads: &'a [NodeLoad], weights: &[u32]) -> Vec<Candidate<'a>> {
    loads
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(index, (load, &weight))| Candidate {
            index,
            weight,
            load,
        })
        .collect()
}

/// The candidates whose index is in `keep`.
fn only<'a>(candidates: &[Candidate<'a>], keep: &[usize]) -> Vec<Candidate<'a>> {
    candidates
        .iter()
        .filter(|c| keep.contains(&c.index))
        .copied()
        .collect()
}

fn picks(balancer: &Balancer, candidates: &[Candidate<'_>], n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| balancer.pick(candidates, CLIENT).expect("a candidate"))
        .collect()
}

fn counts(picked: &[usize], nodes: usize) -> Vec<usize> {
    let mut counts = vec![0; nodes];
    for &index in picked {
        counts[index] += 1;
    }
    counts
}

fn set_active(load: &NodeLoad, n: u32) {
    while load.active() > n {
        load.end();
    }
    while load.active() < n {
        load.begin();
    }
}

fn v4_clients(n: u32) -> impl Iterator<Item = IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
}

fn v6_clients(n: u32) -> impl Iterator<Item = IpAddr> {
    (0..n).map(|i| {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            (i >> 16) as u16,
            0,
            0,
            (i * 31) as u16,
            i as u16,
        ))
    })
}

fn clients() -> Vec<IpAddr> {
    v4_clients(1000).chain(v6_clients(1000)).collect()
}

#[test]
fn policy_names_round_trip() {
    for policy in Policy::ALL {
        assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
    }
    assert_eq!("ip_hash".parse::<Policy>(), Ok(Policy::IpHash));
    let error = "RoundRobin".parse::<Policy>().unwrap_err();
    assert_eq!(error, UnknownPolicy("RoundRobin".into()));
    assert!(error.to_string().contains("\"RoundRobin\""), "{error}");
    assert!(error.to_string().contains("least_connections"), "{error}");
    assert!("".parse::<Policy>().is_err());
}

#[test]
fn empty_candidates_pick_none() {
    for policy in Policy::ALL {
        let balancer = Balancer::new(policy, &[1, 1, 1]);
        assert_eq!(balancer.pick(&[], CLIENT), None, "{policy}");
        let empty = Balancer::new(policy, &[]);
        assert_eq!(empty.pick(&[], CLIENT), None, "{policy}");
    }
}

#[test]
fn single_candidate_is_always_picked() {
    let loads = loads(3);
    let candidates = all(&loads, &[0, 5, 1]);
    for policy in Policy::ALL {
        let balancer = Balancer::new(policy, &[1, 1, 1]);
        for keep in 0..3 {
            let one = only(&candidates, &[keep]);
            assert_eq!(picks(&balancer, &one, 5), vec![keep; 5], "{policy}");
        }
    }
}

#[test]
fn node_load_counts_checkouts() {
    let load = NodeLoad::default();
    assert_eq!(load.active(), 0);
    load.end();
    assert_eq!(load.active(), 0, "never below zero");
    load.begin();
    load.begin();
    load.begin();
    load.end();
    assert_eq!(load.active(), 2);
}

#[test]
fn node_load_latency_is_a_moving_average() {
    let load = NodeLoad::default();
    assert_eq!(load.average_latency(), None);
    load.observe(Duration::from_millis(100));
    assert_eq!(load.average_latency(), Some(Duration::from_millis(100)));
    load.observe(Duration::from_millis(200));
    let average = load.average_latency().expect("observed");
    let expected = Duration::from_millis(120);
    assert!(
        average.abs_diff(expected) < Duration::from_micros(1),
        "{average:?}"
    );
    for _ in 0..100 {
        load.observe(Duration::from_millis(10));
    }
    let average = load.average_latency().expect("observed");
    assert!(average.abs_diff(Duration::from_millis(10)) < Duration::from_micros(1));

    let extreme = NodeLoad::default();
    extreme.observe(Duration::MAX);
    extreme.observe(Duration::ZERO);
    extreme.observe(Duration::MAX);
    assert!(extreme.average_latency().is_some());
}

#[test]
fn round_robin_visits_each_once_per_cycle() {
    let loads = loads(3);
    let candidates = all(&loads, &[1, 5, 2]);
    let balancer = Balancer::new(Policy::RoundRobin, &[1, 5, 2]);
    let picked = picks(&balancer, &candidates, 30);
    for cycle in picked.chunks(3) {
        assert_eq!(counts(cycle, 3), vec![1, 1, 1], "{picked:?}");
    }
    // Over a subset, the subset alone rotates.
    let two = only(&candidates, &[0, 2]);
    assert_eq!(counts(&picks(&balancer, &two, 10), 3), vec![5, 0, 5]);
}

#[test]
fn round_robin_skips_weight_zero_unless_all_are_zero() {
    let loads = loads(3);
    let balancer = Balancer::new(Policy::RoundRobin, &[1, 1, 1]);
    let drained = all(&loads, &[1, 0, 1]);
    assert_eq!(counts(&picks(&balancer, &drained, 10), 3), vec![5, 0, 5]);
    let zeros = all(&loads, &[0, 0, 0]);
    assert_eq!(counts(&picks(&balancer, &zeros, 9), 3), vec![3, 3, 3]);
}

#[test]
fn weighted_round_robin_is_smooth_and_exact_per_cycle() {
    let weights = [5, 1, 1];
    let loads = loads(3);
    let candidates = all(&loads, &weights);
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &weights);
    let picked = picks(&balancer, &candidates, 70);
    // nginx's sequence for 5, 1, 1.
    assert_eq!(&picked[..7], &[0, 0, 1, 0, 2, 0, 0]);
    for cycle in picked.chunks(7) {
        assert_eq!(cycle, &picked[..7]);
    }

    let weights = [3, 1];
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &weights);
    let candidates = all(&loads[..2], &weights);
    assert_eq!(
        picks(&balancer, &candidates, 4),
        vec![0, 0, 1, 0],
        "not AAAB"
    );
}

#[test]
fn weighted_round_robin_counts_match_weights() {
    let weights = [4, 3, 2, 1, 7];
    let loads = loads(5);
    let candidates = all(&loads, &weights);
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &weights);
    let picked = picks(&balancer, &candidates, 17 * 20);
    for cycle in picked.chunks(17) {
        assert_eq!(counts(cycle, 5), vec![4, 3, 2, 1, 7], "{cycle:?}");
        // Interleaved: node 4 (7 of 17) never runs more than twice.
        assert!(!cycle.windows(3).any(|w| w == [4, 4, 4]), "{cycle:?}");
    }
}

#[test]
fn weighted_round_robin_uses_candidate_weights() {
    let loads = loads(3);
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &[1, 1, 1]);
    let candidates = all(&loads, &[2, 1, 1]);
    assert_eq!(
        counts(&picks(&balancer, &candidates, 40), 3),
        vec![20, 10, 10]
    );
}

#[test]
fn weighted_round_robin_weight_zero() {
    let loads = loads(3);
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &[2, 0, 1]);
    let candidates = all(&loads, &[2, 0, 1]);
    assert_eq!(
        counts(&picks(&balancer, &candidates, 30), 3),
        vec![20, 0, 10]
    );
    let zeros = all(&loads, &[0, 0, 0]);
    assert_eq!(counts(&picks(&balancer, &zeros, 30), 3), vec![10, 10, 10]);
}

#[test]
fn weighted_round_robin_survives_a_changing_candidate_set() {
    let weights = [5, 1, 1, 3];
    let loads = loads(4);
    let full = all(&loads, &weights);
    let sets: [&[usize]; 6] = [&[0, 1, 2, 3], &[1, 2, 3], &[0, 1], &[2], &[0, 3], &[1, 3]];
    let balancer = Balancer::new(Policy::WeightedRoundRobin, &weights);
    let mut picked = [0usize; 4];
    for round in 0..6000 {
        // A different set at every pick, in an irregular order.
        let set = only(&full, sets[(round * 7 + round / 6) % sets.len()]);
        let index = balancer.pick(&set, CLIENT).expect("a candidate");
        assert!(set.iter().any(|c| c.index == index));
        picked[index] += 1;
    }
    assert!(picked.iter().all(|&n| n > 300), "{picked:?}");

    // Back to a stable set: exact proportions again once it settles.
    picks(&balancer, &full, 100);
    let settled = picks(&balancer, &full, 10 * 10);
    let settled = counts(&settled, 4);
    for (count, weight) in settled.iter().zip(weights) {
        assert!(count.abs_diff(weight as usize * 10) <= 1, "{settled:?}");
    }
}

#[test]
fn least_connections_picks_the_least_loaded() {
    let loads = loads(3);
    let candidates = all(&loads, &[1, 1, 1]);
    let balancer = Balancer::new(Policy::LeastConnections, &[1, 1, 1]);
    for (load, active) in loads.iter().zip([3, 1, 2]) {
        set_active(load, active);
    }
    assert_eq!(picks(&balancer, &candidates, 5), vec![1; 5]);
    // Ties rotate.
    set_active(&loads[2], 1);
    assert_eq!(counts(&picks(&balancer, &candidates, 10), 3), vec![0, 5, 5]);
    idle(&loads);
    assert_eq!(counts(&picks(&balancer, &candidates, 9), 3), vec![3, 3, 3]);
}

fn idle(loads: &[NodeLoad]) {
    for load in loads {
        set_active(load, 0);
    }
}

#[test]
fn least_connections_weighs_active_by_weight() {
    let loads = loads(2);
    let candidates = all(&loads, &[2, 1]);
    let balancer = Balancer::new(Policy::LeastConnections, &[1, 1]);
    set_active(&loads[0], 3);
    set_active(&loads[1], 2);
    // 3/2 < 2/1.
    assert_eq!(balancer.pick(&candidates, CLIENT), Some(0));

    // Connections that never end pile up 2:1.
    idle(&loads);
    for _ in 0..300 {
        let index = balancer.pick(&candidates, CLIENT).expect("a candidate");
        loads[index].begin();
    }
    assert_eq!([loads[0].active(), loads[1].active()], [200, 100]);

    // Weight 0 is never picked, however idle.
    let drained = all(&loads, &[0, 1]);
    assert_eq!(picks(&balancer, &drained, 3), vec![1; 3]);
}

#[test]
fn least_response_time_prefers_fast_then_unmeasured() {
    let loads = loads(4);
    let candidates = all(&loads, &[1, 1, 1, 1]);
    let balancer = Balancer::new(Policy::LeastResponseTime, &[1, 1, 1, 1]);
    // Nothing measured: all tie, and rotate.
    assert_eq!(
        counts(&picks(&balancer, &candidates, 8), 4),
        vec![2, 2, 2, 2]
    );

    for (load, millis) in loads.iter().zip([10, 5, 20]) {
        load.observe(Duration::from_millis(millis));
    }
    // Node 3 is not measured yet, so it goes first.
    assert_eq!(balancer.pick(&candidates, CLIENT), Some(3));
    // Among the unmeasured, the least busy.
    let unmeasured = NodeLoad::default();
    let mut with_busy = candidates.clone();
    with_busy.push(Candidate {
        index: 4,
        weight: 1,
        load: &unmeasured,
    });
    set_active(&loads[3], 2);
    assert_eq!(balancer.pick(&with_busy, CLIENT), Some(4));

    loads[3].observe(Duration::from_millis(50));
    assert_eq!(picks(&balancer, &candidates, 3), vec![1; 3]);
    // 5 ms * (3 + 1) = 20 > 10 ms * (0 + 1).
    set_active(&loads[1], 3);
    assert_eq!(balancer.pick(&candidates, CLIENT), Some(0));
    // 10 ms * 2 = 5 ms * 4 (< 20 ms * 2): a tie, which rotates.
    set_active(&loads[0], 1);
    set_active(&loads[2], 1);
    assert_eq!(
        counts(&picks(&balancer, &candidates, 4), 4),
        vec![2, 2, 0, 0]
    );
}

#[test]
fn ip_hash_keeps_a_client_on_its_node() {
    let weights = [1, 1, 1];
    let loads = loads(3);
    let candidates = all(&loads, &weights);
    let balancer = Balancer::new(Policy::IpHash, &weights);
    let again = Balancer::new(Policy::IpHash, &weights);
    for client in clients() {
        let node = balancer.pick(&candidates, client);
        assert!(node.is_some());
        assert_eq!(balancer.pick(&candidates, client), node);
        assert_eq!(again.pick(&candidates, client), node, "deterministic");
    }
    // An IPv4-mapped address is its IPv4 address.
    for client in v4_clients(100) {
        let IpAddr::V4(v4) = client else { continue };
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            balancer.pick(&candidates, mapped),
            balancer.pick(&candidates, client)
        );
    }
}

#[test]
fn ip_hash_spreads_clients_evenly() {
    let weights = [1, 1, 1];
    let loads = loads(3);
    let candidates = all(&loads, &weights);
    let balancer = Balancer::new(Policy::IpHash, &weights);
    for family in [
        v4_clients(1000).collect::<Vec<_>>(),
        v6_clients(1000).collect(),
    ] {
        let picked: Vec<usize> = family
            .iter()
            .filter_map(|&client| balancer.pick(&candidates, client))
            .collect();
        for share in counts(&picked, 3) {
            assert!((200..=460).contains(&share), "{:?}", counts(&picked, 3));
        }
    }
}

#[test]
fn ip_hash_removing_a_node_moves_only_its_clients() {
    let weights = [1, 1, 1];
    let loads = loads(3);
    let candidates = all(&loads, &weights);
    let balancer = Balancer::new(Policy::IpHash, &weights);
    for removed in 0..3 {
        let rest: Vec<usize> = (0..3).filter(|&i| i != removed).collect();
        let fewer = only(&candidates, &rest);
        let mut moved = 0;
        for client in clients() {
            let before = balancer.pick(&candidates, client).expect("a node");
            let after = balancer.pick(&fewer, client).expect("a node");
            assert_ne!(after, removed);
            if before == removed {
                moved += 1;
            } else {
                assert_eq!(after, before, "{client} moved off node {before}");
            }
        }
        assert!(moved > 0);
    }
}

#[test]
fn ip_hash_follows_ring_weights_and_skips_weight_zero() {
    let loads = loads(3);
    let balancer = Balancer::new(Policy::IpHash, &[2, 1, 1]);
    let candidates = all(&loads, &[2, 1, 1]);
    let clients = clients();
    let picked: Vec<usize> = clients
        .iter()
        .filter_map(|&client| balancer.pick(&candidates, client))
        .collect();
    let shares = counts(&picked, 3);
    assert!((800..=1200).contains(&shares[0]), "{shares:?}");

    let drained = all(&loads, &[2, 0, 1]);
    for &client in &clients {
        assert_ne!(balancer.pick(&drained, client), Some(1));
    }
    let zeros = all(&loads, &[0, 0, 0]);
    let picked: Vec<usize> = clients
        .iter()
        .filter_map(|&client| balancer.pick(&zeros, client))
        .collect();
    assert!(counts(&picked, 3).iter().all(|&n| n > 300));
}

#[test]
fn out_of_range_indices_do_not_panic() {
    let loads = loads(3);
    let strays = [
        Candidate {
            index: 7,
            weight: 1,
            load: &loads[0],
        },
        Candidate {
            index: usize::MAX,
            weight: 1,
            load: &loads[1],
        },
    ];
    let mut mixed = strays.to_vec();
    mixed.push(Candidate {
        index: 1,
        weight: 1,
        load: &loads[2],
    });
    for policy in Policy::ALL {
        let balancer = Balancer::new(policy, &[1, 1]);
        for _ in 0..10 {
            let index = balancer.pick(&strays, CLIENT).expect("a candidate");
            assert!(index == 7 || index == usize::MAX);
            let index = balancer.pick(&mixed, CLIENT).expect("a candidate");
            assert!([7, usize::MAX, 1].contains(&index));
        }
    }
    // Where per-node state exists, the in-range node is preferred.
    for policy in [Policy::WeightedRoundRobin, Policy::IpHash] {
        let balancer = Balancer::new(policy, &[1, 1]);
        assert_eq!(picks(&balancer, &mixed, 5), vec![1; 5], "{policy}");
    }
}

#[test]
fn a_million_picks_stay_among_the_candidates() {
    let weights = [1, 2, 3, 1, 1, 2, 0, 4];
    let loads = loads(8);
    for (i, load) in loads.iter().enumerate() {
        set_active(load, (i as u32 * 3) % 5);
        if i % 3 != 0 {
            load.observe(Duration::from_micros(100 * (i as u64 + 1)));
        }
    }
    let candidates = all(&loads, &weights);
    let clients = clients();
    let mut picked = [0usize; 8];
    let balancers: Vec<Balancer> = Policy::ALL
        .into_iter()
        .map(|policy| Balancer::new(policy, &weights))
        .collect();
    for i in 0..1_000_000 {
        let balancer = &balancers[i % balancers.len()];
        let client = clients[i % clients.len()];
        let index = balancer.pick(&candidates, client).expect("a candidate");
        assert!(index < 8 && weights[index] > 0, "{index}");
        picked[index] += 1;
    }
    assert_eq!(picked[6], 0);
    assert_eq!(picked.iter().sum::<usize>(), 1_000_000);
}
