//! Whether a function called in a SELECT may write, from pg_proc's
//! volatility, looked up on the primary and remembered for a while.
//!
//! Names come from clients' SQL, so what is remembered is bounded: at most
//! `function_cache_size` names (names that do not exist included: pg_proc
//! says nothing of them, and they count as writing), each for
//! `function_cache_ttl`, after which the next statement calling it looks
//! it up again, so that an `ALTER FUNCTION ... STABLE` is noticed.

use crate::config::Config;
use crate::topology::Topology;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;
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
    known: KnownFunctions,
    login: Login,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Functions {
    pub fn new(config: &Config) -> Functions {
        let lower = |names: &[String]| names.iter().map(|n| n.to_lowercase()).collect();
        let user = config.monitor_user();
        let routing = &config.routing;
        Functions {
            writes: lower(&routing.write_functions),
            reads: lower(&routing.read_functions),
            known: KnownFunctions::new(routing.function_cache_size, routing.function_cache_ttl.0),
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
        self.known.get(name, Instant::now())
    }

    /// Names remembered now (expired ones included until they are
    /// replaced) and the most there may be.
    pub fn cached(&self) -> (usize, usize) {
        (self.known.len(), self.known.capacity)
    }

    /// Lookups in pg_proc since start.
    pub fn lookups(&self) -> u64 {
        self.known
            .lookups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether calling `name` may write: the config lists first, then
    /// pg_proc (volatile = may write). When pg_proc cannot be asked the
    /// answer is yes: the statement goes to the primary.
    pub async fn may_write(&self, name: &str, topology: &Topology) -> bool {
        if let Some(known) = self.known(name) {
            return known;
        }
        self.known
            .lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.lookup(name, topology).await {
            Ok(volatile) => {
                self.known.insert(name, volatile, Instant::now());
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

/// What pg_proc said of each name, for `ttl`, at most `capacity` names.
struct KnownFunctions {
    /// Name as written -> (may write, known until).
    by_name: RwLock<HashMap<Box<str>, (bool, Instant)>>,
    capacity: usize,
    ttl: Duration,
    lookups: std::sync::atomic::AtomicU64,
}

impl KnownFunctions {
    fn new(capacity: usize, ttl: Duration) -> KnownFunctions {
        KnownFunctions {
            by_name: RwLock::new(HashMap::new()),
            capacity,
            ttl,
            lookups: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn get(&self, name: &str, now: Instant) -> Option<bool> {
        let (may_write, until) = *self.by_name.read().get(name)?;
        (now < until).then_some(may_write)
    }

    /// Remembers a lookup's answer. A full cache first drops what has
    /// expired, then, if that was nothing, the entry closest to expiring
    /// (the one looked up longest ago). Inserts follow a round trip to
    /// the primary, so the scan of a full cache costs little beside it.
    fn insert(&self, name: &str, may_write: bool, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut by_name = self.by_name.write();
        if by_name.len() >= self.capacity && !by_name.contains_key(name) {
            by_name.retain(|_, (_, until)| now < *until);
            if by_name.len() >= self.capacity {
                let oldest = by_name
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    by_name.remove(&oldest);
                }
            }
        }
        by_name.insert(name.into(), (may_write, now + self.ttl));
    }

    fn len(&self) -> usize {
        self.by_name.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beyond_the_capacity_push_out_the_oldest() {
        let cache = KnownFunctions::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            cache.insert(name, i % 2 == 0, at(i as u64));
        }
        // Names that do not exist count too: 1000 more, never more than 3.
        for i in 0..1000 {
            cache.insert(&format!("nope{i}"), true, at(10 + i));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get("a", at(2000)), None);
        assert_eq!(cache.get("nope999", at(2000)), Some(true));
        assert_eq!(cache.get("nope997", at(2000)), Some(true));
    }

    #[test]
    fn an_answer_expires_after_the_ttl() {
        let cache = KnownFunctions::new(10, Duration::from_secs(60));
        let start = Instant::now();
        cache.insert("f", false, start);
        assert_eq!(cache.get("f", start + Duration::from_secs(59)), Some(false));
        assert_eq!(cache.get("f", start + Duration::from_secs(60)), None);
        // Looked up again (ALTER FUNCTION made it volatile): the new answer.
        cache.insert("f", true, start + Duration::from_secs(61));
        assert_eq!(cache.get("f", start + Duration::from_secs(62)), Some(true));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expired_names_make_room_before_live_ones() {
        let cache = KnownFunctions::new(2, Duration::from_secs(10));
        let start = Instant::now();
        cache.insert("old", true, start);
        cache.insert("live", false, start + Duration::from_secs(8));
        cache.insert("new", false, start + Duration::from_secs(11));
        let now = start + Duration::from_secs(12);
        assert_eq!(cache.get("live", now), Some(false));
        assert_eq!(cache.get("new", now), Some(false));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let cache = KnownFunctions::new(0, Duration::from_secs(10));
        cache.insert("f", false, Instant::now());
        assert_eq!(cache.len(), 0);
    }
}
