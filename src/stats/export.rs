//! Prometheus exposition: the exporter serves /metrics on
//! `metrics_listen`, and once a second the counters kept in `Stats` and
//! the gauges read from the clients, pools and topology are copied into
//! it. The hot path never touches the exporter's registry; only the
//! duration histograms record there directly.

use crate::admin::client_counts;
use crate::config::Address;
use crate::control::Control;
use crate::router::{Reason, Target};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::ToSocketAddrs;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Seconds, for the duration histograms: from 100 us to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Starts the /metrics endpoint. Must run before the pools are built:
/// their histograms register with the exporter as they are created.
pub fn install(address: &Address) -> Result<(), String> {
    let socket = (address.host.as_str(), address.port)
        .to_socket_addrs()
        .map_err(|e| format!("metrics_listen {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("metrics_listen {address}: no address"))?;
    PrometheusBuilder::new()
        .with_http_listener(socket)
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    tracing::info!("metrics on http://{socket}/metrics");
    Ok(())
}

/// Copies counters and gauges into the exporter, for as long as the
/// process runs.
pub async fn publish(control: Arc<Control>) {
    let mut ticks = tokio::time::interval(PUBLISH_EVERY);
    loop {
        ticks.tick().await;
        publish_once(&control);
    }
}

fn publish_once(control: &Control) {
    for pool in control.stats.pools() {
        let labels = [
            ("database", pool.database.to_string()),
            ("user", pool.user.to_string()),
            ("node", pool.node.to_string()),
        ];
        for route in [Target::Primary, Target::Replica] {
            let mut routed = labels.to_vec();
            routed.push(("route", route.label().to_owned()));
            counter!("pgrouter_queries_total", &routed).absolute(pool.queries(route));
            counter!("pgrouter_transactions_total", &routed).absolute(pool.transactions(route));
        }
        counter!("pgrouter_bytes_received_total", &labels)
            .absolute(pool.bytes_received.load(Relaxed));
        counter!("pgrouter_bytes_sent_total", &labels).absolute(pool.bytes_sent.load(Relaxed));
        counter!("pgrouter_server_connections_opened_total", &labels)
            .absolute(pool.connections_opened.load(Relaxed));
        counter!("pgrouter_server_connections_closed_total", &labels)
            .absolute(pool.connections_closed.load(Relaxed));
    }
    for set in control.stats.sets() {
        let labels = [
            ("database", set.database.to_string()),
            ("user", set.user.to_string()),
        ];
        for reason in Reason::ALL {
            let mut reasoned = labels.to_vec();
            reasoned.push(("reason", reason.metric_label().to_owned()));
            counter!("pgrouter_routing_decisions_total", &reasoned).absolute(set.decisions(reason));
        }
        counter!("pgrouter_checkout_timeouts_total", &labels)
            .absolute(set.checkout_timeouts.load(Relaxed));
        counter!("pgrouter_retries_total", &labels).absolute(set.retries.load(Relaxed));
        let clients = client_counts(control, &set.database, &set.user);
        for (state, count) in [
            ("active", clients.active),
            ("waiting", clients.waiting),
            ("idle", clients.idle),
        ] {
            let mut stated = labels.to_vec();
            stated.push(("state", state.to_owned()));
            gauge!("pgrouter_clients", &stated).set(count as f64);
        }
        gauge!("pgrouter_pinned_clients", &labels).set(clients.pinned as f64);
    }
    for (class, count) in super::error_classes() {
        counter!("pgrouter_errors_total", "class" => class).absolute(count);
    }
    let shared = control.current();
    for pool in shared.pools.all() {
        let status = pool.status();
        let stats = &pool.stats;
        for (state, count) in [
            ("active", status.size.saturating_sub(status.available)),
            ("idle", status.available),
        ] {
            gauge!(
                "pgrouter_server_connections",
                "database" => stats.database.to_string(),
                "user" => stats.user.to_string(),
                "node" => stats.node.to_string(),
                "state" => state
            )
            .set(count as f64);
        }
    }
    publish_bounds(&shared);
    let topology = &shared.topology;
    for (index, node) in topology.nodes().iter().enumerate() {
        let name = node.name.to_string();
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        gauge!("pgrouter_node_up", "node" => name.clone()).set(flag(node.healthy()));
        gauge!("pgrouter_node_primary", "node" => name.clone()).set(flag(node.is_primary()));
        gauge!("pgrouter_node_banned", "node" => name.clone()).set(flag(topology.is_banned(index)));
        gauge!("pgrouter_node_false_primary", "node" => name.clone())
            .set(flag(node.role().is_refused()));
        gauge!("pgrouter_replica_lag_seconds", "node" => name.clone())
            .set(node.lag().as_secs_f64());
        gauge!("pgrouter_replica_lag_bytes", "node" => name.clone()).set(node.lag_bytes() as f64);
        counter!("pgrouter_false_primaries_total", "node" => name.clone())
            .absolute(node.false_primaries());
        counter!("pgrouter_node_bans_total", "node" => name).absolute(node.bans());
    }
}

/// What the structures keyed by client input hold (SHOW CACHES).
fn publish_bounds(shared: &crate::control::Shared) {
    let registry = &shared.registry;
    gauge!("pgrouter_prepared_statements").set(registry.len() as f64);
    counter!("pgrouter_prepared_statements_refused_total").absolute(registry.refused());
    let router = &shared.router;
    gauge!("pgrouter_classification_cache_entries").set(router.class_cache().len() as f64);
    let (functions, _, lookups) = router.function_cache();
    gauge!("pgrouter_function_cache_entries").set(functions as f64);
    counter!("pgrouter_function_lookups_total").absolute(lookups);
    let offload = router.offload_stats();
    gauge!("pgrouter_classify_in_flight").set(offload.in_flight as f64);
    counter!("pgrouter_classified_off_thread_total").absolute(offload.done);
    counter!("pgrouter_classify_refused_total").absolute(offload.refused);
}
