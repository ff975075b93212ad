//! The background work of a pool: close expired idle connections and keep
//! `min_connections` open, backing off while the server is unreachable.

use super::{CheckoutError, Pool};
use std::sync::Arc;
use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until a reload retires the pool. The first round has already been
/// done by `top_up` at start-up.
pub async fn maintain(pool: Arc<Pool>) {
    let tick = pool
        .settings
        .server_idle_timeout
        .min(pool.settings.server_lifetime)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut backoff = FIRST_BACKOFF;
    while !pool.is_retired() {
        let retired = pool.retire_expired();
        if retired > 0 {
            tracing::debug!(pool = %pool.name, retired, "closed expired server connections");
        }
        if top_up(&pool).await {
            backoff = FIRST_BACKOFF;
            tokio::time::sleep(tick).await;
        } else {
            tracing::warn!(pool = %pool.name, retry_in = ?backoff, "cannot reach min_connections");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Opens connections until the pool holds `min_connections`. Returns false
/// when the server could not be reached.
pub async fn top_up(pool: &Pool) -> bool {
    let min = pool.settings.min_connections;
    if pool.status().size >= min {
        return true;
    }
    // deadpool opens a connection only when a checkout finds none idle, so
    // hold `min` of them at once; the idle ones are lent back straight away.
    let mut held = Vec::with_capacity(min);
    let mut reached = true;
    while held.len() < min {
        match pool.try_checkout().await {
            Ok(server) => held.push(server),
            // Every connection is busy with clients: the pool is warm.
            Err(CheckoutError::Timeout { .. }) => break,
            Err(_) => {
                reached = false;
                break;
            }
        }
    }
    for server in held {
        Pool::release(server);
    }
    reached
}
