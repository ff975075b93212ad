//! Wiring: metrics, the first generation started, then the listener,
//! while signals reload (SIGHUP), drain (SIGTERM) or stop (SIGINT) it.

use crate::config::Config;
use crate::control::Control;
use crate::listener;
use crate::stats::export;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// How often a draining shutdown looks whether every client has left.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Runs pgrouter until a signal or the console's SHUTDOWN stops it.
/// `config_path` is where SIGHUP and RELOAD re-read the configuration.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> std::io::Result<()> {
    let metrics = config.server.metrics_listen.is_some();
    if let Some(address) = &config.server.metrics_listen {
        export::install(address).map_err(std::io::Error::other)?;
    }
    let shutdown_timeout = config.server.shutdown_timeout.0;
    let control = Arc::new(Control::new(config, config_path));
    let shared = control.current();
    shared.start(true).await;
    if metrics {
        tokio::spawn(export::publish(control.clone()));
    }
    tokio::spawn(sweep_idle_clients(Arc::downgrade(&control.clients)));

    let address = &shared.config.server.listen;
    let listener = TcpListener::bind((address.host.as_str(), address.port)).await?;
    tracing::info!("listening on {}", listener.local_addr()?);
    let limit = *shared.config.server.max_client_connections.get_ref();
    drop(shared);

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut accepting = Box::pin(listener::accept_loop(listener, control.clone(), limit));
    loop {
        tokio::select! {
            () = &mut accepting => return Ok(()),
            _ = hangup.recv() => {
                // Beside the accept loop: a reload waits for the new
                // monitors' first round.
                let control = control.clone();
                tokio::spawn(async move {
                    if let Err(errors) = control.reload().await {
                        tracing::error!(%errors, "configuration not reloaded, the old one stays");
                    }
                });
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: shutting down once running transactions end");
                break;
            }
            () = control.shutdown_requested.notified() => {
                tracing::info!("SHUTDOWN: shutting down once running transactions end");
                break;
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: shutting down now");
                close_servers(&control);
                return Ok(());
            }
        }
    }
    // The listener closes here: new connections are refused.
    drop(accepting);
    drain(&control, shutdown_timeout, &mut interrupt).await;
    close_servers(&control);
    tracing::info!("shut down");
    Ok(())
}

/// Lets every client finish its transaction and leave, up to `timeout`.
async fn drain(control: &Control, timeout: Duration, interrupt: &mut tokio::signal::unix::Signal) {
    control.begin_shutdown();
    let drained = async {
        while !control.clients.is_empty() {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(timeout) => {
            tracing::warn!(
                clients = control.clients.len(),
                "shutdown_timeout reached: closing the remaining clients"
            );
        }
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down now"),
    }
}

/// Closes the idle server connections with a Terminate each.
fn close_servers(control: &Control) {
    for pool in control.current().pools.all() {
        pool.close_idle();
    }
}

/// Asks clients idle for a while to give back their buffers, until the
/// registry is gone.
async fn sweep_idle_clients(clients: std::sync::Weak<crate::clients::ClientRegistry>) {
    let mut ticks = tokio::time::interval(crate::clients::SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match clients.upgrade() {
            Some(clients) => clients.sweep(),
            None => return,
        }
    }
}
