//! A session's own writes, as read-your-writes needs to know them.

use crate::topology::Lsn;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastWrite {
    pub at: Instant,
    /// A reading of the primary's WAL insert position taken after the
    /// write committed, and the topology epoch it was taken in; `None`
    /// until the monitor has made one.
    pub lsn: Option<(Lsn, u64)>,
}

#[derive(Debug, Default, Clone)]
pub struct SessionWrites {
    last: Option<LastWrite>,
}

impl SessionWrites {
    pub fn last(&self) -> Option<&LastWrite> {
        self.last.as_ref()
    }

    /// A transaction that may have written has just committed.
    pub fn record(&mut self) {
        self.last = Some(LastWrite {
            at: Instant::now(),
            lsn: None,
        });
    }

    /// Takes the first insert-position reading made after the last write
    /// as that write's position.
    pub fn resolve(&mut self, reading: Option<crate::topology::InsertPosition>) {
        if let (Some(last), Some(reading)) = (self.last.as_mut(), reading) {
            if last.lsn.is_none() && reading.asked_at > last.at {
                last.lsn = Some((reading.lsn, reading.epoch));
            }
        }
    }
}
