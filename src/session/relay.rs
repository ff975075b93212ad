//! The hot path: one client and the server connection it holds, relayed in
//! both directions by the client's own task.
//!
//! Client bytes are framed (a message goes to the server only whole, and
//! its tag updates the server's state); server bytes go back to the client
//! as they arrive and are only scanned. Reads and writes of both sockets are
//! polled together, so neither side's full socket buffer can stall the
//! other (a client pipelining queries while the server streams rows).
//! Buffers are reused: nothing is allocated per message.
//!
//! Two slow paths hold replies back instead of streaming them: `swallow`
//! cuts out the replies to requests pgrouter put in front of the client's
//! (a deferred BEGIN), and `guard` keeps a replica's answer until it is
//! known not to be a read-only violation, copying what the client sent so
//! that the session can run it elsewhere.

use super::inline_parse::{InlineParse, Settled};
use super::pin;
use crate::prepared::{ClientStatements, Registry, Statement};
use crate::protocol::answer::{judge, past_ready_for_query, Verdict};
use crate::protocol::backend::STATUS_IDLE;
use crate::protocol::extended;
use crate::protocol::frontend::{self, BIND, CLOSE, DESCRIBE, PARSE, TERMINATE};
use crate::protocol::scan::Reply;
use crate::protocol::ProtocolError;
use crate::router::{Router, Target};
use crate::server::ServerConn;
use crate::stats::PoolStats;
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

/// Framed client bytes beyond which we stop reading from the client until
/// the server has taken some: bounds memory per client.
const CLIENT_READ_AHEAD: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// A guarded request larger than this is not kept for a retry, and held
/// replies past it are delivered (the request is then not retried).
const GUARD_LIMIT: usize = 1024 * 1024;
/// Room made at a time for a message still arriving: memory grows with
/// the bytes that come, not with the length a client declares.
const MAX_RESERVATION: usize = 256 * 1024;

/// How much room to make for the rest of a message of `declared` bytes of
/// which `have` have arrived.
pub(super) fn reservation(declared: usize, have: usize) -> usize {
    declared
        .saturating_sub(have)
        .clamp(READ_CHUNK, MAX_RESERVATION)
}

#[derive(Debug)]
pub enum RelayEnd {
    /// The server finished the client's transaction and may be released.
    Released,
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client broke the protocol.
    ClientProtocol(ProtocolError),
    /// The client sat inside a transaction, sending nothing, for
    /// `idle_transaction_timeout`.
    IdleInTransaction,
    /// The server's socket closed or failed, or it broke the protocol.
    ServerFailed(io::Error),
    /// Guarded: the server failed before any of its answer reached the
    /// client, so the request may run elsewhere.
    FailedBeforeAnswer(io::Error),
    /// Guarded: the answer was ErrorResponse 25006 and nothing reached the
    /// client; the request belongs on the primary.
    ReadOnlyViolation,
    /// The client uses a prepared statement this server connection lacks;
    /// everything before it has been answered.
    Prepare(Arc<Statement>),
    /// A read lease met a statement that must run elsewhere in the middle
    /// of a batch: the part before it was ended with a Sync of pgrouter's
    /// (its ReadyForQuery cut), the server is idle, and the rest of the
    /// batch waits in the client's buffer. `failed`: that part had an
    /// error, so PostgreSQL would skip the rest up to the client's Sync.
    BatchMoved { failed: bool },
}

/// The name a client's Close of a statement is turned into: closing a
/// statement that does not exist is not an error, and the server's own
/// statements stay for other clients.
const CLOSED_STATEMENT: &str = "pgrouter_closed";

/// Generic over the client's stream: a TCP socket, a TLS stream over one,
/// or an in-memory pipe in tests.
pub struct Relay<'a, C> {
    pub client: &'a mut C,
    pub client_in: &'a mut BytesMut,
    pub server: &'a mut ServerConn,
    pub max_message: usize,
    /// Transaction mode: end the relay as soon as the server is idle.
    pub release_when_idle: bool,
    /// Set when a statement creates session state only this server
    /// connection holds: it is then never released.
    pub pinned: &'a mut Option<&'static str>,
    /// A SET the session replays on other connections: it does not pin.
    pub replayed: Option<&'a str>,
    /// Replies to cut before the client's: one per request pgrouter put in
    /// front of the client's bytes.
    pub swallow: u32,
    /// Hold replies until the answer is judged, and copy the client's
    /// bytes here meanwhile.
    pub guard: Option<&'a mut BytesMut>,
    /// The client's named statements, and what they are on servers.
    pub statements: &'a mut ClientStatements,
    pub registry: &'a Registry,
    pub router: &'a Router,
    /// Client messages rewritten for the server, waiting to be written.
    pub server_out: &'a mut BytesMut,
    /// The counters of the pool the server connection came from.
    pub stats: &'a PoolStats,
    /// Why the connection was chosen: counted by route.
    pub route: Target,
    /// Client bytes the session read before the relay started.
    pub received_before: u64,
    /// The first message is the Query the session routed, whose effect
    /// on the session it has already looked at.
    pub first_checked: bool,
    /// When the request began, if this is its first relay: the time its
    /// first query goes out, near enough.
    pub started: Option<Instant>,
    /// Transaction mode: client statement names map to pgrouter's; in
    /// session mode the client's names reach the server untouched.
    pub rename_statements: bool,
    pub lease: Lease,
    /// Set when a statement that may write is sent (a read lease sends
    /// none): read-your-writes must then start after this request.
    pub wrote: &'a mut bool,
    /// `idle_transaction_timeout`, when on.
    pub idle_in_transaction: Option<std::time::Duration>,
}

struct Progress {
    /// Bytes at the front of `client_in` framed and due to the server.
    framed: usize,
    /// Bytes of the server's read buffer already sent to the client.
    written: usize,
    terminated: bool,
    /// How far the held replies have been judged.
    judged: usize,
    /// A statement to prepare before the next client message can go.
    prepare: Option<Arc<Statement>>,
    /// The statement of the last Bind sent, which a stale-plan error is
    /// about.
    last_bound: Option<Arc<Statement>>,
    /// When the server, at rest, was sent the query now running.
    query_since: Option<Instant>,
    /// When the server, idle, was sent the transaction's first query.
    transaction_since: Option<Instant>,
    /// Bytes from the client and to it, not yet counted.
    received: u64,
    sent: u64,
    split: Split,
    /// A statement prepared inside the client's batch (see `InlineParse`).
    inline: InlineParse,
    /// pgrouter flushed the server to settle that one before another.
    inline_flushed: bool,
    /// On a read lease: the unnamed statement last parsed reads.
    unnamed_reads: bool,
    /// The request the session routed has not been looked at again.
    first_request: bool,
    /// Armed while the client idles inside a transaction (only with
    /// `idle_transaction_timeout` on).
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Relay<'_, C> {
    pub async fn run(mut self) -> RelayEnd {
        let mut progress = Progress {
            framed: 0,
            written: 0,
            terminated: false,
            judged: 0,
            prepare: None,
            last_bound: None,
            query_since: None,
            transaction_since: None,
            received: self.received_before,
            sent: 0,
            split: Split::No,
            inline: InlineParse::default(),
            inline_flushed: false,
            // Parsed before this lease, perhaps by another client.
            unnamed_reads: false,
            first_request: true,
            idle_timer: None,
        };
        let end = poll_fn(|cx| self.poll(cx, &mut progress)).await;
        self.count_bytes(&mut progress);
        end
    }

    fn count_bytes(&self, p: &mut Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        if p.received > 0 {
            self.stats.bytes_received.fetch_add(p.received, Relaxed);
            p.received = 0;
        }
        if p.sent > 0 {
            self.stats.bytes_sent.fetch_add(p.sent, Relaxed);
            p.sent = 0;
        }
    }

    /// After replies were read: a server back at rest ended a query, and
    /// a transaction when it is idle too.
    fn time_answers(&self, p: &mut Progress) {
        if !self.server.state.at_rest() {
            return;
        }
        let Some(since) = p.query_since.take() else {
            return;
        };
        let now = Instant::now();
        self.stats.record_query(now - since);
        if self.server.state.transaction_status() == STATUS_IDLE {
            if let Some(since) = p.transaction_since.take() {
                self.stats.record_transaction(now - since);
            }
        }
        self.count_bytes(p);
    }

    fn poll(&mut self, cx: &mut Context<'_>, p: &mut Progress) -> Poll<RelayEnd> {
        loop {
            let mut moved = false;

            if !p.terminated && p.prepare.is_none() {
                if let Err(error) = self.frame_client_messages(p) {
                    return Poll::Ready(RelayEnd::ClientProtocol(error));
                }
            }

            if !self.server_out.is_empty() {
                let server = Pin::new(&mut self.server.stream);
                match server.poll_write(cx, self.server_out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(RelayEnd::ServerFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.server_out.advance(n);
                        moved = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::ServerFailed(error)),
                    Poll::Pending => {}
                }
            } else if p.framed > 0 {
                let server = Pin::new(&mut self.server.stream);
                match server.poll_write(cx, &self.client_in[..p.framed]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(RelayEnd::ServerFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        if let Some(guard) = self.guard.as_deref_mut() {
                            guard.extend_from_slice(&self.client_in[..n]);
                            if guard.len() > GUARD_LIMIT {
                                self.guard = None;
                            }
                        }
                        self.client_in.advance(n);
                        p.framed -= n;
                        moved = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::ServerFailed(error)),
                    Poll::Pending => {}
                }
            }

            if let Some(end) = self.settle_held_replies(p) {
                return Poll::Ready(end);
            }
            let holding = self.swallow > 0 || self.guard.is_some();
            let replies = &mut self.server.read_buf;
            // While pgrouter's ReadyForQuery may be at the tail, it stays.
            let deliverable = match p.split {
                Split::CutReady => replies.len().saturating_sub(READY_FOR_QUERY_LEN),
                _ => p.inline.deliverable(replies.len()),
            };
            if !holding && p.written < deliverable {
                match Pin::new(&mut *self.client).poll_write(cx, &replies[p.written..deliverable]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(RelayEnd::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        p.written += n;
                        p.sent += n as u64;
                        moved = true;
                        if p.written == replies.len() {
                            replies.clear();
                            p.inline.advanced(p.written);
                            p.written = 0;
                        }
                    }
                    Poll::Pending => {}
                }
            }

            if p.framed == 0 && p.split == Split::CloseBatch {
                // Everything framed is on its way: the batch so far ends here.
                frontend::sync_message(self.server_out);
                self.server.state.on_client_message(frontend::SYNC);
                p.split = Split::CutReady;
                continue;
            }
            let all_sent = p.framed == 0 && self.server_out.is_empty();
            if all_sent && p.terminated {
                // The client wants nothing more, not even the replies to
                // what it sent (which, without a Sync, may never come):
                // the session cleans the connection up.
                return Poll::Ready(RelayEnd::ClientTerminated);
            }
            // A guard holds replies, but with none outstanding there is
            // nothing to hold: the statement can be prepared.
            let quiet = all_sent
                && self.server.read_buf.is_empty()
                && self.swallow == 0
                && !self.server.state.awaiting_ready();
            if quiet && p.prepare.is_some() {
                if let Some(statement) = p.prepare.take() {
                    return Poll::Ready(RelayEnd::Prepare(statement));
                }
            }
            if p.split == Split::CutReady && !holding && self.server.state.at_rest() {
                if let Some(end) = self.cut_ready_for_query(p) {
                    return Poll::Ready(end);
                }
            }
            if all_sent && self.server.read_buf.is_empty() && !holding {
                if p.split == Split::BeforeRequest && self.server.state.at_rest() {
                    if self.server.state.is_idle() && self.pinned.is_none() {
                        return Poll::Ready(RelayEnd::Released);
                    }
                    // Inside a transaction the request belongs here after
                    // all, whatever it does, as on PostgreSQL.
                    p.split = Split::No;
                    continue;
                }
                if self.release_when_idle
                    && self.pinned.is_none()
                    && self.server.state.is_idle()
                    && self.server.scanner.at_boundary()
                {
                    return Poll::Ready(RelayEnd::Released);
                }
            }

            // Cutting keeps a ReadyForQuery's worth of replies back, and
            // the rest of the answer is still to be read.
            let partly_held = p.split == Split::CutReady || p.inline.is_pending();
            if self.server.read_buf.is_empty() || holding || partly_held {
                match self.poll_server_read(cx) {
                    Poll::Ready(Ok(())) => {
                        moved = true;
                        self.time_answers(p);
                        if self.server.state.take_stale_plan() {
                            if let Some(statement) = p.last_bound.take() {
                                self.registry.invalidate(&statement);
                            }
                        }
                    }
                    Poll::Ready(Err(error)) if self.guard.is_some() => {
                        return Poll::Ready(RelayEnd::FailedBeforeAnswer(error))
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::ServerFailed(error)),
                    Poll::Pending => {}
                }
            }

            // Every byte read from the client and not yet written to the
            // server counts, rewritten ones included; an unfinished
            // message may take it past the bound only by itself.
            let buffered = p.framed + self.server_out.len();
            let tail = &self.client_in[p.framed..];
            let declared = match frontend::declared_len(tail, self.max_message) {
                Ok(declared) => declared,
                Err(error) => return Poll::Ready(RelayEnd::ClientProtocol(error)),
            };
            let unfinished = declared.is_some_and(|len| tail.len() < len);
            let room =
                buffered < CLIENT_READ_AHEAD && (tail.len() < CLIENT_READ_AHEAD || unfinished);
            if !p.terminated && room {
                let want = match declared {
                    Some(len) => reservation(len, tail.len()),
                    None => READ_CHUNK,
                };
                self.client_in.reserve(want);
                match poll_read_buf(Pin::new(&mut *self.client), cx, self.client_in) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(RelayEnd::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        p.received += n as u64;
                        moved = true;
                    }
                    Poll::Pending => {}
                }
            }

            if let Some(timeout) = self.idle_in_transaction {
                if self.idles_in_transaction(p) {
                    let timer = p
                        .idle_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                        return Poll::Ready(RelayEnd::IdleInTransaction);
                    }
                } else {
                    p.idle_timer = None;
                }
            }

            if !moved {
                return Poll::Pending;
            }
        }
    }

    /// Inside a transaction with nothing in flight either way: the
    /// client's turn, and it is taking it.
    fn idles_in_transaction(&self, p: &Progress) -> bool {
        let state = &self.server.state;
        state.at_rest()
            && !state.is_idle()
            && p.framed == 0
            && self.server_out.is_empty()
            && self.client_in.is_empty()
            && self.server.read_buf.is_empty()
    }

    /// The slow paths: cut the replies to pgrouter's own requests, then
    /// judge a guarded answer. Until both are done nothing is written to
    /// the client, so the held replies start at the front of the buffer.
    fn settle_held_replies(&mut self, p: &mut Progress) -> Option<RelayEnd> {
        let replies = &mut self.server.read_buf;
        while self.swallow > 0 {
            let end = past_ready_for_query(replies, 0)?;
            replies.advance(end);
            p.inline.swallowed_ready(end);
            self.swallow -= 1;
        }
        if p.inline.is_pending() {
            match p.inline.settle(replies, &mut p.judged) {
                Settled::Pending => {}
                Settled::Done => p.inline_flushed = false,
                Settled::Skipped(name) => {
                    p.inline_flushed = false;
                    self.server.statements.forget(&name);
                }
            }
        }
        if self.guard.is_some() && replies.len() > GUARD_LIMIT {
            // Held replies are bounded: past the limit they go out, and
            // the request is no longer retried elsewhere.
            self.guard = None;
        }
        if self.guard.is_some() {
            let (verdict, at) = judge(replies, p.judged);
            p.judged = at;
            match verdict {
                Verdict::Undecided => {}
                Verdict::Deliver => self.guard = None,
                Verdict::ReadOnlyViolation => return Some(RelayEnd::ReadOnlyViolation),
                Verdict::ServerGoingAway => {
                    return Some(RelayEnd::FailedBeforeAnswer(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server is shutting down",
                    )))
                }
            }
        }
        None
    }

    /// Frames every whole message after the already framed ones, recording
    /// each in the server's state. Terminate is held back: it ends the
    /// client, not the server connection.
    ///
    /// Messages naming a prepared statement are rewritten into
    /// `server_out`; from the first such message on, everything is copied
    /// there, so the server gets the bytes in the client's order.
    fn frame_client_messages(&mut self, p: &mut Progress) -> Result<(), ProtocolError> {
        loop {
            let copying = !self.server_out.is_empty();
            let Some(frame) =
                frontend::session_frame(&self.client_in[p.framed..], self.max_message)?
            else {
                return Ok(());
            };
            if p.query_since.is_none() && self.server.state.at_rest() {
                let now = self.started.take().unwrap_or_else(Instant::now);
                p.query_since = Some(now);
                if self.server.state.transaction_status() == STATUS_IDLE {
                    p.transaction_since = Some(now);
                }
            }
            if frame.tag == TERMINATE {
                p.terminated = true;
                return Ok(());
            }
            if p.split != Split::No || !self.check_lease(frame, p) {
                return Ok(());
            }
            if !*self.wrote && self.lease != Lease::Reads {
                let message = &self.client_in[p.framed..p.framed + frame.len];
                *self.wrote = !self.message_reads(message, &mut p.unnamed_reads);
            }
            let named = self.rename_statements
                && matches!(frame.tag, PARSE | BIND | DESCRIBE | CLOSE)
                && extended::statement_name(&self.client_in[p.framed..p.framed + frame.len])
                    .is_some_and(|name| !name.is_empty());
            let routed_first = std::mem::take(&mut self.first_checked);
            if matches!(frame.tag, frontend::QUERY | PARSE | BIND)
                && !(routed_first && frame.tag == frontend::QUERY)
            {
                match self.session_effect(&self.client_in[p.framed..p.framed + frame.len]) {
                    pin::SessionEffect::Pin(_)
                        if self.replayed.is_some()
                            && frontend::query_text(
                                &self.client_in[p.framed..p.framed + frame.len],
                            ) == self.replayed => {}
                    pin::SessionEffect::Pin(reason) => {
                        tracing::debug!(reason, "client pinned to its server connection");
                        *self.pinned = Some(reason);
                    }
                    // The server drops every prepared statement it holds.
                    pin::SessionEffect::Discard => {
                        self.server.statements.clear();
                        self.server.settings = crate::server::AppliedSettings::Unknown;
                    }
                    pin::SessionEffect::Deallocate
                        if frontend::query_text(
                            &self.client_in[p.framed..p.framed + frame.len],
                        )
                        .is_some_and(pin::deallocates_all) =>
                    {
                        self.server.statements.clear();
                    }
                    // The server forgets that statement: so does what
                    // pgrouter knows of it (a client naming one of
                    // pgrouter's, say), and it is prepared again when used.
                    pin::SessionEffect::Deallocate => {
                        let message = &self.client_in[p.framed..p.framed + frame.len];
                        if let Some(name) = frontend::query_text(message).and_then(pin::deallocated)
                        {
                            self.server.statements.forget(&name);
                        }
                    }
                    pin::SessionEffect::Reset => {
                        self.server.settings = crate::server::AppliedSettings::Unknown
                    }
                    pin::SessionEffect::None => {}
                }
            }
            if frame.tag == frontend::FLUSH {
                // The client wants the replies so far without a Sync: no
                // answer may be held back from it any longer.
                self.guard = None;
            }
            if !named && !copying {
                self.server.state.on_client_message(frame.tag);
                p.framed += frame.len;
                continue;
            }
            // Rewritten bytes may only follow what is already written.
            if p.framed > 0 {
                return Ok(());
            }
            if named && !self.rewrite_statement_message(frame, p)? {
                return Ok(());
            }
            if !named {
                self.server_out
                    .extend_from_slice(&self.client_in[..frame.len]);
            }
            self.server.state.on_client_message(frame.tag);
            if let Some(guard) = self.guard.as_deref_mut() {
                guard.extend_from_slice(&self.client_in[..frame.len]);
            }
            self.client_in.advance(frame.len);
        }
    }

    fn poll_server_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let server = &mut *self.server;
        server.read_buf.reserve(READ_CHUNK);
        let n = match poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.read_buf) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )))
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        };
        let fresh = &server.read_buf[server.read_buf.len() - n..];
        let state = &mut server.state;
        let (stats, route) = (self.stats, self.route);
        server
            .scanner
            .scan(fresh, |reply| {
                match reply {
                    Reply::ReadyForQuery(status) => stats.count_ready(route, status == STATUS_IDLE),
                    Reply::Error(code) => crate::stats::count_error(&code),
                    _ => {}
                }
                state.on_reply(reply)
            })
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Poll::Ready(Ok(()))
    }
}

#[path = "relay_lease.rs"]
mod lease;
#[path = "relay_statements.rs"]
mod statements;

pub use lease::Lease;
use lease::{Split, READY_FOR_QUERY_LEN};

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
