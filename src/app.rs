//! Wiring: pools warmed up, then the listener, until a signal stops us.

use crate::config::Config;
use crate::listener;
use crate::pool;
use crate::session::Shared;
use crate::topology::monitor::{Monitor, MonitorTarget};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(config: Config) -> std::io::Result<()> {
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone()));

    // Every node is checked once before the first client: roles, health
    // and positions are known from the start.
    let first_rounds: Vec<_> = monitors(&config, &shared)
        .into_iter()
        .map(|monitor| {
            let (done, first_round) = tokio::sync::oneshot::channel();
            tokio::spawn(monitor.run(done));
            first_round
        })
        .collect();
    for first_round in first_rounds {
        let _ = first_round.await;
    }

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

fn monitors(config: &Config, shared: &Arc<Shared>) -> Vec<Monitor> {
    let user = config.monitor_user();
    config
        .nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            Monitor::new(
                shared.topology.clone(),
                MonitorTarget {
                    index,
                    address: node.address.clone(),
                    user: user.map(|u| u.name.get_ref().clone()).unwrap_or_default(),
                    password: user.and_then(|u| u.server_password().map(str::to_owned)),
                    database: config.monitor_database().to_owned(),
                    interval: config.routing.monitor_interval.get_ref().0,
                    connect_timeout: config.pool.server_connect_timeout.0,
                },
            )
        })
        .collect()
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
