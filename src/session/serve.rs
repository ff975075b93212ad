//! Serving a logged-in client: wait for a request, check out a server
//! connection, relay until the transaction (transaction mode) or the
//! session (session mode) ends, and give the connection back clean.

use super::login::{checkout_sqlstate, send_welcome, Identity, Shared};
use super::relay::{Relay, RelayEnd};
use crate::cancel::Registration;
use crate::client::ClientError;
use crate::config::PoolMode;
use crate::pool::{Pool, PoolSet, PooledServer};
use crate::protocol::backend::{self, sqlstate, Severity, STATUS_IDLE};
use crate::protocol::frontend::{self, Frame};
use crate::server::reset;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long an idle client keeps its read buffer before giving it back:
/// busy clients reuse it, and thousands of idle ones hold almost nothing.
const IDLE_BUFFER_KEEP: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 8 * 1024;
/// A clean-up that takes longer closes the server connection instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    identity: Identity,
    pools: Arc<PoolSet>,
    mode: PoolMode,
    max_message: usize,
    in_buf: BytesMut,
    server: Option<PooledServer>,
    cancel: Registration,
}

/// Why serving ended.
enum End {
    Terminated,
    Gone,
    Protocol(String),
    ServerFailed(String),
}

impl Session {
    /// Finishes the login: the pool's ParameterStatus set, our key, and
    /// the first ReadyForQuery.
    pub async fn start(
        shared: Arc<Shared>,
        mut stream: TcpStream,
        peer: SocketAddr,
        identity: Identity,
    ) -> Result<Session, (TcpStream, ClientError)> {
        let Some(pools) = shared
            .pools
            .get(&identity.database, &identity.user)
            .cloned()
        else {
            let error = ClientError::fatal(sqlstate::INVALID_CATALOG_NAME, "no pool");
            return Err((stream, error));
        };
        let primary = pools.primary().clone();
        let params = match primary.server_params().await {
            Ok(params) => params,
            Err(error) => {
                let error = ClientError::fatal(checkout_sqlstate(&error), error.to_string());
                return Err((stream, error));
            }
        };
        let cancel = shared.cancels.register();
        if let Err(error) =
            send_welcome(&mut stream, &params, &identity.application_name, cancel.key).await
        {
            return Err((stream, error.into()));
        }
        let _ = stream.set_nodelay(true);
        tracing::info!(
            %peer,
            user = %identity.user,
            database = %identity.database,
            "client connected"
        );
        Ok(Session {
            max_message: shared.config.server.max_message_size.get_ref().0 as usize,
            mode: primary.settings.mode,
            stream,
            peer,
            identity,
            pools,
            in_buf: BytesMut::new(),
            server: None,
            cancel,
        })
    }

    pub async fn serve(mut self) {
        let end = self.serve_requests().await;
        let server = self.server.take();
        self.cleanup(server).await;
        match end {
            End::Terminated | End::Gone => {}
            End::Protocol(error) => {
                tracing::warn!(peer = %self.peer, %error, "closing client: protocol violation");
                self.send_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &error)
                    .await;
            }
            End::ServerFailed(error) => {
                tracing::warn!(peer = %self.peer, %error, "server connection failed under a client");
                let message = format!("server connection lost: {error}");
                self.send_error(Severity::Fatal, sqlstate::CONNECTION_FAILURE, &message)
                    .await;
            }
        }
        tracing::info!(
            peer = %self.peer,
            user = %self.identity.user,
            database = %self.identity.database,
            "client disconnected"
        );
    }

    async fn serve_requests(&mut self) -> End {
        loop {
            if self.server.is_none() {
                let frame = match self.next_request().await {
                    Ok(frame) => frame,
                    Err(ClientError::Protocol(error)) => return End::Protocol(error.to_string()),
                    Err(_) => return End::Gone,
                };
                if frame.tag == frontend::TERMINATE {
                    return End::Terminated;
                }
                if let Err(end) = self.acquire(frame).await {
                    return end;
                }
                continue;
            }
            let Some(server) = self.server.as_mut() else {
                continue;
            };
            let outcome = Relay {
                client: &mut self.stream,
                client_in: &mut self.in_buf,
                server,
                max_message: self.max_message,
                release_when_idle: self.mode == PoolMode::Transaction,
            }
            .run()
            .await;
            match outcome {
                RelayEnd::Released => self.release(),
                RelayEnd::ClientTerminated => return End::Terminated,
                RelayEnd::ClientGone => return End::Gone,
                RelayEnd::ClientProtocol(error) => return End::Protocol(error.to_string()),
                RelayEnd::ServerFailed(error) => {
                    if let Some(server) = self.server.as_mut() {
                        server.mark_broken();
                    }
                    return End::ServerFailed(error.to_string());
                }
            }
        }
    }

    /// Waits for the client's next whole message while it holds no server
    /// connection.
    async fn next_request(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = frontend::frame(&self.in_buf, self.max_message)? {
                return Ok(frame);
            }
            if self.in_buf.is_empty()
                && self.in_buf.capacity() > 0
                && tokio::time::timeout(IDLE_BUFFER_KEEP, self.stream.readable())
                    .await
                    .is_err()
            {
                self.in_buf = BytesMut::new();
            }
            self.stream.readable().await?;
            let want = match frontend::declared_len(&self.in_buf, self.max_message)? {
                Some(len) => len.saturating_sub(self.in_buf.len()).max(READ_CHUNK),
                None => READ_CHUNK,
            };
            self.in_buf.reserve(want);
            match self.stream.try_read_buf(&mut self.in_buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Checks out a server connection for the request that starts with
    /// `first`. When none can be had, the request is answered with an
    /// error and the session stays usable.
    async fn acquire(&mut self, first: Frame) -> Result<(), End> {
        let pool = self.pools.primary().clone();
        match pool.checkout().await {
            Ok(server) => {
                self.cancel.slot.set(Some(server.cancel_target().clone()));
                self.server = Some(server);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(peer = %self.peer, %error, "no server connection for client");
                let code = checkout_sqlstate(&error);
                self.reject_request(first, code, &error.to_string()).await
            }
        }
    }

    /// Answers a request that cannot be served as PostgreSQL answers a
    /// failed one: ErrorResponse, the rest of an extended-protocol batch
    /// discarded up to its Sync, then ReadyForQuery.
    async fn reject_request(&mut self, first: Frame, code: &str, message: &str) -> Result<(), End> {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Error, code, message);
        let mut frame = first;
        loop {
            self.in_buf.advance(frame.len);
            if frame.tag == frontend::QUERY || frame.tag == frontend::SYNC {
                break;
            }
            if frame.tag == frontend::FLUSH {
                // The client may wait for replies before it sends Sync.
                self.write(&out).await?;
                out.clear();
            }
            frame = match self.next_request().await {
                Ok(frame) if frame.tag == frontend::TERMINATE => return Err(End::Terminated),
                Ok(frame) => frame,
                Err(ClientError::Protocol(error)) => return Err(End::Protocol(error.to_string())),
                Err(_) => return Err(End::Gone),
            };
        }
        backend::ready_for_query(&mut out, STATUS_IDLE);
        self.write(&out).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.stream.write_all(bytes).await.map_err(|_| End::Gone)
    }

    fn release(&mut self) {
        self.cancel.slot.set(None);
        if let Some(server) = self.server.take() {
            Pool::release(server);
        }
    }

    /// Gives back the server connection of a client that has gone: rolled
    /// back and, in session mode, reset; closed when that is not possible.
    async fn cleanup(&mut self, server: Option<PooledServer>) {
        self.cancel.slot.set(None);
        let Some(mut server) = server else {
            return;
        };
        let reset_query = match self.mode {
            PoolMode::Session => Some(self.pools.primary().settings.reset_query.as_str()),
            PoolMode::Transaction => None,
        };
        let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, reset::clean(&mut server, reset_query));
        match cleaned.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::info!(server = server.id(), %error, "closing server connection left dirty");
                server.mark_broken();
            }
            Err(_) => {
                tracing::warn!(server = server.id(), "server connection clean-up timed out");
                server.mark_broken();
            }
        }
        Pool::release(server);
    }

    async fn send_error(&mut self, severity: Severity, code: &str, message: &str) {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, severity, code, message);
        let _ = self.stream.write_all(&out).await;
    }
}
