//! Leases: what a server connection checked out for one request may run
//! besides it, and how the relay leaves a request that belongs elsewhere
//! (see `Relay::check_lease`). Only read and write leases look at what the
//! client pipelines; any other lease runs everything, at the price of one
//! comparison per message.

use super::{Progress, Relay, RelayEnd};
use crate::protocol::extended;
use crate::protocol::frontend::{self, Frame, BIND, PARSE};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// What the server connection may run besides the request it was checked
/// out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Anything the client sends: the primary, or a node the client chose
    /// (a hint, `route`, a read-only transaction).
    Any,
    /// An autocommit read on a replica: only reads may follow on it. A
    /// request that may write ends the lease and is routed on its own.
    Reads,
    /// An autocommit write on the primary: a request pipelined behind it
    /// that only reads is routed on its own (it may belong on a replica);
    /// anything else runs here.
    Writes,
}

/// How far a read lease has got with a statement that must run elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// Everything framed so far may run here.
    No,
    /// The next request must run elsewhere: framing stops, and the relay
    /// ends when the server is idle.
    BeforeRequest,
    /// The next statement, inside a batch, must run elsewhere: the batch
    /// so far gets a Sync of pgrouter's once everything framed is written.
    CloseBatch,
    /// pgrouter's Sync is sent: its ReadyForQuery, the server's last
    /// reply, is cut.
    CutReady,
}

/// See `Relay::next_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextRequest {
    /// Whole (through its Sync, or a Flush the client may wait at), and
    /// it only reads.
    Reads,
    /// Not whole yet; what has arrived only reads.
    Incomplete,
    /// A statement of it may write.
    MayWrite,
}

/// A ReadyForQuery: tag, length 5, status.
pub(super) const READY_FOR_QUERY_LEN: usize = 6;

impl<C: AsyncRead + AsyncWrite + Unpin> Relay<'_, C> {
    /// The server answered pgrouter's Sync: once everything before its
    /// ReadyForQuery has reached the client, it is cut, and the batch's
    /// rest is left for the session to route.
    pub(super) fn cut_ready_for_query(&mut self, p: &mut Progress) -> Option<RelayEnd> {
        let replies = &mut self.server.read_buf;
        let tail = replies.len().checked_sub(READY_FOR_QUERY_LEN)?;
        if p.written < tail {
            return None;
        }
        if replies[tail..tail + 5] != [b'Z', 0, 0, 0, 5] {
            let error = io::Error::new(
                io::ErrorKind::InvalidData,
                "the server's last reply to a Sync was not ReadyForQuery",
            );
            return Some(RelayEnd::ServerFailed(error));
        }
        replies.clear();
        p.written = 0;
        p.split = Split::No;
        Some(RelayEnd::BatchMoved {
            failed: self.server.state.last_batch_failed(),
        })
    }

    /// Whether a message may run on this lease. On a read lease, a request
    /// that may write (all of it, as far as it has arrived) is left for the
    /// session to route at a request boundary; inside a batch, the
    /// statement that may write is. Only read leases pay for this look.
    pub(super) fn check_lease(&mut self, frame: Frame, p: &mut Progress) -> bool {
        let state = &self.server.state;
        if self.pinned.is_some() || (state.at_rest() && !state.is_idle()) {
            // A pinned client keeps its connection for everything; inside a
            // transaction every request belongs here, whatever it does, as
            // on PostgreSQL.
            p.first_request = false;
            return true;
        }
        match self.lease {
            Lease::Any => return true,
            Lease::Writes => {
                if self.server.state.in_batch() || std::mem::take(&mut p.first_request) {
                    return true;
                }
                if self.next_request(p) == NextRequest::Reads {
                    p.split = Split::BeforeRequest;
                    return false;
                }
                return true;
            }
            Lease::Reads => {}
        }
        if !self.server.state.in_batch() {
            // A new request: the session routed the first one as a whole,
            // so its first statement reads.
            if std::mem::take(&mut p.first_request) {
                if frame.tag == PARSE {
                    let message = &self.client_in[p.framed..p.framed + frame.len];
                    if extended::statement_name(message) == Some("") {
                        p.unnamed_reads = true;
                    }
                }
                return true;
            }
            match self.next_request(p) {
                NextRequest::MayWrite => {
                    p.split = Split::BeforeRequest;
                    return false;
                }
                // Wait for the rest, so that a batch whose write is on its
                // way runs whole on the primary (the session waits alike).
                NextRequest::Incomplete
                    if self.client_in.len() - p.framed
                        < crate::session::serve::REQUEST_LOOKAHEAD =>
                {
                    return false;
                }
                _ => {}
            }
        }
        p.first_request = false;
        let message = &self.client_in[p.framed..p.framed + frame.len];
        let mut unnamed = p.unnamed_reads;
        if self.message_reads(message, &mut unnamed) {
            p.unnamed_reads = unnamed;
            return true;
        }
        p.split = if self.server.state.in_batch() {
            Split::CloseBatch
        } else {
            Split::BeforeRequest
        };
        false
    }

    /// What the request at the front of the unframed bytes does, as far
    /// as it has arrived (a Flush ends it: the client may wait there).
    fn next_request(&self, p: &Progress) -> NextRequest {
        let mut unnamed = p.unnamed_reads;
        let mut rest = &self.client_in[p.framed..];
        while let Ok(Some(next)) = frontend::frame(rest, self.max_message) {
            if !self.message_reads(&rest[..next.len], &mut unnamed) {
                return NextRequest::MayWrite;
            }
            if matches!(next.tag, frontend::SYNC | frontend::QUERY | frontend::FLUSH) {
                return NextRequest::Reads;
            }
            rest = &rest[next.len..];
        }
        NextRequest::Incomplete
    }

    /// Whether one client message only reads. `unnamed`: whether the
    /// unnamed statement reads, updated by a Parse of it.
    pub(super) fn message_reads(&self, message: &[u8], unnamed: &mut bool) -> bool {
        let reads = |class: Option<&Arc<crate::router::classify::Classification>>| {
            class.is_some_and(|class| self.router.reads_known(class))
        };
        match message.first().copied() {
            Some(frontend::QUERY) => {
                let text = frontend::query_bytes(message).unwrap_or_default();
                reads(self.router.classify_bytes(text).as_ref())
            }
            Some(PARSE) => {
                let text = frontend::query_bytes(message).unwrap_or_default();
                let verdict = reads(self.router.classify_bytes(text).as_ref());
                if extended::statement_name(message) == Some("") {
                    *unnamed = verdict;
                }
                verdict
            }
            Some(BIND) => match extended::statement_name(message) {
                Some("") => *unnamed,
                Some(name) if self.rename_statements => {
                    reads(self.statements.get(name).and_then(|s| s.class.as_ref()))
                }
                _ => false,
            },
            Some(frontend::FUNCTION_CALL) => false,
            _ => true,
        }
    }
}
