//! Every connected client, by the key pgrouter gave it: for forwarding
//! CancelRequests, for the admin console's SHOW CLIENTS and PAUSE, the
//! client gauges, and for telling idle clients to leave at shutdown.
//!
//! Every client gets a BackendKeyData of pgrouter's own. While the client
//! holds a server connection, its slot names that connection's real key;
//! a CancelRequest with the client's key is sent on, with the server's key,
//! to that connection's node, and dropped when the client holds none.

use crate::server::CancelTarget;
use bytes::BytesMut;
use parking_lot::Mutex;
use rand::RngExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The key pgrouter gives a client: (process id, secret key).
pub type ClientKey = (i32, i32);

/// What a client is doing, as SHOW CLIENTS and the gauges tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions: holds no server connection.
    Idle = 0,
    /// Held back by PAUSE.
    Paused = 1,
    /// Waiting for a server connection.
    Waiting = 2,
    /// Holds a server connection.
    Active = 3,
}

impl ClientState {
    pub fn label(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Paused | ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }

    fn from_u8(value: u8) -> ClientState {
        match value {
            1 => ClientState::Paused,
            2 => ClientState::Waiting,
            3 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

const NO_NODE: usize = usize::MAX;

/// One client's entry.
pub struct ClientSlot {
    pub peer: SocketAddr,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub application_name: Arc<str>,
    pub connected_at: SystemTime,
    target: Mutex<Option<CancelTarget>>,
    state: AtomicU8,
    /// The node of the held server connection.
    node: AtomicUsize,
    pinned: Mutex<Option<&'static str>>,
    /// Told once, at shutdown: leave when idle.
    pub closing: Notify,
}

impl ClientSlot {
    /// The server connection the client holds now, if any, on `node`.
    pub fn set(&self, target: Option<CancelTarget>, node: Option<usize>) {
        *self.target.lock() = target;
        self.node.store(node.unwrap_or(NO_NODE), Ordering::Relaxed);
    }

    pub fn target(&self) -> Option<CancelTarget> {
        self.target.lock().clone()
    }

    pub fn node(&self) -> Option<usize> {
        let node = self.node.load(Ordering::Relaxed);
        (node != NO_NODE).then_some(node)
    }

    /// Sequentially consistent, so that PAUSE, which sets its flag and
    /// then looks at every client, and a client, which says it is busy and
    /// then looks at the flag, cannot both miss each other.
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn set_pinned(&self, reason: &'static str) {
        *self.pinned.lock() = Some(reason);
    }

    pub fn pinned(&self) -> Option<&'static str> {
        *self.pinned.lock()
    }
}

/// Who a client is, for its slot.
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub application_name: Arc<str>,
}

#[derive(Default)]
pub struct ClientRegistry {
    slots: Mutex<HashMap<ClientKey, Arc<ClientSlot>>>,
}

/// A client's registration; unregisters when dropped.
pub struct Registration {
    registry: Arc<ClientRegistry>,
    pub key: ClientKey,
    pub slot: Arc<ClientSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.lock().remove(&self.key);
    }
}

impl ClientRegistry {
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registration {
        let slot = Arc::new(ClientSlot {
            peer: info.peer,
            user: info.user,
            database: info.database,
            application_name: info.application_name,
            connected_at: SystemTime::now(),
            target: Mutex::new(None),
            state: AtomicU8::new(ClientState::Idle as u8),
            node: AtomicUsize::new(NO_NODE),
            pinned: Mutex::new(None),
            closing: Notify::new(),
        });
        let mut rng = rand::rng();
        let mut slots = self.slots.lock();
        let key = loop {
            // Positive process ids, as a real server's are.
            let key = (rng.random_range(1..i32::MAX), rng.random());
            if !slots.contains_key(&key) {
                break key;
            }
        };
        slots.insert(key, slot.clone());
        Registration {
            registry: self.clone(),
            key,
            slot,
        }
    }

    /// Every client now, by key.
    pub fn all(&self) -> Vec<(ClientKey, Arc<ClientSlot>)> {
        let mut all: Vec<_> = self
            .slots
            .lock()
            .iter()
            .map(|(key, slot)| (*key, slot.clone()))
            .collect();
        all.sort_by_key(|(_, slot)| slot.connected_at);
        all
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells every client to leave once it is between transactions.
    pub fn close_all(&self) {
        for slot in self.slots.lock().values() {
            slot.closing.notify_one();
        }
    }

    /// Forwards a client's CancelRequest; returns whether it went anywhere.
    pub async fn cancel(&self, key: ClientKey) -> bool {
        let target = {
            let slots = self.slots.lock();
            slots.get(&key).and_then(|slot| slot.target())
        };
        let Some(target) = target else {
            tracing::debug!("cancel request for no running query dropped");
            return false;
        };
        let mut packet = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(
            target.process_id,
            target.secret_key,
            &mut packet,
        );
        let sent = async {
            let mut stream = TcpStream::connect(&*target.address).await?;
            stream.write_all(&packet).await?;
            stream.shutdown().await
        };
        match sent.await {
            Ok(()) => {
                tracing::info!(backend_pid = target.process_id, "cancel request forwarded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, address = %target.address, "cannot forward cancel request");
                false
            }
        }
    }
}
