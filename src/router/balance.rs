//! Replica load balancing: of the nodes that may serve a read right now,
//! which one gets it.
//!
//! A [`Balancer`] serves one node set and is shared by every session; a
//! pick takes `&self`, allocates nothing and costs O(candidates) (IpHash
//! adds a binary search over its ring). The caller passes the nodes that
//! may serve the read (healthy, not lagging; the primary too when it takes
//! a share of reads) as [`Candidate`]s, in its node order; a pick returns
//! the chosen candidate's `index`.
//!
//! Weights, in every policy: a candidate of weight 0 is never picked while
//! some candidate has a positive weight (that is how a node is drained);
//! when every candidate has weight 0 they count as equal. Beyond that:
//!
//! * `round_robin` and `least_response_time` ignore weights;
//! * `weighted_round_robin` and `least_connections` use each
//!   [`Candidate::weight`], so a weight is live at every pick;
//! * `ip_hash` sizes its hash ring by the weights given to
//!   [`Balancer::new`], since the ring is built once.
//!
//! Candidate indices are expected to be below the node count given to
//! [`Balancer::new`]. The per-node state of `weighted_round_robin` and
//! `ip_hash` covers only those nodes: out-of-range candidates are picked
//! (round robin) only when no in-range candidate may be.

use parking_lot::Mutex;
use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// How a [`Balancer`] picks among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Rotate through the candidates.
    RoundRobin,
    /// Smooth weighted round robin (nginx's): over `sum(weights)`
    /// consecutive picks of a stable candidate set each candidate is picked
    /// exactly `weight` times, interleaved.
    WeightedRoundRobin,
    /// Fewest checked-out connections relative to weight (`active / weight`);
    /// ties rotate.
    LeastConnections,
    /// Lowest `average latency * (active + 1)`; see [`Balancer`].
    LeastResponseTime,
    /// Consistent hashing on the client address: a client keeps its node
    /// while that node is a candidate.
    IpHash,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastConnections,
        Policy::LeastResponseTime,
        Policy::IpHash,
    ];

    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastConnections => "least_connections",
            Policy::LeastResponseTime => "least_response_time",
            Policy::IpHash => "ip_hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is none of [`Policy::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown load balancing policy {0:?}: use round_robin, weighted_round_robin, \
     least_connections, least_response_time or ip_hash"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == text)
            .ok_or_else(|| UnknownPolicy(text.to_owned()))
    }
}

/// The bit pattern of "no latency observed yet" (a NaN that the moving
/// average, always finite, never produces).
const UNOBSERVED: u64 = u64::MAX;

/// Weight of the newest sample in the latency moving average.
const LATENCY_ALPHA: f64 = 0.2;

/// Live, lock-free statistics of one node, which sessions update and the
/// balancer reads. One per node, shared by all of its pools.
#[derive(Debug)]
pub struct NodeLoad {
    active: AtomicU32,
    /// Exponentially weighted moving average of latency, in microseconds,
    /// as `f64` bits; [`UNOBSERVED`] until the first sample.
    latency_micros: AtomicU64,
}

impl Default for NodeLoad {
    fn default() -> NodeLoad {
        NodeLoad {
            active: AtomicU32::new(0),
            latency_micros: AtomicU64::new(UNOBSERVED),
        }
    }
}

impl NodeLoad {
    /// A server connection on this node was checked out.
    pub fn begin(&self) {
        let _ = self
            .active
            .fetch_update(Relaxed, Relaxed, |n| n.checked_add(1));
    }

    /// A checkout [`begin`](Self::begin) counted ended. Never goes below 0.
    pub fn end(&self) {
        let _ = self
            .active
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Server connections currently checked out on this node (all pools).
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Records one observed query or transaction latency into the moving
    /// average (`avg += 0.2 * (sample - avg)`; the first sample sets it).
    pub fn observe(&self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        let _ = self.latency_micros.fetch_update(Relaxed, Relaxed, |bits| {
            let average = if bits == UNOBSERVED {
                sample
            } else {
                let old = f64::from_bits(bits);
                old + LATENCY_ALPHA * (sample - old)
            };
            Some(average.to_bits())
        });
    }

    /// The moving average of observed latencies; `None` until one is.
    pub fn average_latency(&self) -> Option<Duration> {
        self.latency_micros()
            .map(|micros| Duration::try_from_secs_f64(micros / 1e6).unwrap_or(Duration::MAX))
    }

    fn latency_micros(&self) -> Option<f64> {
        let bits = self.latency_micros.load(Relaxed);
        (bits != UNOBSERVED).then(|| f64::from_bits(bits))
    }
}

/// One node that may serve the read.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The node's index in the caller's node list (stable across picks).
    pub index: usize,
    /// The node's weight (see the module docs for which policies use it).
    pub weight: u32,
    pub load: &'a NodeLoad,
}

/// Picks a node for each read; one per node set, shared by sessions.
///
/// `least_response_time` scores a node `average latency * (active + 1)`:
/// latency alone would send everything to the fastest node, whose average
/// then goes stale no matter how loaded it gets, while the others' never
/// update. Nodes with no observation yet come first (fewest active first),
/// so that they get measured.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    node_count: usize,
    /// Round-robin position; also breaks ties in the least-* policies.
    next: AtomicUsize,
    /// Smooth WRR state per node (empty for other policies).
    wrr: Mutex<WrrState>,
    /// Hash ring sorted by point (empty unless the policy is IpHash).
    ring: Box<[RingPoint]>,
}

#[derive(Debug, Default)]
struct WrrState {
    /// Number of picks so far.
    pick: u64,
    slots: Vec<WrrSlot>,
}

#[derive(Debug, Clone, Copy, Default)]
struct WrrSlot {
    /// nginx's `current_weight`.
    current: i64,
    /// The pick at which the node was last a candidate.
    seen: u64,
}

#[derive(Debug, Clone, Copy)]
struct RingPoint {
    hash: u64,
    node: usize,
}

/// Ring points of a node of average weight, and the cap relative to it.
const RING_POINTS: u128 = 100;
const RING_POINTS_MAX: u128 = 10 * RING_POINTS;

impl Balancer {
    /// A balancer for the nodes whose weights are `weights`, in node order.
    pub fn new(policy: Policy, weights: &[u32]) -> Balancer {
        let slots = match policy {
            Policy::WeightedRoundRobin => vec![WrrSlot::default(); weights.len()],
            _ => Vec::new(),
        };
        let ring = match policy {
            Policy::IpHash => build_ring(weights),
            _ => Box::default(),
        };
        Balancer {
            policy,
            node_count: weights.len(),
            next: AtomicUsize::new(0),
            wrr: Mutex::new(WrrState { pick: 0, slots }),
            ring,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks one of `candidates` (any subset of the nodes, in node order)
    /// for a read by `client`, and returns its `index`; `None` only if
    /// `candidates` is empty.
    pub fn pick(&self, candidates: &[Candidate<'_>], client: IpAddr) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let weights = Weights::of(candidates);
        match self.policy {
            Policy::RoundRobin => self.rotate(candidates, |c| weights.eligible(c)),
            Policy::WeightedRoundRobin => self.weighted_round_robin(candidates, weights),
            Policy::LeastConnections => self.least_by(candidates, weights, |a, b| {
                let ratio = |x: &Candidate<'_>, y: &Candidate<'_>| {
                    u64::from(x.load.active()) * u64::from(weights.of_node(y))
                };
                // a.active / a.weight against b's, without dividing.
                ratio(a, b).cmp(&ratio(b, a))
            }),
            Policy::LeastResponseTime => self.least_by(candidates, weights, |a, b| {
                let (a_measured, a_score) = response_score(a.load);
                let (b_measured, b_score) = response_score(b.load);
                a_measured
                    .cmp(&b_measured)
                    .then(a_score.total_cmp(&b_score))
            }),
            Policy::IpHash => self.ip_hash(candidates, weights, client),
        }
    }

    /// The next candidate in turn among those `keep` accepts.
    fn rotate(
        &self,
        candidates: &[Candidate<'_>],
        keep: impl Fn(&Candidate<'_>) -> bool,
    ) -> Option<usize> {
        let count = candidates.iter().filter(|c| keep(c)).count();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Relaxed) % count;
        candidates
            .iter()
            .filter(|c| keep(c))
            .nth(turn)
            .map(|c| c.index)
    }

    /// The eligible candidate that `cmp` orders first; ties rotate.
    fn least_by(
        &self,
        candidates: &[Candidate<'_>],
        weights: Weights,
        cmp: impl Fn(&Candidate<'_>, &Candidate<'_>) -> Ordering,
    ) -> Option<usize> {
        let mut best: Option<&Candidate<'_>> = None;
        let mut ties = 0usize;
        for candidate in candidates.iter().filter(|c| weights.eligible(c)) {
            match best.map(|best| cmp(candidate, best)) {
                None | Some(Ordering::Less) => {
                    best = Some(candidate);
                    ties = 1;
                }
                Some(Ordering::Equal) => ties += 1,
                Some(Ordering::Greater) => {}
            }
        }
        let best = best?;
        if ties <= 1 {
            return Some(best.index);
        }
        let turn = self.next.fetch_add(1, Relaxed) % ties;
        // The counters may have moved since the first pass; then the tie
        // in turn may be gone, and the first pass's best stands.
        let tied = candidates
            .iter()
            .filter(|c| weights.eligible(c) && cmp(c, best) == Ordering::Equal)
            .nth(turn);
        Some(tied.map_or(best.index, |c| c.index))
    }

    fn weighted_round_robin(
        &self,
        candidates: &[Candidate<'_>],
        weights: Weights,
    ) -> Option<usize> {
        let in_range = |c: &&Candidate<'_>| weights.eligible(c) && c.index < self.node_count;
        let total = candidates.iter().filter(in_range).fold(0i64, |sum, c| {
            sum.saturating_add(i64::from(weights.of_node(c)))
        });
        if total == 0 {
            return self.rotate(candidates, |c| weights.eligible(c));
        }
        let mut state = self.wrr.lock();
        let WrrState { pick, slots } = &mut *state;
        let previous = *pick;
        *pick = previous.wrapping_add(1);
        let mut best: Option<(usize, i64)> = None;
        for candidate in candidates.iter().filter(in_range) {
            let Some(slot) = slots.get_mut(candidate.index) else {
                continue;
            };
            if slot.seen != previous {
                // Back after an absence: a weight gathered against another
                // candidate set must neither starve it nor let it hog.
                slot.current = slot.current.clamp(-total, total);
            }
            slot.seen = *pick;
            slot.current = slot
                .current
                .saturating_add(i64::from(weights.of_node(candidate)));
            if best.is_none_or(|(_, current)| slot.current > current) {
                best = Some((candidate.index, slot.current));
            }
        }
        let (index, _) = best?;
        if let Some(slot) = slots.get_mut(index) {
            slot.current = slot.current.saturating_sub(total);
        }
        Some(index)
    }

    fn ip_hash(
        &self,
        candidates: &[Candidate<'_>],
        weights: Weights,
        client: IpAddr,
    ) -> Option<usize> {
        let on_ring = |c: &Candidate<'_>| weights.eligible(c) && c.index < self.node_count;
        if !candidates.iter().any(on_ring) {
            return self.rotate(candidates, |c| weights.eligible(c));
        }
        let hash = client_hash(client);
        let start = self.ring.partition_point(|p| p.hash < hash);
        let Some((before, after)) = self.ring.split_at_checked(start) else {
            return self.rotate(candidates, on_ring);
        };
        // Every in-range node has points, so this ends at an eligible one.
        after
            .iter()
            .chain(before)
            .find(|p| candidates.iter().any(|c| c.index == p.node && on_ring(c)))
            .map(|p| p.node)
            .or_else(|| self.rotate(candidates, on_ring))
    }
}

/// Whether the candidates' weights all are 0 (then they count as equal).
#[derive(Clone, Copy)]
struct Weights {
    all_zero: bool,
}

impl Weights {
    fn of(candidates: &[Candidate<'_>]) -> Weights {
        Weights {
            all_zero: candidates.iter().all(|c| c.weight == 0),
        }
    }

    /// The weight a pick goes by; 0 means not eligible.
    fn of_node(self, candidate: &Candidate<'_>) -> u32 {
        if self.all_zero {
            1
        } else {
            candidate.weight
        }
    }

    fn eligible(self, candidate: &Candidate<'_>) -> bool {
        self.all_zero || candidate.weight > 0
    }
}

/// `(measured, score)`, least first: unmeasured nodes by active count,
/// then measured ones by `average latency * (active + 1)`.
fn response_score(load: &NodeLoad) -> (bool, f64) {
    let active = f64::from(load.active());
    match load.latency_micros() {
        None => (false, active),
        Some(micros) => (true, micros * (active + 1.0)),
    }
}

/// Points per node proportional to its weight (a node of average weight
/// gets [`RING_POINTS`]), at least 1 and at most [`RING_POINTS_MAX`]. A node
/// of weight 0 gets the average: it is eligible only when all candidates
/// weigh 0, and then they are equal.
fn build_ring(weights: &[u32]) -> Box<[RingPoint]> {
    let (sum, nonzero) = weights
        .iter()
        .filter(|w| **w > 0)
        .fold((0u128, 0u128), |(sum, count), w| {
            (sum + u128::from(*w), count + 1)
        });
    let mut ring = Vec::new();
    for (node, &weight) in weights.iter().enumerate() {
        let points = if weight == 0 || sum == 0 {
            RING_POINTS
        } else {
            ((u128::from(weight) * nonzero * RING_POINTS + sum / 2) / sum).clamp(1, RING_POINTS_MAX)
        };
        let points = u32::try_from(points).unwrap_or(1);
        ring.extend((0..points).map(|point| RingPoint {
            hash: point_hash(node, point),
            node,
        }));
    }
    ring.sort_unstable_by_key(|p| (p.hash, p.node));
    ring.into_boxed_slice()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, continuing from `hash`: stable across builds and platforms.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's finalizer, spreading FNV's output over all 64 bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn point_hash(node: usize, point: u32) -> u64 {
    let h = fnv1a(FNV_OFFSET, b"node");
    let h = fnv1a(h, &(node as u64).to_le_bytes());
    mix(fnv1a(h, &point.to_le_bytes()))
}

/// An IPv4-mapped IPv6 address hashes as its IPv4 address, so a client
/// keeps its node whichever listener it comes through.
fn client_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => mix(fnv1a(fnv1a(FNV_OFFSET, b"v4"), &v4.octets())),
        IpAddr::V6(v6) => mix(fnv1a(fnv1a(FNV_OFFSET, b"v6"), &v6.octets())),
    }
}
