//! The process-wide state that outlives a configuration: the current
//! generation (swapped by a reload), the connected clients, the counters,
//! PAUSE/RESUME, and the shutdown flag.

mod generation;

pub use generation::Shared;

use crate::clients::{ClientRegistry, ClientState};
use crate::config::Config;
use crate::stats::Stats;
use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// How often PAUSE looks whether the running transactions have ended.
const PAUSE_POLL: Duration = Duration::from_millis(10);

pub struct Control {
    current: RwLock<Arc<Shared>>,
    /// Bumped by every reload; a session compares it with its own.
    generation: AtomicU64,
    pub clients: Arc<ClientRegistry>,
    pub stats: Stats,
    /// Where the configuration is re-read from.
    config_path: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pause: Mutex<Paused>,
    /// Whether anything is paused: the one check a request pays for PAUSE.
    any_paused: AtomicBool,
    resumed: Notify,
    shutting_down: AtomicBool,
    /// SHUTDOWN from the console: the main task starts the shutdown.
    pub shutdown_requested: Notify,
    pub started_at: SystemTime,
}

#[derive(Default)]
struct Paused {
    all: bool,
    databases: HashSet<String>,
}

impl Paused {
    fn holds(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }
}

impl Control {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Control {
        let stats = Stats::default();
        let shared = Arc::new(Shared::build(Arc::new(config), None, &stats));
        Control {
            current: RwLock::new(shared),
            generation: AtomicU64::new(0),
            clients: Default::default(),
            stats,
            config_path,
            reloading: Default::default(),
            pause: Default::default(),
            any_paused: AtomicBool::new(false),
            resumed: Notify::new(),
            shutting_down: AtomicBool::new(false),
            shutdown_requested: Notify::new(),
            started_at: SystemTime::now(),
        }
    }

    /// The generation new requests are served by.
    pub fn current(&self) -> Arc<Shared> {
        self.current.read().clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the configuration file and switches to it. A file with
    /// errors changes nothing; the errors are returned.
    pub async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let Some(path) = &self.config_path else {
            return Err("pgrouter was started without a configuration file".into());
        };
        let config = Config::load(path).map_err(|errors| errors.to_string())?;
        let old = self.current();
        let changes = describe_changes(&old.config, &config);
        let next = Arc::new(Shared::build(Arc::new(config), Some(&old), &self.stats));
        next.start(false).await;
        *self.current.write() = next;
        self.generation.fetch_add(1, Ordering::Release);
        old.retire();
        tracing::info!(path = %path.display(), %changes, "configuration reloaded");
        Ok(changes)
    }

    /// Holds new transactions of `database` (all when `None`), then waits
    /// until the running ones have ended.
    pub async fn pause(&self, database: Option<&str>) {
        {
            let mut paused = self.pause.lock();
            match database {
                None => paused.all = true,
                Some(db) => {
                    paused.databases.insert(db.to_owned());
                }
            }
            self.any_paused.store(true, Ordering::SeqCst);
        }
        tracing::info!(database = database.unwrap_or("(all)"), "pausing");
        loop {
            // A RESUME from another console ends the wait too.
            let still_paused = {
                let paused = self.pause.lock();
                database.map_or(paused.all, |db| paused.holds(db))
            };
            if !still_paused {
                return;
            }
            let busy = self.clients.all().into_iter().any(|(_, slot)| {
                database.is_none_or(|db| *slot.database == *db)
                    && matches!(slot.state(), ClientState::Active | ClientState::Waiting)
            });
            if !busy {
                break;
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }
        tracing::info!(database = database.unwrap_or("(all)"), "paused");
    }

    /// Lets held transactions of `database` (all when `None`) go on.
    pub fn resume(&self, database: Option<&str>) {
        let mut paused = self.pause.lock();
        match database {
            None => *paused = Paused::default(),
            Some(db) => {
                paused.databases.remove(db);
            }
        }
        self.any_paused
            .store(paused.all || !paused.databases.is_empty(), Ordering::SeqCst);
        drop(paused);
        self.resumed.notify_waiters();
        tracing::info!(database = database.unwrap_or("(all)"), "resumed");
    }

    pub fn is_paused(&self, database: &str) -> bool {
        self.any_paused.load(Ordering::SeqCst) && self.pause.lock().holds(database)
    }

    /// Returns once `database` is not paused. The caller has already said
    /// it is busy (see `ClientSlot::set_state`).
    pub async fn wait_unpaused(&self, database: &str) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused(database) {
                return;
            }
            resumed.await;
        }
    }

    /// Stops serving: every client leaves once between transactions.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.clients.close_all();
        // Held transactions could not finish otherwise.
        self.resume(None);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// A one-line summary of what a reload changes, for the log and RELOAD.
fn describe_changes(old: &Config, new: &Config) -> String {
    let names = |config: &Config| -> Vec<String> {
        config
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.name.get_ref(), n.address))
            .collect()
    };
    let mut changes = Vec::new();
    let (before, after) = (names(old), names(new));
    for node in after.iter().filter(|n| !before.contains(n)) {
        changes.push(format!("node added: {node}"));
    }
    for node in before.iter().filter(|n| !after.contains(n)) {
        changes.push(format!("node removed (draining): {node}"));
    }
    if old.users.len() != new.users.len() {
        changes.push(format!("users: {} -> {}", old.users.len(), new.users.len()));
    }
    if old.databases.len() != new.databases.len() {
        changes.push(format!(
            "databases: {} -> {}",
            old.databases.len(),
            new.databases.len()
        ));
    }
    if changes.is_empty() {
        "nodes unchanged".into()
    } else {
        changes.join("; ")
    }
}
