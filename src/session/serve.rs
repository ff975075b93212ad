//! Serving a logged-in client: wait for a request, have it routed and a
//! server connection checked out (`acquire`), relay until the transaction
//! (transaction mode) or the session (session mode) ends, and give the
//! connection back clean.

use super::relay::{Lease, Relay, RelayEnd};
use super::settings::SessionSettings;
use super::stage::{PendingSetting, Serving, Stage, Waiting};
use crate::client::{send_welcome, ClientError, Identity};
use crate::clients::{Attention, ClientInfo, Registration};
use crate::config::{Pinning, PoolMode, ReadYourWrites};
use crate::control::{Control, Shared};
use crate::pool::PoolSet;
use crate::prepared::ClientStatements;
use crate::protocol::backend::{self, sqlstate, Severity};
use crate::protocol::frontend::{self, Frame};
use crate::router::{Decision, Reason, Router, SessionRoute, SessionWrites, Target};
use crate::server::{prepared, AppliedSettings, ServerError};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How much of an unfinished extended-protocol request is read before it
/// is routed by what has arrived (see `read_request`).
pub(super) const REQUEST_LOOKAHEAD: usize = 256 * 1024;
/// A clean-up that takes longer closes the server connection instead.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLSTATE idle_in_transaction_session_timeout.
const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
/// How long the CancelRequest for an abandoned request may take.
pub(super) const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Session {
    pub(super) control: Arc<Control>,
    /// The configuration generation `shared` belongs to.
    generation: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) identity: Identity,
    pub(super) pools: Arc<PoolSet>,
    pub(super) mode: PoolMode,
    pub(super) max_message: usize,
    pub(super) in_buf: BytesMut,
    pub(super) cancel: Registration,
    pub(super) route: SessionRoute,
    /// Whether a server connection is held, and for what.
    pub(super) stage: Stage,
    /// What a guarded request sent, for running it elsewhere (a buffer
    /// kept for reuse; the request says whether it is guarded).
    pub(super) retry_buf: BytesMut,
    /// The client's named prepared statements.
    pub(super) statements: ClientStatements,
    /// Startup parameters and SETs, replayed on each connection.
    pub(super) settings: SessionSettings,
    /// Client messages rewritten for the server (see `Relay`).
    server_out: BytesMut,
    max_prepared: usize,
    /// `idle_transaction_timeout`, when on.
    idle_transaction_timeout: Option<Duration>,
    /// Bytes read from the client and not yet counted (see `Relay`).
    pub(super) received: u64,
}

/// Why `wait_for_client` returned.
enum Woken {
    Readable,
    Park,
    Close,
}

enum Wait {
    Request(Frame),
    Closing,
    Idle,
}

/// Why serving ended.
pub(super) enum End {
    Terminated,
    Gone,
    Protocol(String),
    ServerFailed(String),
    /// pgrouter is shutting down and the client is between transactions.
    Shutdown,
    /// The client has sent nothing for a while: it parks (see `serve`).
    Idle,
    /// The client sat idle inside a transaction for
    /// `idle_transaction_timeout`.
    IdleInTransaction,
}

impl Session {
    /// Finishes the login: the pool's ParameterStatus set, our key, and
    /// the first ReadyForQuery.
    pub async fn start(
        control: Arc<Control>,
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
        // Any node's connection carries the ParameterStatus set; the
        // primary's is preferred, as it is the one that exists for sure.
        let first = shared.topology.primary().unwrap_or(0);
        let params = match pools.nodes[first].server_params().await {
            Ok(params) => params,
            Err(error) => {
                let error = ClientError::fatal(error.sqlstate(), error.to_string());
                return Err((stream, error));
            }
        };
        let pool = &pools.nodes[first];
        if identity.startup_pin.is_some() && pool.settings.pinning == Pinning::Error {
            let message = "a startup role or session authorization would tie this session to \
                           one server connection, and pinning = \"error\"";
            let error = ClientError::fatal(sqlstate::FEATURE_NOT_SUPPORTED, message);
            return Err((stream, error));
        }
        if let Some(settings) = &identity.settings {
            let changes_identity = identity.startup_pin.is_some();
            if let Err(error) =
                super::release::validate_settings(pool, settings, changes_identity).await
            {
                return Err((stream, error));
            }
        }
        let cancel = control.clients.register(ClientInfo {
            peer,
            user: identity.user.clone(),
            database: identity.database.clone(),
            application_name: identity.application_name.clone(),
        });
        if let Err(error) = send_welcome(&mut stream, &params, &identity, cancel.key).await {
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
            generation: control.generation(),
            control,
            max_message: shared.config.server.max_message_size.get_ref().0 as usize,
            mode: pools.nodes[first].settings.mode,
            max_prepared: pools.nodes[first].settings.max_prepared_statements,
            idle_transaction_timeout: idle_timeout(&pools.nodes[first].settings),
            statements: ClientStatements::new(
                pools.nodes[first].settings.max_client_prepared_statements,
            ),
            settings: SessionSettings::new(identity.settings.clone()),
            route: SessionRoute {
                setting: identity.route,
                read_only_default: identity.read_only_default,
                writes: SessionWrites::default(),
            },
            shared,
            stream,
            peer,
            identity,
            pools,
            in_buf: BytesMut::new(),
            cancel,
            stage: Stage::Waiting(Waiting::default()),
            retry_buf: BytesMut::new(),
            server_out: BytesMut::new(),
            received: 0,
        })
    }

    pub(super) fn router(&self) -> &Router {
        &self.shared.router
    }

    /// Serves the client until it leaves. The busy part is boxed: it is
    /// several kilobytes of state (checkout, connect, relay), which an idle
    /// client does not hold; it parks in `wait_for_work` with only the
    /// `Session` itself.
    pub async fn serve(mut self: Box<Self>) {
        let end = loop {
            match Box::pin(self.serve_requests()).await {
                End::Idle => {
                    if !self.wait_for_work().await {
                        break End::Shutdown;
                    }
                }
                end => break end,
            }
        };
        Box::pin(self.finish(end)).await;
    }

    /// Waits, parked, for the client's next bytes; false when pgrouter is
    /// shutting down first (and the client is between transactions).
    async fn wait_for_work(&mut self) -> bool {
        let between_transactions = !self.stage.transaction().is_open();
        if between_transactions && self.control.shutting_down() {
            return false;
        }
        match self.wait_for_client(between_transactions, false).await {
            Ok(Woken::Close) => false,
            // A closed socket is readable: serving finds out why.
            Ok(_) | Err(_) => {
                let slot = &self.cancel.slot;
                slot.begin_wait(self.control.clients.round());
                slot.unpark();
                true
            }
        }
    }

    /// Waits until the client's socket is readable, or the registry asks
    /// the task to close (when `close`) or to park (when `park`).
    async fn wait_for_client(&self, close: bool, park: bool) -> std::io::Result<Woken> {
        let slot = &self.cancel.slot;
        let stream = &self.stream;
        std::future::poll_fn(|cx| {
            match slot.poll_attention(cx) {
                Attention::Close if close => return Poll::Ready(Ok(Woken::Close)),
                Attention::Park if park => return Poll::Ready(Ok(Woken::Park)),
                _ => {}
            }
            stream.poll_read_ready(cx).map_ok(|()| Woken::Readable)
        })
        .await
    }

    async fn finish(&mut self, end: End) {
        // A client that went away without Terminate abandoned whatever it
        // had running; one that said goodbye has its requests finished,
        // as PostgreSQL finishes them.
        let abandoned = matches!(end, End::Gone | End::Protocol(_));
        self.cleanup(abandoned).await;
        match end {
            End::Terminated | End::Gone | End::Idle => {}
            End::IdleInTransaction => {
                tracing::info!(peer = %self.peer, "closing a client idle in a transaction");
                let message = "terminating connection due to idle-in-transaction timeout";
                self.send_error(
                    Severity::Fatal,
                    IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    message,
                )
                .await;
            }
            End::Shutdown => {
                let message = "terminating connection: pgrouter is shutting down";
                self.send_error(Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, message)
                    .await;
            }
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
            let Stage::Serving(serving) = &mut self.stage else {
                self.follow_reload();
                let frame = match self.next_request_unless_closing().await {
                    Ok(Wait::Request(frame)) => frame,
                    Ok(Wait::Closing) => return End::Shutdown,
                    Ok(Wait::Idle) => return End::Idle,
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
            };
            let request = &mut serving.request;
            let decision = request.decision;
            let outcome = Relay {
                client: &mut self.stream,
                client_in: &mut self.in_buf,
                server: &mut serving.server,
                max_message: self.max_message,
                release_when_idle: self.mode == PoolMode::Transaction,
                pinned: &mut serving.pinned,
                replayed: match &serving.pending_setting {
                    Some(PendingSetting::Set(sql, _)) => Some(sql.as_str()),
                    _ => None,
                },
                swallow: std::mem::take(&mut serving.swallow),
                guard: request.guarded.then_some(&mut self.retry_buf),
                statements: &mut self.statements,
                registry: &self.shared.registry,
                router: &self.shared.router,
                server_out: &mut self.server_out,
                stats: &self.pools.nodes[decision.node].stats,
                route: decision.target,
                received_before: std::mem::take(&mut self.received),
                first_checked: std::mem::take(&mut serving.first_checked),
                started: request.unrelayed.take(),
                rename_statements: self.mode == PoolMode::Transaction,
                lease: lease_of(&decision),
                wrote: &mut serving.wrote,
                idle_in_transaction: self.idle_transaction_timeout,
            }
            .run()
            .await;
            if let Some(reason) = serving.pinned {
                self.cancel.slot.set_pinned(reason);
            }
            match outcome {
                RelayEnd::Released => self.finish_request().await,
                RelayEnd::BatchMoved { failed } => {
                    self.finish_request().await;
                    if failed {
                        // PostgreSQL skips what follows an error up to the
                        // Sync: so does the rest of the batch.
                        let out = match self.skip_batch(None, BytesMut::new()).await {
                            Ok(out) => out,
                            Err(end) => return end,
                        };
                        if let Err(end) = self.answer_ready(out).await {
                            return end;
                        }
                    }
                }
                RelayEnd::Prepare(statement) => {
                    let server = &mut serving.server;
                    let prepared = prepared::prepare(
                        server,
                        &statement.server_name,
                        &statement.parse,
                        self.max_prepared,
                    )
                    .await;
                    match prepared {
                        Ok(()) => {}
                        Err(ServerError::Rejected { code, message }) => {
                            // The statement's own error (a syntax error, a
                            // missing table), which a direct connection
                            // would have given at Parse, answers the request.
                            let status = server.state.transaction_status();
                            if let Err(end) = self.fail_request(&code, &message, status).await {
                                return end;
                            }
                        }
                        Err(error) => {
                            self.drop_server(false);
                            return End::ServerFailed(error.to_string());
                        }
                    }
                }
                RelayEnd::ClientTerminated => return End::Terminated,
                RelayEnd::ClientGone => return End::Gone,
                RelayEnd::ClientProtocol(error) => return End::Protocol(error.to_string()),
                RelayEnd::IdleInTransaction => return End::IdleInTransaction,
                RelayEnd::ServerFailed(error) => {
                    self.drop_server(false);
                    return End::ServerFailed(error.to_string());
                }
                RelayEnd::ReadOnlyViolation => {
                    if let Some(sql) = frontend::first_query_text(&self.retry_buf) {
                        self.shared.router.learn_write(sql);
                    }
                    self.drop_server(true);
                    self.rewind_for_retry();
                }
                RelayEnd::FailedBeforeAnswer(error) => {
                    self.shared
                        .topology
                        .connection_failed(decision.node, &format!("connection failed: {error}"));
                    self.drop_server(true);
                    self.rewind_for_retry();
                }
            }
        }
    }

    /// Puts what a guarded request sent back in front of the client's
    /// unsent bytes, to be routed again (once: see `drop_server`).
    fn rewind_for_retry(&mut self) {
        self.pools
            .stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut replay = BytesMut::with_capacity(self.retry_buf.len() + self.in_buf.len());
        replay.extend_from_slice(&self.retry_buf);
        replay.extend_from_slice(&self.in_buf);
        self.in_buf = replay;
        self.retry_buf.clear();
    }

    /// A transaction ended on its server connection: account for it,
    /// advance read-your-writes, and give the connection back.
    async fn finish_request(&mut self) {
        let Some(Serving {
            mut server,
            request,
            pending_setting,
            wrote,
            ..
        }) = self.stage.stop_serving(false)
        else {
            return;
        };
        self.shared
            .router
            .finished(request.decision.node, request.started);
        if wrote {
            self.record_write();
        }
        if let Some(pending) = pending_setting {
            if server.state.errors() == request.errors_before {
                match pending {
                    PendingSetting::Set(_, setting) => {
                        self.settings.set(setting);
                        // The connection ran it: it has the settings now.
                        server.settings = match self.settings.query() {
                            Some(query) => AppliedSettings::Client(query.clone()),
                            None => AppliedSettings::Default,
                        };
                    }
                    PendingSetting::Reset(name) => {
                        self.settings.reset(name.as_deref());
                        // RESET ALL leaves the connection as opened; a
                        // RESET of one parameter leaves the others, and
                        // that one at the connection's default.
                        server.settings = match name {
                            None => AppliedSettings::Default,
                            Some(_) => AppliedSettings::Unknown,
                        };
                    }
                }
            }
        }
        if let Err(error) = prepared::evict(&mut server, self.max_prepared).await {
            tracing::warn!(%error, "cannot close prepared statements");
            server.mark_broken();
        }
        self.give_back(server);
    }

    /// After a transaction that may have written: read-your-writes
    /// starts from here. No round trip: in `lsn` mode the write's position
    /// is the first reading of the primary's insert position made after
    /// now (see `SessionWrites::resolve`).
    fn record_write(&mut self) {
        if self.shared.router.read_your_writes() != ReadYourWrites::Off {
            self.route.writes.record();
        }
    }

    /// Moves to the newest configuration, between transactions. A client
    /// whose database or user a reload removed stays on the old one.
    fn follow_reload(&mut self) {
        let generation = self.control.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let shared = self.control.current();
        let Some(pools) = shared
            .pools
            .get(&self.identity.database, &self.identity.user)
            .cloned()
        else {
            return;
        };
        let settings = &pools.nodes[0].settings;
        self.mode = settings.mode;
        self.max_prepared = settings.max_prepared_statements;
        self.idle_transaction_timeout = idle_timeout(settings);
        self.max_message = shared.config.server.max_message_size.get_ref().0 as usize;
        self.pools = pools;
        self.shared = shared;
    }

    /// The next request; `Closing` when pgrouter is shutting down and the
    /// client is between transactions (a deferred BEGIN is a transaction
    /// to the client: it may still commit it); `Idle` when the client has
    /// sent nothing for a while (see `ClientRegistry::sweep`), its buffers
    /// given back.
    async fn next_request_unless_closing(&mut self) -> Result<Wait, ClientError> {
        let between_transactions = !self.stage.transaction().is_open();
        if between_transactions && self.control.shutting_down() {
            return Ok(Wait::Closing);
        }
        if self.in_buf.is_empty() {
            self.cancel.slot.begin_wait(self.control.clients.round());
            match self.wait_for_client(between_transactions, true).await {
                Ok(Woken::Close) => return Ok(Wait::Closing),
                Ok(Woken::Park) => {
                    self.in_buf = BytesMut::new();
                    self.retry_buf = BytesMut::new();
                    self.server_out = BytesMut::new();
                    return Ok(Wait::Idle);
                }
                Ok(Woken::Readable) => {}
                Err(error) => return Err(error.into()),
            }
        }
        // The request has begun to arrive: it is read whole, shutdown or not.
        self.next_request().await.map(Wait::Request)
    }

    pub(super) async fn send_error(&mut self, severity: Severity, code: &str, message: &str) {
        crate::stats::count_error(code.as_bytes());
        let mut out = BytesMut::new();
        backend::error_response(&mut out, severity, code, message);
        let _ = self.stream.write_all(&out).await;
    }
}

fn idle_timeout(settings: &crate::config::PoolSettings) -> Option<Duration> {
    let timeout = settings.idle_transaction_timeout;
    (!timeout.is_zero()).then_some(timeout)
}

/// What else a server connection checked out for this decision may run.
fn lease_of(decision: &Decision) -> Lease {
    match (decision.target, decision.reason) {
        (Target::Replica, Reason::Read) => Lease::Reads,
        (Target::Primary, Reason::Write(_) | Reason::WriteFunction) => Lease::Writes,
        _ => Lease::Any,
    }
}
