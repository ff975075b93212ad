//! CancelRequest forwarding.
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
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The key pgrouter gives a client: (process id, secret key).
pub type ClientKey = (i32, i32);

#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.target.lock() = target;
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<ClientKey, Arc<CancelSlot>>>,
}

/// A client's registration; unregisters when dropped.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub key: ClientKey,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot = Arc::new(CancelSlot::default());
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

    /// Forwards a client's CancelRequest; returns whether it went anywhere.
    pub async fn cancel(&self, key: ClientKey) -> bool {
        let target = {
            let slots = self.slots.lock();
            slots.get(&key).and_then(|slot| slot.target.lock().clone())
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
