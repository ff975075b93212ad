//! Whether a function called in a SELECT may write, from pg_proc's
//! volatility, looked up once per name on the primary and remembered.

use crate::config::Config;
use crate::topology::Topology;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

const LOOKUP: &str = "SELECT coalesce(bool_or(p.provolatile = 'v'), true) \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    WHERE p.proname = $1 AND ($2::text IS NULL OR n.nspname = $2)";

struct Login {
    addresses: Vec<crate::config::Address>,
    user: String,
    password: Option<String>,
    database: String,
    timeout: Duration,
}

pub struct Functions {
    writes: HashSet<String>,
    reads: HashSet<String>,
    /// name as written -> may write
    known: RwLock<HashMap<Box<str>, bool>>,
    login: Login,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Functions {
    pub fn new(config: &Config) -> Functions {
        let lower = |names: &[String]| names.iter().map(|n| n.to_lowercase()).collect();
        let user = config.monitor_user();
        Functions {
            writes: lower(&config.routing.write_functions),
            reads: lower(&config.routing.read_functions),
            known: RwLock::new(HashMap::new()),
            login: Login {
                addresses: config.nodes.iter().map(|n| n.address.clone()).collect(),
                user: user.map(|u| u.name.get_ref().clone()).unwrap_or_default(),
                password: user.and_then(|u| u.server_password().map(str::to_owned)),
                database: config.monitor_database().to_owned(),
                timeout: config.pool.server_connect_timeout.0,
            },
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the config lists decide, or the cache knows: no I/O.
    pub fn known(&self, name: &str) -> Option<bool> {
        let unqualified = name.rsplit('.').next().unwrap_or(name);
        if self.writes.contains(name) || self.writes.contains(unqualified) {
            return Some(true);
        }
        if self.reads.contains(name) || self.reads.contains(unqualified) {
            return Some(false);
        }
        self.known.read().get(name).copied()
    }

    /// Whether calling `name` may write: the config lists first, then
    /// pg_proc (volatile = may write). When pg_proc cannot be asked the
    /// answer is yes: the statement goes to the primary.
    pub async fn may_write(&self, name: &str, topology: &Topology) -> bool {
        if let Some(known) = self.known(name) {
            return known;
        }
        match self.lookup(name, topology).await {
            Ok(volatile) => {
                self.known.write().insert(name.into(), volatile);
                volatile
            }
            Err(error) => {
                tracing::warn!(function = name, %error, "cannot look up function volatility");
                true
            }
        }
    }

    async fn lookup(&self, name: &str, topology: &Topology) -> Result<bool, String> {
        let (schema, proname) = match name.rsplit_once('.') {
            Some((schema, proname)) => (Some(schema), proname),
            None => (None, name),
        };
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = Some(self.connect(topology).await?);
        }
        let Some(connected) = client.as_ref() else {
            return Err("no catalog connection".into());
        };
        let row = connected
            .query_one(LOOKUP, &[&proname, &schema])
            .await
            .map_err(|e| e.to_string())?;
        row.try_get(0).map_err(|e| e.to_string())
    }

    async fn connect(&self, topology: &Topology) -> Result<Client, String> {
        let index = topology.primary().ok_or("no primary is reachable")?;
        let address = &self.login.addresses[index];
        let mut config = tokio_postgres::Config::new();
        config
            .host(&address.host)
            .port(address.port)
            .user(&self.login.user)
            .dbname(&self.login.database)
            .application_name("pgrouter-catalog")
            .connect_timeout(self.login.timeout);
        if let Some(password) = &self.login.password {
            config.password(password);
        }
        let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}
