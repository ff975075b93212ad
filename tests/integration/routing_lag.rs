//! Routing that depends on replication state: read-your-writes, lagging
//! replicas, fallback, a replica going away, and a promotion. Each test
//! pauses, stops or promotes nodes, so each has a cluster of its own.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use crate::routing::{first_value, replica_ports, served_by};
use std::process::Command;
use std::time::Duration;
use tokio_postgres::error::SqlState;

const DEADLINE: Duration = Duration::from_secs(20);

pub async fn private_cluster(replicas: usize) -> Cluster {
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(replicas))
        .await
        .unwrap();
    let su = cluster.superuser(cluster.primary(), "app").await;
    su.batch_execute(
        "CREATE TABLE t (id int primary key, v text);
         GRANT ALL ON t TO app;",
    )
    .await
    .unwrap();
    cluster.wait_replicas_caught_up().await;
    cluster
}

async fn pause_replay(cluster: &Cluster, replica: usize, paused: bool) {
    let su = cluster
        .superuser(&cluster.replicas()[replica], "postgres")
        .await;
    let sql = if paused {
        "SELECT pg_wal_replay_pause()"
    } else {
        "SELECT pg_wal_replay_resume()"
    };
    su.simple_query(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsn_mode_never_misses_a_session_own_write() {
    let cluster = private_cluster(2).await;
    pause_replay(&cluster, 0, true).await;
    let config = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .routing("read_your_writes = \"lsn\"")
        .routing("balance = \"round_robin\"")
        .routing("monitor_interval = \"20ms\"")
        .routing("max_replica_lag = \"1h\"")
        .routing("max_replica_lag_bytes = \"1GB\"")
        .build();
    let router = Pgrouter::start(&config);
    let writer = router.connect("app", APP_PASSWORD, "app").await;
    let reader = router.connect("app", APP_PASSWORD, "app").await;
    let replicas = replica_ports(&cluster);
    let mut reads_on_replicas = 0;
    for id in 0..1000 {
        writer
            .simple_query(&format!("INSERT INTO t VALUES ({id}, 'w')"))
            .await
            .unwrap();
        let found = first_value(&writer, &format!("SELECT count(*) FROM t WHERE id = {id}")).await;
        assert_eq!(found, "1", "round {id}: the session missed its own write");
        if id % 50 == 0 {
            let port = served_by(&reader, "SELECT inet_server_port()").await;
            assert!(
                replicas.contains(&port),
                "a session that never wrote read from {port}"
            );
            reads_on_replicas += 1;
        }
    }
    assert_eq!(reads_on_replicas, 20);
    // Reads of the writer that a caught-up replica can serve go there.
    eventually(
        DEADLINE,
        "the writer reads from the unpaused replica again",
        || async { served_by(&writer, "SELECT inet_server_port()").await == replicas[1] },
    )
    .await;
    pause_replay(&cluster, 0, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_window_modes_send_reads_after_a_write_to_the_primary() {
    let cluster = private_cluster(1).await;
    let primary = cluster.primary().port;
    let replica = cluster.replicas()[0].port;
    for mode in ["session", "window"] {
        let config = RouterConfig::new(cluster.primary(), "app")
            .replicas(cluster.replicas())
            .routing(&format!("read_your_writes = \"{mode}\""))
            .routing("ryw_window = \"500ms\"")
            .build();
        let router = Pgrouter::start(&config);
        let client = router.connect("app", APP_PASSWORD, "app").await;
        assert_eq!(
            served_by(&client, "SELECT inet_server_port()").await,
            replica
        );
        let id = if mode == "session" { 5000 } else { 6000 };
        client
            .simple_query(&format!("INSERT INTO t VALUES ({id}, '{mode}')"))
            .await
            .unwrap();
        assert_eq!(
            served_by(&client, "SELECT inet_server_port()").await,
            primary
        );
        let other = router.connect("app", APP_PASSWORD, "app").await;
        assert_eq!(
            served_by(&other, "SELECT inet_server_port()").await,
            replica
        );
        if mode == "window" {
            eventually(
                DEADLINE,
                "reads return to the replica after the window",
                || async { served_by(&client, "SELECT inet_server_port()").await == replica },
            )
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(
                served_by(&client, "SELECT inet_server_port()").await,
                primary
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replicas_get_no_reads_and_fallback_decides() {
    let cluster = private_cluster(2).await;
    let primary = cluster.primary().port;
    let replicas = replica_ports(&cluster);
    let base = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .routing("read_your_writes = \"off\"")
        .routing("balance = \"round_robin\"")
        .routing("monitor_interval = \"50ms\"")
        .routing("max_replica_lag = \"300ms\"");
    let router = Pgrouter::start(&base.build());
    let client = router.connect("app", APP_PASSWORD, "app").await;
    let writer = cluster.superuser(cluster.primary(), "app").await;

    pause_replay(&cluster, 0, true).await;
    let mut id = 10_000;
    eventually(DEADLINE, "the paused replica stops getting reads", || {
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id}, 'lag')");
        let (writer, client, other) = (&writer, &client, replicas[1]);
        async move {
            writer.simple_query(&sql).await.unwrap();
            let a = served_by(client, "SELECT inet_server_port()").await;
            let b = served_by(client, "SELECT inet_server_port()").await;
            a == other && b == other
        }
    })
    .await;

    // Both behind: reads fall back to the primary.
    pause_replay(&cluster, 1, true).await;
    eventually(DEADLINE, "reads fall back to the primary", || {
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id}, 'lag')");
        let (writer, client) = (&writer, &client);
        async move {
            writer.simple_query(&sql).await.unwrap();
            served_by(client, "SELECT inet_server_port()").await == primary
        }
    })
    .await;
    drop(router);

    // fallback = error: a clear ErrorResponse instead.
    let router = Pgrouter::start(&base.routing("fallback = \"error\"").build());
    let client = router.connect("app", APP_PASSWORD, "app").await;
    eventually(DEADLINE, "reads are refused with fallback = error", || {
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id}, 'lag')");
        let (writer, client) = (&writer, &client);
        async move {
            writer.simple_query(&sql).await.unwrap();
            match client.simple_query("SELECT inet_server_port()").await {
                Err(error) => {
                    assert_eq!(error.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{error}");
                    true
                }
                Ok(_) => false,
            }
        }
    })
    .await;
    // Writes still work, and caught-up replicas serve reads again.
    client
        .simple_query("INSERT INTO t VALUES (-1, 'still writable')")
        .await
        .unwrap();
    pause_replay(&cluster, 0, false).await;
    pause_replay(&cluster, 1, false).await;
    eventually(DEADLINE, "replicas serve reads once caught up", || async {
        client
            .simple_query("SELECT inet_server_port()")
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_under_pgbench_fails_no_transaction() {
    let cluster = private_cluster(2).await;
    let replicas = replica_ports(&cluster);
    let config = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .pool("max_connections = 4")
        .pool("checkout_timeout = \"30s\"")
        .routing("balance = \"round_robin\"")
        .routing("ban_time = \"2s\"")
        .routing("monitor_interval = \"100ms\"")
        .build();
    let router = Pgrouter::start(&config);
    let url = router.url("app", APP_PASSWORD, "app");
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-n"])
        .arg(cluster.primary().conn_str("postgres", "", "app"))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    cluster
        .superuser(cluster.primary(), "app")
        .await
        .batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .await
        .unwrap();
    cluster.wait_replicas_caught_up().await;

    let seconds = std::env::var("PGROUTER_PGBENCH_SECONDS").unwrap_or_else(|_| "20".into());
    let bench = std::thread::spawn(move || {
        Command::new("pgbench")
            .args(["-S", "-c", "8", "-j", "2", "-n", "-T", &seconds])
            .arg(&url)
            .output()
            .unwrap()
    });
    // Let it run, then take a replica away and bring it back.
    let client = router.connect("app", APP_PASSWORD, "app").await;
    eventually(DEADLINE, "pgbench is running", || async {
        first_value(&client, "/* pgrouter: primary */ SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrouter'").await != "0"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replica = cluster.replicas()[0].clone();
    tokio::task::block_in_place(|| cluster.stop_node(&replica));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.start_node(&replica));

    let output = tokio::task::spawn_blocking(move || bench.join().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|n| n.split_whitespace().next())
        .unwrap_or_else(|| panic!("no failed count in:\n{text}"));
    assert_eq!(failed, "0", "{text}");

    // The replica rejoins within ban_time plus an interval (and startup).
    eventually(
        DEADLINE,
        "the restarted replica serves reads again",
        || async { served_by(&client, "SELECT inet_server_port()").await == replicas[0] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_with_role_auto() {
    let cluster = private_cluster(1).await;
    let old_primary = cluster.primary().clone();
    let replica = cluster.replicas()[0].clone();
    let config = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .role("primary", "auto")
        .role("replica1", "auto")
        .routing("monitor_interval = \"100ms\"")
        .routing("ban_time = \"1s\"")
        .build();
    let router = Pgrouter::start(&config);
    let client = router.connect("app", APP_PASSWORD, "app").await;
    assert_eq!(
        served_by(
            &client,
            "INSERT INTO t VALUES (1, 'before') RETURNING inet_server_port()"
        )
        .await,
        old_primary.port
    );
    // Asynchronous replication: the row reaches the replica before the crash.
    cluster.wait_replicas_caught_up().await;
    tokio::task::block_in_place(|| cluster.kill_node(&old_primary));
    tokio::task::block_in_place(|| cluster.promote_node(&replica));
    let mut id = 2;
    eventually(DEADLINE, "writes reach the promoted replica", || {
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id}, 'after') RETURNING inet_server_port()");
        let client = &client;
        async move {
            match client.simple_query(&sql).await {
                Ok(messages) => messages.iter().any(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        row.get(0) == Some(replica.port.to_string().as_str())
                    }
                    _ => false,
                }),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(router.wait_for_log("node is now the primary", Duration::from_secs(5)));
    // And the row written before the failover is still readable.
    assert_eq!(
        first_value(&client, "SELECT count(*) FROM t WHERE v = 'before'").await,
        "1"
    );
}
