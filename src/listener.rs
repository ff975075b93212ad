//! Accepting clients: the connection limit, accept errors, and one task
//! per client.

use crate::client::send_fatal;
use crate::control::Control;
use crate::protocol::backend::sqlstate;
use crate::session;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Accepts clients until the future is dropped, which closes the listener.
pub async fn accept_loop(listener: TcpListener, control: Arc<Control>, max_clients: usize) {
    let limit = Arc::new(Semaphore::new(max_clients));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(error) => {
                // Out of file descriptors, mostly: wait for some to free up
                // instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing client: max_client_connections reached");
            tokio::spawn(async move {
                send_fatal(
                    &mut stream,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "no more connections allowed: too many clients (max_client_connections)",
                )
                .await;
            });
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            session::run(control, stream, peer).await;
            drop(permit);
        });
    }
}
