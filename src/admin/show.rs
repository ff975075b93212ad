//! SHOW POOLS, CLIENTS, SERVERS, NODES, STATS, CONFIG, VERSION (and
//! CACHES, in `caches.rs`).

use super::Answer;
use crate::clients::ClientState;
use crate::config::{Config, ADMIN_DATABASE};
use crate::control::Control;
use crate::router::Target;
use std::time::SystemTime;

pub fn show(control: &Control, what: &str) -> Option<Answer> {
    Some(match what {
        "POOLS" => pools(control),
        "CLIENTS" => clients(control),
        "SERVERS" => servers(control),
        "NODES" => nodes(control),
        "STATS" => stats(control),
        "CONFIG" => config(&control.current().config),
        "CACHES" => super::caches::caches(control),
        "VERSION" => Answer::rows(
            &["version"],
            vec![vec![Some(format!(
                "pgrouter {}",
                env!("CARGO_PKG_VERSION")
            ))]],
        ),

        _ => return None,
    })
}

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// Client counts by state for one database and user.
#[derive(Default)]
pub struct ClientCounts {
    pub active: usize,
    pub waiting: usize,
    pub idle: usize,
    pub pinned: usize,
}

pub fn client_counts(control: &Control, database: &str, user: &str) -> ClientCounts {
    let mut counts = ClientCounts::default();
    for (_, slot) in control.clients.all() {
        if *slot.database != *database || *slot.user != *user {
            continue;
        }
        match slot.state() {
            ClientState::Active => counts.active += 1,
            ClientState::Waiting | ClientState::Paused => counts.waiting += 1,
            ClientState::Idle => counts.idle += 1,
        }
        counts.pinned += usize::from(slot.pinned().is_some());
    }
    counts
}

fn pools(control: &Control) -> Answer {
    let shared = control.current();
    let mut rows = Vec::new();
    for db in &shared.config.databases {
        for user in &shared.config.users {
            let (db, user) = (db.name.get_ref(), user.name.get_ref());
            let Some(set) = shared.pools.get(db, user) else {
                continue;
            };
            let clients = client_counts(control, db, user);
            let (mut active, mut idle) = (0, 0);
            for pool in &set.nodes {
                let status = pool.status();
                active += status.size.saturating_sub(status.available);
                idle += status.available;
            }
            let settings = &set.nodes[0].settings;
            rows.push(vec![
                text(db),
                text(user),
                text(settings.mode),
                text(clients.active),
                text(clients.waiting),
                text(clients.idle),
                text(active),
                text(idle),
                text(settings.max_connections),
                text(clients.pinned),
                text(control.is_paused(db)),
            ]);
        }
    }
    Answer::rows(
        &[
            "database",
            "user",
            "mode",
            "cl_active",
            "cl_waiting",
            "cl_idle",
            "sv_active",
            "sv_idle",
            "max_connections",
            "pinned",
            "paused",
        ],
        rows,
    )
}

fn since(time: SystemTime) -> String {
    let seconds = time.elapsed().map_or(0, |d| d.as_secs());
    format!("{seconds}s")
}

fn clients(control: &Control) -> Answer {
    let shared = control.current();
    let rows = control
        .clients
        .all()
        .into_iter()
        .map(|(key, slot)| {
            let node = slot
                .node()
                .and_then(|index| shared.topology.nodes().get(index))
                .map(|node| node.name.to_string());
            vec![
                text(key.0),
                text(&slot.database),
                text(&slot.user),
                text(&slot.application_name),
                text(slot.peer),
                text(slot.state().label()),
                node,
                slot.target().map(|target| target.process_id.to_string()),
                slot.pinned().map(str::to_owned),
                text(since(slot.connected_at)),
            ]
        })
        .collect();
    Answer::rows(
        &[
            "id",
            "database",
            "user",
            "application_name",
            "address",
            "state",
            "node",
            "backend_pid",
            "pinned",
            "connected",
        ],
        rows,
    )
}

fn servers(control: &Control) -> Answer {
    let shared = control.current();
    let mut rows = Vec::new();
    for (key, slot) in control.clients.all() {
        if &*slot.database == ADMIN_DATABASE {
            continue;
        }
        if let Some(target) = slot.target() {
            let node = slot
                .node()
                .and_then(|index| shared.topology.nodes().get(index))
                .map(|node| node.name.to_string());
            rows.push(vec![
                text(&slot.database),
                text(&slot.user),
                node,
                text(&target.address),
                text("active"),
                text(target.process_id),
                text(key.0),
            ]);
        }
    }
    for db in &shared.config.databases {
        for user in &shared.config.users {
            let (db, user) = (db.name.get_ref(), user.name.get_ref());
            let Some(set) = shared.pools.get(db, user) else {
                continue;
            };
            for pool in &set.nodes {
                pool.each_idle(|conn| {
                    rows.push(vec![
                        text(db),
                        text(user),
                        text(conn.node()),
                        text(&conn.cancel_target().address),
                        text("idle"),
                        text(conn.cancel_target().process_id),
                        None,
                    ]);
                });
            }
        }
    }
    Answer::rows(
        &[
            "database",
            "user",
            "node",
            "address",
            "state",
            "backend_pid",
            "client_id",
        ],
        rows,
    )
}

fn nodes(control: &Control) -> Answer {
    let shared = control.current();
    let topology = &shared.topology;
    let rows = topology
        .nodes()
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let ban_left = topology.ban_left(index);
            vec![
                text(&node.name),
                text(&node.address),
                text(node.role().label()),
                text(format!("{:?}", node.configured_role).to_lowercase()),
                text(node.healthy()),
                text(ban_left.is_some()),
                ban_left.map(|left| format!("{:.1}s", left.as_secs_f64())),
                text(node.lag().as_millis()),
                text(node.lag_bytes()),
                text(node.lsn()),
                text(node.weight),
                text(node.bans()),
                text(shared.router.load(index).active()),
                text(topology.status(index).label()),
                text(topology.failures(index)),
                text(node.timeline()),
            ]
        })
        .collect();
    Answer::rows(
        &[
            "name",
            "address",
            "role",
            "configured_role",
            "healthy",
            "banned",
            "ban_left",
            "lag_ms",
            "lag_bytes",
            "lsn",
            "weight",
            "bans",
            "in_flight",
            "status",
            "failures",
            "timeline",
        ],
        rows,
    )
}

fn stats(control: &Control) -> Answer {
    let rows = control
        .stats
        .pools()
        .into_iter()
        .map(|pool| {
            let queries = pool.queries(Target::Primary) + pool.queries(Target::Replica);
            let transactions =
                pool.transactions(Target::Primary) + pool.transactions(Target::Replica);
            let average = |total: u64, count: u64| total.checked_div(count).unwrap_or(0);
            vec![
                text(&pool.database),
                text(&pool.user),
                text(&pool.node),
                text(queries),
                text(transactions),
                text(
                    pool.bytes_received
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                text(pool.bytes_sent.load(std::sync::atomic::Ordering::Relaxed)),
                text(pool.query_micros()),
                text(pool.transaction_micros()),
                text(average(pool.query_micros(), queries)),
                text(average(pool.transaction_micros(), transactions)),
                text(
                    pool.connections_opened
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                text(
                    pool.connections_closed
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            ]
        })
        .collect();
    Answer::rows(
        &[
            "database",
            "user",
            "node",
            "total_queries",
            "total_xact",
            "total_received",
            "total_sent",
            "total_query_time_us",
            "total_xact_time_us",
            "avg_query_us",
            "avg_xact_us",
            "connections_opened",
            "connections_closed",
        ],
        rows,
    )
}

fn config(config: &Config) -> Answer {
    let server = &config.server;
    let pool = &config.pool;
    let routing = &config.routing;
    let mut rows: Vec<(String, String)> = vec![
        ("server.listen".into(), server.listen.to_string()),
        (
            "server.max_client_connections".into(),
            server.max_client_connections.get_ref().to_string(),
        ),
        ("server.workers".into(), server.workers.to_string()),
        (
            "server.metrics_listen".into(),
            server
                .metrics_listen
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
        ),
        (
            "server.shutdown_timeout".into(),
            format!("{:?}", server.shutdown_timeout.0),
        ),
        ("pool.mode".into(), pool.mode.to_string()),
        (
            "pool.min_connections".into(),
            pool.min_connections.get_ref().to_string(),
        ),
        (
            "pool.max_connections".into(),
            pool.max_connections.get_ref().to_string(),
        ),
        (
            "pool.checkout_timeout".into(),
            format!("{:?}", pool.checkout_timeout.0),
        ),
        (
            "pool.max_prepared_statements".into(),
            pool.max_prepared_statements.to_string(),
        ),
        (
            "pool.max_client_prepared_statements".into(),
            pool.max_client_prepared_statements.get_ref().to_string(),
        ),
        (
            "pool.max_distinct_prepared_statements".into(),
            pool.max_distinct_prepared_statements.get_ref().to_string(),
        ),
        (
            "routing.read_write_split".into(),
            routing.read_write_split.to_string(),
        ),
        (
            "routing.balance".into(),
            format!("{:?}", routing.balance).to_lowercase(),
        ),
        (
            "routing.read_your_writes".into(),
            format!("{:?}", routing.read_your_writes).to_lowercase(),
        ),
        (
            "routing.max_replica_lag".into(),
            format!("{:?}", routing.max_replica_lag.0),
        ),
        (
            "routing.statement_cache_size".into(),
            routing.statement_cache_size.to_string(),
        ),
        (
            "routing.function_cache_size".into(),
            routing.function_cache_size.to_string(),
        ),
        (
            "routing.function_cache_ttl".into(),
            format!("{:?}", routing.function_cache_ttl.0),
        ),
        (
            "routing.classify_offload_size".into(),
            routing.classify_offload_size.get_ref().0.to_string(),
        ),
        (
            "routing.classify_max_size".into(),
            routing.classify_max_size.get_ref().0.to_string(),
        ),
        (
            "routing.classify_threads".into(),
            routing.classify_threads.get_ref().to_string(),
        ),
        (
            "routing.classify_queue".into(),
            routing.classify_queue.to_string(),
        ),
        (
            "routing.ban_time".into(),
            format!("{:?}", routing.ban_time.0),
        ),
        (
            "routing.ban_after".into(),
            routing.ban_after.get_ref().to_string(),
        ),
        (
            "routing.failover_hold".into(),
            format!("{:?}", routing.failover_hold.0),
        ),
    ];
    for node in &config.nodes {
        rows.push((
            format!("nodes.{}", node.name.get_ref()),
            format!(
                "{} role={:?} weight={}",
                node.address,
                node.role.get_ref(),
                node.weight
            )
            .to_lowercase(),
        ));
    }
    for db in &config.databases {
        let settings = config.pool_settings(db);
        rows.push((
            format!("databases.{}", db.name.get_ref()),
            format!(
                "server_database={} mode={} max_connections={}",
                db.server_database(),
                settings.mode,
                settings.max_connections
            ),
        ));
    }
    Answer::rows(
        &["key", "value"],
        rows.into_iter()
            .map(|(key, value)| vec![Some(key), Some(value)])
            .collect(),
    )
}
