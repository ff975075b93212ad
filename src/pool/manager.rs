//! deadpool's `Manager` for server connections: how to open one for a pool,
//! and whether an idle one may be handed out again.

use crate::config::Address;
use crate::server::{self, ConnectParams, ServerConn, ServerError};
use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use parking_lot::RwLock;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// The ParameterStatus name/value pairs a server sent at login.
pub type ServerParams = Arc<[(String, String)]>;

/// Everything needed to open a server connection for one pool.
pub struct ServerManager {
    pub node: Arc<str>,
    pub address: Address,
    pub user: String,
    pub database: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    /// The ParameterStatus set of the newest connection, replayed to
    /// clients at login as a real server would send it.
    pub params: RwLock<Option<ServerParams>>,
    pub stats: Arc<crate::stats::PoolStats>,
}

impl ServerManager {
    /// Whether both open the same connections: then a reload keeps them.
    pub fn opens_like(&self, other: &ServerManager) -> bool {
        self.node == other.node
            && self.address == other.address
            && self.user == other.user
            && self.database == other.database
            && self.password == other.password
            && self.connect_timeout == other.connect_timeout
            && self.lifetime == other.lifetime
            && self.idle_timeout == other.idle_timeout
    }

    /// Whether an idle connection has outlived `server_lifetime` or
    /// `server_idle_timeout`.
    pub fn expired(&self, conn: &ServerConn, metrics: &Metrics) -> bool {
        // One clock read for both: this runs on every checkout.
        let now = std::time::Instant::now();
        now.saturating_duration_since(metrics.created) >= self.lifetime
            || now.saturating_duration_since(conn.idle_since.into_std()) >= self.idle_timeout
    }
}

impl deadpool::managed::Manager for ServerManager {
    /// Boxed: a client holding a connection holds deadpool's wrapper, and
    /// thousands of clients should not each carry a whole `ServerConn`.
    type Type = Box<ServerConn>;
    type Error = ServerError;

    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        let mut result = server::connect(ConnectParams {
            address: &self.address,
            node: self.node.clone(),
            user: &self.user,
            database: &self.database,
            password: self.password.as_deref(),
            timeout: self.connect_timeout,
        })
        .await;
        match &mut result {
            Ok(conn) => {
                *self.params.write() = Some(conn.params().into());
                self.stats.connections_opened.fetch_add(1, Relaxed);
                conn.stats = Some(self.stats.clone());
            }
            Err(error) => tracing::warn!(
                node = %self.node,
                database = %self.database,
                user = %self.user,
                %error,
                "cannot open a server connection"
            ),
        }
        result.map(Box::new)
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        metrics: &Metrics,
    ) -> RecycleResult<ServerError> {
        if !conn.is_reusable() {
            return Err(RecycleError::message("connection is not clean"));
        }
        if conn.heard_while_idle() {
            conn.mark_broken();
            return Err(RecycleError::message("server closed the idle connection"));
        }
        if self.expired(conn, metrics) {
            return Err(RecycleError::message("connection expired"));
        }
        Ok(())
    }
}
