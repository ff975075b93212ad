//! The TOML configuration: its schema, defaults, and validation.
//!
//! Loading is two steps. toml + serde check syntax, types and unknown keys
//! (stopping at the first such error, with its line); `validate` then checks
//! what the types cannot say (duplicate names, min > max, references) and
//! reports every problem it finds, each with its line.

mod routing;
mod values;

pub use routing::{Balance, Fallback, ReadYourWrites, Route, RoutingConfig};
pub use validate::ADMIN_DATABASE;
pub use values::{Address, ByteSize, Duration};

use crate::auth::secret::Secret;
use serde::Deserialize;
use std::path::Path;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub pool: PoolDefaults,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where clients connect. Port 0 picks a free port (logged at start).
    pub listen: Address,
    /// Clients beyond this get 53300 "too many clients" and are closed.
    pub max_client_connections: Spanned<usize>,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// A client must finish startup and authentication within this.
    pub client_login_timeout: Duration,
    /// The largest message a client may send.
    pub max_message_size: Spanned<ByteSize>,
    /// Where Prometheus scrapes `/metrics`; no metrics endpoint when unset.
    pub metrics_listen: Option<Address>,
    /// After SIGTERM or SHUTDOWN, how long running transactions may take
    /// to finish before every connection is closed.
    pub shutdown_timeout: Duration,
    /// `text` (human-readable) or `json` (one object per line).
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Address {
                host: "127.0.0.1".into(),
                port: 6432,
            },
            max_client_connections: Spanned::new(0..0, 5000),
            workers: 1,
            client_login_timeout: Duration(std::time::Duration::from_secs(60)),
            max_message_size: Spanned::new(0..0, ByteSize(64 << 20)),
            metrics_listen: None,
            shutdown_timeout: Duration(std::time::Duration::from_secs(30)),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection serves one client for its whole session.
    Session,
    /// A server connection is lent for one transaction at a time.
    Transaction,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        })
    }
}

/// `[pool]`: defaults for every database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaults {
    pub mode: PoolMode,
    pub min_connections: Spanned<usize>,
    pub max_connections: Spanned<usize>,
    pub checkout_timeout: Duration,
    /// A client idle inside a transaction longer than this is closed with
    /// FATAL 25P03 and its transaction rolled back; 0 turns it off.
    pub idle_transaction_timeout: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub server_connect_timeout: Duration,
    pub reset_query: String,
    /// Prepared statements one server connection keeps (least recently
    /// used closed first).
    pub max_prepared_statements: usize,
    /// Transaction mode: prepared statement names one client may hold;
    /// past it the client's least recently used name is forgotten.
    pub max_client_prepared_statements: Spanned<usize>,
    /// Transaction mode: distinct prepared statements all clients together
    /// may hold (one per query text and parameter types, however many
    /// clients name it); past it a Parse of a new one is refused with
    /// 53400. Not per database: the statements are shared.
    pub max_distinct_prepared_statements: Spanned<usize>,
    /// Transaction mode: whether session state that cannot be moved
    /// between server connections pins the client to one ("allow") or is
    /// refused with 0A000 ("error").
    pub pinning: Pinning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    Allow,
    Error,
}

/// `pool.max_client_prepared_statements` unless configured: more than
/// drivers keep by default (JDBC 256, psycopg 100), far fewer than a
/// client that never closes its statements would make.
pub const DEFAULT_MAX_CLIENT_PREPARED_STATEMENTS: usize = 2_000;
/// `pool.max_distinct_prepared_statements` unless configured: about 100 MB
/// of statements of a kilobyte each.
pub const DEFAULT_MAX_DISTINCT_PREPARED_STATEMENTS: usize = 100_000;

impl Default for PoolDefaults {
    fn default() -> Self {
        let secs = |s| Duration(std::time::Duration::from_secs(s));
        PoolDefaults {
            mode: PoolMode::Transaction,
            min_connections: Spanned::new(0..0, 0),
            max_connections: Spanned::new(0..0, 20),
            checkout_timeout: secs(5),
            idle_transaction_timeout: secs(0),
            server_idle_timeout: secs(600),
            server_lifetime: secs(3600),
            server_connect_timeout: secs(5),
            reset_query: "DISCARD ALL".into(),
            max_prepared_statements: 500,
            max_client_prepared_statements: Spanned::new(
                0..0,
                DEFAULT_MAX_CLIENT_PREPARED_STATEMENTS,
            ),
            max_distinct_prepared_statements: Spanned::new(
                0..0,
                DEFAULT_MAX_DISTINCT_PREPARED_STATEMENTS,
            ),
            pinning: Pinning::Allow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Primary,
    Replica,
    /// `pg_is_in_recovery()` decides, and is checked again on every
    /// monitor round, so a promoted replica takes the writes.
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Spanned<String>,
    pub address: Address,
    pub role: Spanned<NodeRole>,
    /// A replica's share of reads under weighted balancing.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: Spanned<String>,
    #[serde(default, deserialize_with = "deserialize_secret")]
    pub password: Option<Spanned<Secret>>,
    /// What pgrouter presents to the servers; defaults to `password`.
    #[serde(default)]
    pub server_password: Option<String>,
    #[serde(default = "default_auth")]
    pub auth: Spanned<AuthMethod>,
    /// Pins this user's traffic to the primary or the replicas.
    #[serde(default)]
    pub route: Route,
    /// May log in to the admin console (the virtual database `pgrouter`).
    #[serde(default)]
    pub admin: bool,
}

fn default_auth() -> Spanned<AuthMethod> {
    Spanned::new(0..0, AuthMethod::ScramSha256)
}

fn deserialize_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Spanned<Secret>>, D::Error> {
    let text = Spanned::<String>::deserialize(deserializer)?;
    let span = text.span();
    Secret::parse(text.get_ref())
        .map(|secret| Some(Spanned::new(span, secret)))
        .map_err(serde::de::Error::custom)
}

impl UserConfig {
    /// The password pgrouter uses to log in to the servers, if it has one.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password
            .as_deref()
            .or_else(|| self.password.as_ref().and_then(|p| p.get_ref().plain()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: Spanned<String>,
    pub server_database: Option<String>,
    pub mode: Option<PoolMode>,
    pub min_connections: Option<Spanned<usize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub checkout_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub reset_query: Option<String>,
    /// Pins this database's traffic to the primary or the replicas.
    #[serde(default)]
    pub route: Route,
    pub pinning: Option<Pinning>,
}

/// One database's pool settings: its overrides applied over `[pool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub min_connections: usize,
    pub max_connections: usize,
    pub checkout_timeout: std::time::Duration,
    /// Zero: off.
    pub idle_transaction_timeout: std::time::Duration,
    pub server_idle_timeout: std::time::Duration,
    pub server_lifetime: std::time::Duration,
    pub server_connect_timeout: std::time::Duration,
    pub reset_query: String,
    pub max_prepared_statements: usize,
    pub max_client_prepared_statements: usize,
    pub pinning: Pinning,
}

impl Config {
    pub fn pool_settings(&self, db: &DatabaseConfig) -> PoolSettings {
        let defaults = &self.pool;
        PoolSettings {
            mode: db.mode.unwrap_or(defaults.mode),
            min_connections: *db
                .min_connections
                .as_ref()
                .unwrap_or(&defaults.min_connections)
                .get_ref(),
            max_connections: *db
                .max_connections
                .as_ref()
                .unwrap_or(&defaults.max_connections)
                .get_ref(),
            checkout_timeout: db.checkout_timeout.unwrap_or(defaults.checkout_timeout).0,
            idle_transaction_timeout: db
                .idle_transaction_timeout
                .unwrap_or(defaults.idle_transaction_timeout)
                .0,
            server_idle_timeout: defaults.server_idle_timeout.0,
            server_lifetime: defaults.server_lifetime.0,
            server_connect_timeout: defaults.server_connect_timeout.0,
            reset_query: db
                .reset_query
                .clone()
                .unwrap_or_else(|| defaults.reset_query.clone()),
            max_prepared_statements: defaults.max_prepared_statements.max(1),
            max_client_prepared_statements: *defaults.max_client_prepared_statements.get_ref(),
            pinning: db.pinning.unwrap_or(defaults.pinning),
        }
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| db.name.get_ref() == name)
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|user| user.name.get_ref() == name)
    }

    /// The user the node monitor logs in as.
    pub fn monitor_user(&self) -> Option<&UserConfig> {
        match &self.routing.monitor_user {
            Some(name) => self.user(name.get_ref()),
            None => self.users.first(),
        }
    }

    /// The database the node monitor connects to.
    pub fn monitor_database(&self) -> &str {
        match (&self.routing.monitor_database, self.databases.first()) {
            (Some(name), _) => name,
            (None, Some(db)) => db.server_database(),
            (None, None) => "postgres",
        }
    }
}

impl DatabaseConfig {
    pub fn server_database(&self) -> &str {
        self.server_database
            .as_deref()
            .unwrap_or(self.name.get_ref())
    }
}

/// A problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column, when the problem has a place.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// Every problem found in one file, printed one per line as
/// `FILE:LINE:COLUMN: message`.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match error.position {
                Some((line, column)) => {
                    write!(f, "{}:{line}:{column}: {}", self.file, error.message)?
                }
                None => write!(f, "{}: {}", self.file, error.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                position: None,
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Config::parse(&text).map_err(|errors| ConfigErrors { file, errors })
    }

    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        let config: Config = toml::from_str(text).map_err(|e| {
            vec![ConfigError {
                position: e.span().map(|span| position(text, span.start)),
                message: e.message().trim().to_owned(),
            }]
        })?;
        let errors = validate::check(&config, text);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

mod validate;

#[cfg(test)]
mod tests;
