//! Wiring: pools warmed up, then the listener, until a signal stops us.

use crate::config::Config;
use crate::listener;
use crate::pool;
use crate::session::Shared;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(config: Config) -> std::io::Result<()> {
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone()));

    // min_connections are opened before the first client is accepted.
    let warm_ups: Vec<_> = shared
        .pools
        .all()
        .map(|pool| {
            let pool = pool.clone();
            tokio::spawn(async move { pool::top_up(&pool).await })
        })
        .collect();
    for (pool, warm_up) in shared.pools.all().zip(warm_ups) {
        if !matches!(warm_up.await, Ok(true)) {
            tracing::warn!(pool = %pool.name, "starting without min_connections: server unreachable");
        }
        tokio::spawn(pool::maintain(pool.clone()));
    }

    let address = &config.server.listen;
    let listener = TcpListener::bind((address.host.as_str(), address.port)).await?;
    tracing::info!("listening on {}", listener.local_addr()?);

    tokio::select! {
        () = listener::accept_loop(listener, shared) => {}
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
