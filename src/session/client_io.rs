//! Reading a client's messages while it holds no server connection, and
//! answering what pgrouter answers itself: the next request, a whole
//! extended request before routing, the rest of a batch skipped as
//! PostgreSQL skips it.

use super::serve::{End, Session, REQUEST_LOOKAHEAD};
use crate::client::ClientError;
use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{self, Frame};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ_CHUNK: usize = 8 * 1024;

impl Session {
    /// Waits for the client's next whole message while it holds no server
    /// connection.
    pub(super) async fn next_request(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = frontend::session_frame(&self.in_buf, self.max_message)? {
                return Ok(frame);
            }
            self.read_more(0).await?;
        }
    }

    /// Waits until the extended-protocol request at the front of the
    /// client's buffer has arrived through its Sync, or through a Flush
    /// (the client may wait for replies there), or has filled
    /// `REQUEST_LOOKAHEAD`: routing judges what has arrived, and a batch
    /// whose write is still on its way would be split.
    pub(super) async fn read_request(&mut self) -> Result<(), ClientError> {
        loop {
            let mut at = 0;
            while let Some(frame) = frontend::session_frame(&self.in_buf[at..], self.max_message)? {
                at += frame.len;
                if matches!(
                    frame.tag,
                    frontend::SYNC | frontend::FLUSH | frontend::QUERY | frontend::TERMINATE
                ) {
                    return Ok(());
                }
            }
            if self.in_buf.len() >= REQUEST_LOOKAHEAD {
                return Ok(());
            }
            self.read_more(at).await?;
        }
    }

    /// Reads what the client sent next; `at`: where the first message not
    /// yet whole starts, for room to be made for all of it.
    pub(super) async fn read_more(&mut self, at: usize) -> Result<(), ClientError> {
        self.stream.readable().await?;
        let partial = &self.in_buf[at..];
        let want = match frontend::declared_len(partial, self.max_message)? {
            Some(len) => super::relay::reservation(len, partial.len()),
            None => READ_CHUNK,
        };
        self.in_buf.reserve(want);
        // read_buf, not try_read_buf: a short read tells tokio the
        // socket is drained, which saves the relay a read that would
        // only say WouldBlock (one syscall per transaction).
        match self.stream.read_buf(&mut self.in_buf).await {
            Ok(0) => Err(ClientError::Closed),
            Ok(n) => {
                self.received += n as u64;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Answers the rest of the client's request (up to its Sync) with an
    /// error, as PostgreSQL skips a failed batch, while holding a server.
    pub(super) async fn fail_request(
        &mut self,
        code: &str,
        message: &str,
        status: u8,
    ) -> Result<(), End> {
        crate::stats::count_error(code.as_bytes());
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Error, code, message);
        let mut out = self.skip_batch(None, out).await?;
        backend::ready_for_query(&mut out, status);
        self.write(&out).await
    }

    /// Skips the client's messages as PostgreSQL does after an error in
    /// a batch: through the next Sync (only the Query itself, when `first`
    /// is one). `out`, the answer so far, is sent when the client asks
    /// with a Flush, and returned for the ReadyForQuery to follow.
    pub(super) async fn skip_batch(
        &mut self,
        first: Option<Frame>,
        mut out: BytesMut,
    ) -> Result<BytesMut, End> {
        let mut next = first;
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => match self.next_request().await {
                    Ok(frame) if frame.tag == frontend::TERMINATE => return Err(End::Terminated),
                    Ok(frame) => frame,
                    Err(ClientError::Protocol(error)) => {
                        return Err(End::Protocol(error.to_string()))
                    }
                    Err(_) => return Err(End::Gone),
                },
            };
            bytes::Buf::advance(&mut self.in_buf, frame.len);
            let query_request = frame.tag == frontend::QUERY && first == Some(frame);
            if query_request || frame.tag == frontend::SYNC {
                return Ok(out);
            }
            if frame.tag == frontend::FLUSH {
                // The client may wait for replies before it sends Sync.
                self.write(&out).await?;
                out.clear();
            }
        }
    }

    /// Ends a locally answered request with ReadyForQuery.
    pub(super) async fn answer_ready(&mut self, mut out: BytesMut) -> Result<(), End> {
        backend::ready_for_query(&mut out, self.stage.transaction().status());
        self.write(&out).await
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.stream.write_all(bytes).await.map_err(|_| End::Gone)
    }
}
