//! Every connected client, by the key pgrouter gave it: for forwarding
//! CancelRequests, for the admin console's SHOW CLIENTS and PAUSE, the
//! client gauges, and for telling idle clients to leave at shutdown.
//!
//! Every client gets a BackendKeyData of pgrouter's own. While the client
//! holds a server connection, its slot names that connection's real key;
//! a CancelRequest with the client's key is sent on, with the server's key,
//! to that connection's node, and dropped when the client holds none.

use crate::server::CancelTarget;
use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use rand::RngExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::SystemTime;

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

/// How often idle clients are swept (see `ClientRegistry::sweep`): an
/// idle client keeps its buffers for one to one and a half seconds, so
/// busy clients reuse them and thousands of idle ones hold almost nothing.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the registry asks of a client's task, which it sees whenever it
/// waits for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    None,
    /// The client has been idle for a sweep round or more: give back the
    /// buffers. The task leaves the request in place while it stays
    /// parked, so that later sweeps do not wake it again.
    Park,
    /// pgrouter is shutting down: leave when between transactions.
    Close,
}

const ATTENTION_NONE: u8 = 0;
const ATTENTION_PARK: u8 = 1;
const ATTENTION_CLOSE: u8 = 2;

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
    /// See `Attention`. A flag and a waker rather than a Notify and a
    /// timer: the task checks them on every request, for an atomic load
    /// and a waker comparison.
    attention: AtomicU8,
    waker: AtomicWaker,
    /// The sweep round in which the client's task last began to wait.
    waiting_since: AtomicU32,
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

    /// What the registry asks; `cx`'s task is woken when that changes.
    pub fn poll_attention(&self, cx: &Context<'_>) -> Attention {
        self.waker.register(cx.waker());
        match self.attention.load(Ordering::Acquire) {
            ATTENTION_PARK => Attention::Park,
            ATTENTION_CLOSE => Attention::Close,
            _ => Attention::None,
        }
    }

    /// Resolves once pgrouter asks the client to leave.
    pub async fn closing(&self) {
        std::future::poll_fn(|cx| match self.poll_attention(cx) {
            Attention::Close => std::task::Poll::Ready(()),
            _ => std::task::Poll::Pending,
        })
        .await
    }

    /// The client's task begins to wait for its client in `round`.
    pub fn begin_wait(&self, round: u32) {
        self.waiting_since.store(round, Ordering::Relaxed);
    }

    /// The client's task is back at work after parking.
    pub fn unpark(&self) {
        let _ = self.attention.compare_exchange(
            ATTENTION_PARK,
            ATTENTION_NONE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    fn ask(&self, from: u8, to: u8) {
        if self
            .attention
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    fn close(&self) {
        self.attention.store(ATTENTION_CLOSE, Ordering::Release);
        self.waker.wake();
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
    /// See `sweep`.
    round: AtomicU32,
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
            attention: AtomicU8::new(ATTENTION_NONE),
            waker: AtomicWaker::new(),
            waiting_since: AtomicU32::new(self.round.load(Ordering::Relaxed)),
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
            slot.close();
        }
    }

    /// The current sweep round.
    pub fn round(&self) -> u32 {
        self.round.load(Ordering::Relaxed)
    }

    /// Starts the next sweep round: a client whose task has been waiting
    /// for it, with no server connection, since two rounds ago is asked
    /// to park. Called every `SWEEP_EVERY` from one task.
    pub fn sweep(&self) {
        let round = self.round.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        for slot in self.slots.lock().values() {
            let since = slot.waiting_since.load(Ordering::Relaxed);
            if round.wrapping_sub(since) >= 2 && slot.state() == ClientState::Idle {
                slot.ask(ATTENTION_NONE, ATTENTION_PARK);
            }
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
        match target.cancel().await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn register(registry: &Arc<ClientRegistry>) -> Registration {
        registry.register(ClientInfo {
            peer: "127.0.0.1:5000".parse().unwrap(),
            user: "app".into(),
            database: "app".into(),
            application_name: "".into(),
        })
    }

    fn attention(slot: &ClientSlot) -> Attention {
        slot.poll_attention(&Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_client_waiting_for_two_sweeps_is_asked_to_park_once() {
        let registry = Arc::new(ClientRegistry::default());
        let quiet = register(&registry);
        let busy = register(&registry);
        let serving = register(&registry);
        serving.slot.set_state(ClientState::Active);
        registry.sweep();
        assert_eq!(attention(&quiet.slot), Attention::None);
        busy.slot.begin_wait(registry.round());
        registry.sweep();
        assert_eq!(attention(&quiet.slot), Attention::Park);
        assert_eq!(attention(&busy.slot), Attention::None);
        assert_eq!(attention(&serving.slot), Attention::None);
        // Back at work: not asked again until it has waited two rounds.
        quiet.slot.begin_wait(registry.round());
        quiet.slot.unpark();
        registry.sweep();
        assert_eq!(attention(&quiet.slot), Attention::None);
        registry.sweep();
        assert_eq!(attention(&quiet.slot), Attention::Park);
    }

    #[test]
    fn close_wins_over_park_and_stays() {
        let registry = Arc::new(ClientRegistry::default());
        let client = register(&registry);
        registry.sweep();
        registry.sweep();
        assert_eq!(attention(&client.slot), Attention::Park);
        registry.close_all();
        client.slot.unpark();
        registry.sweep();
        registry.sweep();
        assert_eq!(attention(&client.slot), Attention::Close);
    }
}
