//! Server connection pools: one per database, user and node.
//!
//! A pool never sees a client. The session checks a connection out, does
//! its I/O itself, and gives it back with `release`, which keeps it only
//! when nothing of the client is left on it.

mod maintain;
mod manager;

pub use maintain::{maintain, top_up};
pub use manager::{ServerManager, ServerParams};

use crate::config::{Config, NodeConfig, PoolSettings};
use crate::server::ServerError;
use crate::stats::{PoolStats, SetStats, Stats};
use deadpool::managed::{Object, PoolError, QueueMode, TimeoutType, Timeouts};
use deadpool::Runtime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

pub type PooledServer = Object<ServerManager>;

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("no server connection in pool {pool} became free within {waited:?}")]
    Timeout { pool: String, waited: Duration },
    #[error("cannot open a server connection for pool {pool}: {source}")]
    Server { pool: String, source: ServerError },
    #[error("pool {pool} is closed")]
    Closed { pool: String },
}

impl CheckoutError {
    /// The SQLSTATE a client sees when no server connection can be had.
    pub fn sqlstate(&self) -> &'static str {
        use crate::protocol::backend::sqlstate;
        match self {
            CheckoutError::Timeout { .. } => sqlstate::TOO_MANY_CONNECTIONS,
            CheckoutError::Server { .. } => sqlstate::CONNECTION_FAILURE,
            CheckoutError::Closed { .. } => sqlstate::ADMIN_SHUTDOWN,
        }
    }
}

/// The connections to one node for one database and user.
///
/// A reload gives every pool a new `Pool` with the new settings; the
/// connections (deadpool's pool) carry over when they would be opened the
/// same way, so clients keep them.
pub struct Pool {
    /// "database/user@node", as logs and errors name it.
    pub name: String,
    pub settings: PoolSettings,
    pub stats: Arc<PoolStats>,
    inner: deadpool::managed::Pool<ServerManager>,
    /// A newer configuration replaced this pool: its upkeep stops.
    retired: AtomicBool,
    /// Client settings (startup parameters, as one query) a server of
    /// this pool accepted: a client logging in with them is not checked
    /// again. Bounded: cleared when full.
    validated: parking_lot::Mutex<std::collections::HashSet<Arc<str>>>,
}

/// A reply buffer larger than this is dropped when its connection goes
/// back to the pool.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;

/// Distinct validated settings remembered per pool.
const MAX_VALIDATED_SETTINGS: usize = 1024;

struct PoolSpec<'a> {
    node: &'a NodeConfig,
    database: &'a str,
    client_database: &'a str,
    user: &'a str,
    password: Option<&'a str>,
    settings: PoolSettings,
}

impl Pool {
    fn new(spec: PoolSpec<'_>, previous: Option<&Pool>, stats: &Stats) -> Pool {
        let PoolSpec {
            node,
            database,
            client_database,
            user,
            password,
            settings,
        } = spec;
        let stats = stats.pool(client_database, user, node.name.get_ref());
        let manager = ServerManager {
            node: node.name.get_ref().as_str().into(),
            address: node.address.clone(),
            user: user.to_owned(),
            database: database.to_owned(),
            password: password.map(str::to_owned),
            connect_timeout: settings.server_connect_timeout,
            lifetime: settings.server_lifetime,
            idle_timeout: settings.server_idle_timeout,
            params: Default::default(),
            stats: stats.clone(),
        };
        let name = format!("{client_database}/{user}@{}", node.name.get_ref());
        if let Some(previous) = previous.filter(|p| p.manager().opens_like(&manager)) {
            previous.inner.resize(settings.max_connections);
            return Pool {
                name,
                settings,
                stats,
                inner: previous.inner.clone(),
                validated: Default::default(),
                retired: AtomicBool::new(false),
            };
        }
        let inner = deadpool::managed::Pool::builder(manager)
            .max_size(settings.max_connections)
            // Most recently used first: the hot connections stay warm and
            // the rest reach server_idle_timeout and close.
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(settings.checkout_timeout))
            .create_timeout(Some(settings.server_connect_timeout))
            .runtime(Runtime::Tokio1)
            .build();
        let inner = match inner {
            Ok(inner) => inner,
            Err(error) => unreachable!("a runtime is set, so the build cannot fail: {error}"),
        };
        Pool {
            name,
            settings,
            stats,
            inner,
            retired: AtomicBool::new(false),
            validated: Default::default(),
        }
    }

    /// Whether a server of this pool accepted these client settings.
    pub fn settings_validated(&self, settings: &Arc<str>) -> bool {
        self.validated.lock().contains(settings)
    }

    pub fn settings_accepted(&self, settings: &Arc<str>) {
        let mut validated = self.validated.lock();
        if validated.len() >= MAX_VALIDATED_SETTINGS {
            validated.clear();
        }
        validated.insert(settings.clone());
    }

    /// A server connection for one transaction or session, waiting in FIFO
    /// order up to `checkout_timeout`.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        self.checkout_timed().await.0
    }

    /// `checkout`, and how long it waited for a connection to come free.
    pub async fn checkout_timed(&self) -> (Result<PooledServer, CheckoutError>, Duration) {
        // Most checkouts find a free connection: they read no clock and
        // arm no timer.
        match self.get(Duration::ZERO).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {}
            got => {
                return (
                    got.map_err(|error| self.checkout_error(error)),
                    Duration::ZERO,
                )
            }
        }
        let asked = Instant::now();
        let got = self.get(self.settings.checkout_timeout).await;
        (
            got.map_err(|error| self.checkout_error(error)),
            asked.elapsed(),
        )
    }

    /// Deadpool's checkout; a zero `wait` gives up at once when none is
    /// free.
    async fn get(&self, wait: Duration) -> Result<PooledServer, PoolError<ServerError>> {
        let timeouts = Timeouts {
            wait: Some(wait),
            create: Some(self.settings.server_connect_timeout),
            recycle: None,
        };
        self.inner.timeout_get(&timeouts).await
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Closes every idle connection, each with a Terminate; connections
    /// in use are closed when given back.
    pub fn close_idle(&self) {
        self.inner.retain(|_, _| false);
    }

    /// Visits every idle connection.
    pub fn each_idle(&self, mut visit: impl FnMut(&crate::server::ServerConn)) {
        self.inner.retain(|conn, _| {
            visit(conn);
            true
        });
    }

    /// Like `checkout`, but gives up at once when none is free.
    pub(crate) async fn try_checkout(&self) -> Result<PooledServer, CheckoutError> {
        self.get(Duration::ZERO)
            .await
            .map_err(|error| self.checkout_error(error))
    }

    fn checkout_error(&self, error: PoolError<ServerError>) -> CheckoutError {
        let pool = self.name.clone();
        match error {
            PoolError::Backend(source) => CheckoutError::Server { pool, source },
            PoolError::Closed | PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                CheckoutError::Closed { pool }
            }
            PoolError::Timeout(_) => CheckoutError::Timeout {
                pool,
                waited: self.settings.checkout_timeout,
            },
        }
    }

    /// Gives a connection back. It stays in the pool only when it is idle
    /// and clean; otherwise it is closed and the pool opens another when
    /// needed.
    pub fn release(mut server: PooledServer) {
        if server.is_reusable() {
            server.idle_since = Instant::now();
            // A large reply grew the buffer: an idle connection does not
            // keep it.
            if server.read_buf.capacity() > IDLE_BUFFER_LIMIT {
                server.read_buf = bytes::BytesMut::new();
            }
        } else {
            drop(Object::take(server));
        }
    }

    /// The ParameterStatus set a real server sends at login, opening a
    /// connection first if none has been opened yet.
    pub async fn server_params(&self) -> Result<ServerParams, CheckoutError> {
        if let Some(params) = self.inner.manager().params.read().clone() {
            return Ok(params);
        }
        let server = self.checkout().await?;
        let params: ServerParams = server.params().into();
        Pool::release(server);
        Ok(params)
    }

    pub fn manager(&self) -> &ServerManager {
        self.inner.manager()
    }

    pub fn status(&self) -> deadpool::Status {
        self.inner.status()
    }

    /// Closes idle connections that have expired or that their server
    /// has closed.
    fn retire_expired(&self) -> usize {
        let manager = self.inner.manager();
        self.inner
            .retain(|conn, metrics| !manager.expired(conn, &metrics) && !conn.heard_while_idle())
            .removed
            .len()
    }
}

/// The pools of one database and user, one per node, in the order of
/// `[[nodes]]` (the topology's order).
pub struct PoolSet {
    pub nodes: Vec<Arc<Pool>>,
    pub stats: Arc<SetStats>,
}

/// Every pool, by client database name and user name.
pub struct Pools {
    sets: HashMap<(String, String), Arc<PoolSet>>,
}

impl Pools {
    /// The pools `config` asks for, keeping the connections of `previous`
    /// where they would be opened the same way.
    pub fn new(config: &Config, previous: Option<&Pools>, stats: &Stats) -> Pools {
        let mut sets = HashMap::new();
        for db in &config.databases {
            let settings = config.pool_settings(db);
            for user in &config.users {
                let (db_name, user_name) = (db.name.get_ref(), user.name.get_ref());
                let before = previous.and_then(|p| p.get(db_name, user_name));
                let nodes = config
                    .nodes
                    .iter()
                    .map(|node| {
                        let spec = PoolSpec {
                            node,
                            database: db.server_database(),
                            client_database: db_name,
                            user: user_name,
                            password: user.server_password(),
                            settings: settings.clone(),
                        };
                        let previous = before.and_then(|set| {
                            set.nodes
                                .iter()
                                .find(|pool| &*pool.manager().node == node.name.get_ref().as_str())
                        });
                        Arc::new(Pool::new(spec, previous.map(|p| &**p), stats))
                    })
                    .collect();
                sets.insert(
                    (db_name.clone(), user_name.clone()),
                    Arc::new(PoolSet {
                        nodes,
                        stats: stats.set(db_name, user_name),
                    }),
                );
            }
        }
        Pools { sets }
    }

    pub fn get(&self, database: &str, user: &str) -> Option<&Arc<PoolSet>> {
        self.sets.get(&(database.to_owned(), user.to_owned()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.sets.values().flat_map(|set| set.nodes.iter())
    }
}
