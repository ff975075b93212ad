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

use crate::protocol::answer::{judge, past_ready_for_query, Verdict};
use crate::protocol::frontend::{self, TERMINATE};
use crate::protocol::ProtocolError;
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// Framed client bytes beyond which we stop reading from the client until
/// the server has taken some: bounds memory per client.
const CLIENT_READ_AHEAD: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// A guarded request larger than this is not kept for a retry.
const GUARD_LIMIT: usize = 1024 * 1024;

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
    /// The server's socket closed or failed, or it broke the protocol.
    ServerFailed(io::Error),
    /// Guarded: the server failed before any of its answer reached the
    /// client, so the request may run elsewhere.
    FailedBeforeAnswer(io::Error),
    /// Guarded: the answer was ErrorResponse 25006 and nothing reached the
    /// client; the request belongs on the primary.
    ReadOnlyViolation,
}

pub struct Relay<'a> {
    pub client: &'a mut TcpStream,
    pub client_in: &'a mut BytesMut,
    pub server: &'a mut ServerConn,
    pub max_message: usize,
    /// Transaction mode: end the relay as soon as the server is idle.
    pub release_when_idle: bool,
    /// Replies to cut before the client's: one per request pgrouter put in
    /// front of the client's bytes.
    pub swallow: u32,
    /// Hold replies until the answer is judged, and copy the client's
    /// bytes here meanwhile.
    pub guard: Option<&'a mut BytesMut>,
}

struct Progress {
    /// Bytes at the front of `client_in` framed and due to the server.
    framed: usize,
    /// Bytes of the server's read buffer already sent to the client.
    written: usize,
    terminated: bool,
    /// How far the held replies have been judged.
    judged: usize,
}

impl Relay<'_> {
    pub async fn run(mut self) -> RelayEnd {
        let mut progress = Progress {
            framed: 0,
            written: 0,
            terminated: false,
            judged: 0,
        };
        poll_fn(|cx| self.poll(cx, &mut progress)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>, p: &mut Progress) -> Poll<RelayEnd> {
        loop {
            let mut moved = false;

            if !p.terminated {
                if let Err(error) = self.frame_client_messages(p) {
                    return Poll::Ready(RelayEnd::ClientProtocol(error));
                }
            }

            if p.framed > 0 {
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
            if !holding && p.written < replies.len() {
                match Pin::new(&mut *self.client).poll_write(cx, &replies[p.written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(RelayEnd::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        p.written += n;
                        moved = true;
                        if p.written == replies.len() {
                            replies.clear();
                            p.written = 0;
                        }
                    }
                    Poll::Pending => {}
                }
            }

            if p.framed == 0 && self.server.read_buf.is_empty() && !holding {
                if p.terminated {
                    return Poll::Ready(RelayEnd::ClientTerminated);
                }
                if self.release_when_idle
                    && self.server.state.is_idle()
                    && self.server.scanner.at_boundary()
                {
                    return Poll::Ready(RelayEnd::Released);
                }
            }

            if self.server.read_buf.is_empty() || holding {
                match self.poll_server_read(cx) {
                    Poll::Ready(Ok(())) => moved = true,
                    Poll::Ready(Err(error)) if self.guard.is_some() => {
                        return Poll::Ready(RelayEnd::FailedBeforeAnswer(error))
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::ServerFailed(error)),
                    Poll::Pending => {}
                }
            }

            if !p.terminated && p.framed < CLIENT_READ_AHEAD {
                let tail = &self.client_in[p.framed..];
                let want = match frontend::declared_len(tail, self.max_message) {
                    Ok(Some(len)) => len.saturating_sub(tail.len()).max(READ_CHUNK),
                    Ok(None) => READ_CHUNK,
                    Err(error) => return Poll::Ready(RelayEnd::ClientProtocol(error)),
                };
                self.client_in.reserve(want);
                match poll_read_buf(Pin::new(&mut *self.client), cx, self.client_in) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(RelayEnd::ClientGone)
                    }
                    Poll::Ready(Ok(_)) => moved = true,
                    Poll::Pending => {}
                }
            }

            if !moved {
                return Poll::Pending;
            }
        }
    }

    /// The slow paths: cut the replies to pgrouter's own requests, then
    /// judge a guarded answer. Until both are done nothing is written to
    /// the client, so the held replies start at the front of the buffer.
    fn settle_held_replies(&mut self, p: &mut Progress) -> Option<RelayEnd> {
        let replies = &mut self.server.read_buf;
        while self.swallow > 0 {
            let end = past_ready_for_query(replies, 0)?;
            replies.advance(end);
            self.swallow -= 1;
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
    fn frame_client_messages(&mut self, p: &mut Progress) -> Result<(), ProtocolError> {
        while let Some(frame) = frontend::frame(&self.client_in[p.framed..], self.max_message)? {
            if frame.tag == TERMINATE {
                p.terminated = true;
                break;
            }
            self.server.state.on_client_message(frame.tag);
            p.framed += frame.len;
        }
        Ok(())
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
        server
            .scanner
            .scan(fresh, |reply| state.on_reply(reply))
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Poll::Ready(Ok(()))
    }
}
