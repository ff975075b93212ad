//! A session's own writes, as read-your-writes needs to know them.

use crate::topology::Lsn;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastWrite {
    pub at: Instant,
    /// The primary's WAL insert position after the write committed, and
    /// the topology epoch it was taken in; `None` if it could not be read.
    pub lsn: Option<(Lsn, u64)>,
}

#[derive(Debug, Default)]
pub struct SessionWrites {
    last: Option<LastWrite>,
}

impl SessionWrites {
    pub fn last(&self) -> Option<&LastWrite> {
        self.last.as_ref()
    }

    pub fn record(&mut self, lsn: Option<(Lsn, u64)>) {
        self.last = Some(LastWrite {
            at: Instant::now(),
            lsn,
        });
    }
}
