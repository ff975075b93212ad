//! /metrics during a small workload: reads counted on the replica, writes
//! on the primary, the gauges of nodes and clients, errors by class, and
//! the lag gauges rising while a replica's replay is paused.

use crate::common::cluster::{free_port, APP_PASSWORD};
use crate::common::console::{metric, scrape_async};
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_workload_and_replica_lag() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .unwrap();
    let su = cluster.superuser(cluster.primary(), "app").await;
    su.batch_execute("CREATE TABLE m (id int primary key); GRANT ALL ON m TO app;")
        .await
        .unwrap();
    cluster.wait_replicas_caught_up().await;
    let port = free_port();
    let config = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .server(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .routing("read_your_writes = \"off\"")
        .routing("monitor_interval = \"50ms\"")
        .build();
    let router = Pgrouter::start(&config);
    let client = router.connect("app", APP_PASSWORD, "app").await;

    for id in 0..5 {
        client
            .simple_query(&format!("INSERT INTO m VALUES ({id})"))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        client.simple_query("SELECT count(*) FROM m").await.unwrap();
    }
    let error = client.simple_query("SELECT * FROM no_such_table").await;
    assert!(error.is_err());

    let replica = [("node", "replica1"), ("route", "replica")];
    let primary = [("node", "primary"), ("route", "primary")];
    eventually(DEADLINE, "reads and writes counted per node", || async {
        let body = scrape_async(port).await;
        metric(&body, "pgrouter_queries_total", &replica) >= 20.0
            && metric(&body, "pgrouter_queries_total", &primary) >= 5.0
            && metric(&body, "pgrouter_transactions_total", &primary) >= 5.0
    })
    .await;
    let body = scrape_async(port).await;
    let decisions = |reason| {
        metric(
            &body,
            "pgrouter_routing_decisions_total",
            &[("reason", reason)],
        )
    };
    assert!(decisions("read") >= 20.0, "{body}");
    assert!(decisions("write") >= 5.0, "{body}");
    assert!(
        metric(&body, "pgrouter_errors_total", &[("class", "42")]) >= 1.0,
        "{body}"
    );
    for name in ["pgrouter_bytes_received_total", "pgrouter_bytes_sent_total"] {
        assert!(
            metric(&body, name, &[("database", "app"), ("user", "app")]) > 0.0,
            "{name}"
        );
    }
    let opened = metric(&body, "pgrouter_server_connections_opened_total", &[]);
    assert!(opened >= 2.0, "a connection to each node: {opened}");
    assert_eq!(
        metric(&body, "pgrouter_node_up", &[("node", "primary")]),
        1.0
    );
    assert_eq!(
        metric(&body, "pgrouter_node_primary", &[("node", "primary")]),
        1.0
    );
    assert_eq!(
        metric(&body, "pgrouter_node_primary", &[("node", "replica1")]),
        0.0
    );
    assert!(
        metric(
            &body,
            "pgrouter_query_duration_seconds_count",
            &[("node", "replica1")]
        ) >= 20.0
    );
    assert!(metric(&body, "pgrouter_checkout_wait_seconds_count", &[]) >= 25.0);
    assert_eq!(
        metric(
            &body,
            "pgrouter_clients",
            &[("state", "idle"), ("user", "app")]
        ),
        1.0,
        "one idle client"
    );
    assert_eq!(
        metric(
            &body,
            "pgrouter_server_connections",
            &[("node", "replica1"), ("state", "active")]
        ),
        0.0
    );

    // Replay paused while the primary goes on writing: the lag gauges rise.
    let replica_su = cluster.superuser(&cluster.replicas()[0], "postgres").await;
    replica_su
        .simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let mut id = 100;
    eventually(DEADLINE, "lag gauges rise while replay is paused", || {
        id += 1;
        let su = &su;
        async move {
            su.simple_query(&format!("INSERT INTO m VALUES ({id})"))
                .await
                .unwrap();
            let body = scrape_async(port).await;
            metric(&body, "pgrouter_replica_lag_bytes", &[("node", "replica1")]) > 0.0
                && metric(
                    &body,
                    "pgrouter_replica_lag_seconds",
                    &[("node", "replica1")],
                ) > 0.0
        }
    })
    .await;
    replica_su
        .simple_query("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    eventually(DEADLINE, "lag gauges fall once replay resumes", || async {
        let body = scrape_async(port).await;
        metric(&body, "pgrouter_replica_lag_bytes", &[("node", "replica1")]) == 0.0
    })
    .await;
}
