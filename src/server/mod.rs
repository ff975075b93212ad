//! The PostgreSQL-facing side: one authenticated connection to a node.
//!
//! A `ServerConn` owns its socket and its read buffer, so the buffer lives as
//! long as the connection in the pool, not as long as any client.

mod connect;
pub mod prepared;
pub mod reset;
pub mod simple;
pub mod state;
mod statements;

pub use connect::{connect, ConnectParams};

use crate::protocol::scan::ReplyScanner;
use bytes::BytesMut;
use state::ServerState;
pub use statements::ServerStatements;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("could not connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connecting to {address} timed out")]
    ConnectTimeout { address: String },
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused us with an ErrorResponse.
    #[error("server said: {message} ({code})")]
    Rejected { code: String, message: String },
    #[error("server authentication failed: {0}")]
    Auth(String),
    #[error("server protocol error: {0}")]
    Protocol(String),
}

/// What a client's CancelRequest must be sent with to reach this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub address: Arc<str>,
    pub process_id: i32,
    pub secret_key: i32,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The client settings a server connection carries: what a client that
/// gets it must undo or may reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedSettings {
    /// None: as opened, or after `RESET ALL`.
    Default,
    /// Exactly what this replay query sets (a client's startup parameters
    /// and replayed `SET`s).
    Client(Arc<str>),
    /// A client changed them in a way pgrouter does not follow (a `RESET`
    /// of one parameter): `RESET ALL` before anyone uses it again.
    Unknown,
}

pub struct ServerConn {
    pub(crate) stream: TcpStream,
    /// Bytes read from the server and not yet forwarded.
    pub(crate) read_buf: BytesMut,
    pub(crate) scanner: ReplyScanner,
    pub(crate) state: ServerState,
    /// Set when the connection may not be reused: an I/O or protocol error,
    /// or a client that left in the middle of a request.
    pub(crate) broken: bool,
    pub(crate) idle_since: Instant,
    /// The prepared statements this connection holds, by server name.
    pub(crate) statements: ServerStatements,
    /// The client settings it carries.
    pub(crate) settings: AppliedSettings,
    /// Its pool's counters, once the pool has it.
    pub(crate) stats: Option<Arc<crate::stats::PoolStats>>,
    id: u64,
    node: Arc<str>,
    cancel: CancelTarget,
    params: Vec<(String, String)>,
}

impl ServerConn {
    pub(crate) fn new(
        stream: TcpStream,
        read_buf: BytesMut,
        node: Arc<str>,
        cancel: CancelTarget,
        params: Vec<(String, String)>,
    ) -> ServerConn {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            server = id,
            node = %node,
            backend_pid = cancel.process_id,
            "server connection opened"
        );
        ServerConn {
            stream,
            read_buf,
            scanner: ReplyScanner::default(),
            state: ServerState::default(),
            broken: false,
            idle_since: Instant::now(),
            statements: ServerStatements::default(),
            settings: AppliedSettings::Default,
            stats: None,
            id,
            node,
            cancel,
            params,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name of the node it is connected to.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn cancel_target(&self) -> &CancelTarget {
        &self.cancel
    }

    /// The ParameterStatus values the server sent at login.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Whether the connection can serve another client as it is.
    pub fn is_reusable(&self) -> bool {
        !self.broken
            && self.state.is_idle()
            && self.read_buf.is_empty()
            && self.scanner.at_boundary()
    }

    /// Whether an idle connection has heard from its server: a FATAL
    /// before a shutdown, or the close itself. Such a connection is dead;
    /// handing it out would give the client the server's goodbye.
    pub fn heard_while_idle(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }

    pub fn mark_broken(&mut self) {
        self.broken = true;
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // A polite Terminate, if the socket takes it without waiting; the
        // server copes with a plain close too.
        if !self.broken {
            let _ = self.stream.try_write(&[b'X', 0, 0, 0, 4]);
        }
        if let Some(stats) = &self.stats {
            stats.connections_closed.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(server = self.id, node = %self.node, "server connection closed");
    }
}
