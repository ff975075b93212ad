//! Recent positions of the primary, to turn a replica's replayed position
//! into a lag in time: how long ago the primary was where the replica is.
//! Measured this way, an idle primary never makes a caught-up replica look
//! stale, and a replica that just fell behind is not charged for the time
//! since the last commit it replayed.

use super::Lsn;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;

/// Enough samples for a minute at the fastest monitor interval we allow
/// by default (100 ms); older lag is reported as "at least this old".
const KEEP: usize = 600;

#[derive(Default)]
pub struct PrimaryHistory {
    /// (time since start, the primary's position then), oldest first.
    samples: Mutex<VecDeque<(Duration, Lsn)>>,
}

impl PrimaryHistory {
    pub fn record(&self, at: Duration, lsn: Lsn) {
        let mut samples = self.samples.lock();
        if samples.back().is_some_and(|&(_, last)| last == lsn) {
            // Only advances are interesting: keep the first time a
            // position was seen.
            return;
        }
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back((at, lsn));
    }

    pub fn clear(&self) {
        self.samples.lock().clear();
    }

    /// How long ago the primary first went past `replayed`.
    pub fn lag_behind(&self, now: Duration, replayed: Lsn) -> Duration {
        let samples = self.samples.lock();
        let first_ahead = samples
            .iter()
            .find(|&&(_, lsn)| lsn > replayed)
            .or(samples.front());
        first_ahead.map_or(Duration::ZERO, |&(at, _)| now.saturating_sub(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn lag_is_time_since_the_primary_passed_the_replica() {
        let history = PrimaryHistory::default();
        history.record(secs(1), Lsn(100));
        history.record(secs(2), Lsn(100));
        history.record(secs(5), Lsn(200));
        history.record(secs(6), Lsn(300));
        // Replayed up to 100: the primary passed it at 5 s.
        assert_eq!(history.lag_behind(secs(7), Lsn(100)), secs(2));
        assert_eq!(history.lag_behind(secs(7), Lsn(250)), secs(1));
        // Behind every sample: at least as old as the oldest.
        assert_eq!(history.lag_behind(secs(7), Lsn(50)), secs(6));
    }
}
