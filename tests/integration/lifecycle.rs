//! Changing and stopping a running pgrouter: reload (SIGHUP and RELOAD)
//! under a querying client, a refused broken config, SIGTERM's drain, and
//! JSON logs.

use crate::common::cluster::APP_PASSWORD;
use crate::common::config::ADMIN_PASSWORD;
use crate::common::console::rows;
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use crate::routing::first_value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;

const DEADLINE: Duration = Duration::from_secs(20);

/// A new database on the shared cluster with an empty table `t`, replayed
/// by the replicas.
pub async fn database(prefix: &str) -> String {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let su = cluster.superuser(cluster.primary(), &db).await;
    su.batch_execute("CREATE TABLE t (id int primary key); GRANT ALL ON t TO app;")
        .await
        .unwrap();
    cluster.wait_replicas_caught_up().await;
    db
}

fn config(db: &str, max_connections: u32, replica1_weight: u32) -> String {
    let cluster = Cluster::shared();
    RouterConfig::new(cluster.primary(), db)
        .replicas(cluster.replicas())
        .admin()
        .pool(&format!("max_connections = {max_connections}"))
        .routing("balance = \"weighted_round_robin\"")
        .weight("replica1", replica1_weight)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_pools_and_weights_under_a_querying_client() {
    let db = database("reload").await;
    let router = Pgrouter::start(&config(&db, 2, 1));
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                client.simple_query("SELECT count(*) FROM t").await?;
                client
                    .simple_query(&format!("INSERT INTO t VALUES ({id})"))
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tokio_postgres::Error>(())
        })
    };
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let pool_max = |pools: Vec<std::collections::HashMap<String, String>>, db: &str| {
        pools
            .into_iter()
            .find(|p| p["database"] == db && p["user"] == "app")
            .map(|p| p["max_connections"].clone())
    };
    assert_eq!(
        pool_max(rows(&console, "SHOW POOLS").await, &db).as_deref(),
        Some("2")
    );

    // SIGHUP re-reads the file.
    router.rewrite_config(&config(&db, 7, 5));
    router.signal("HUP");
    eventually(DEADLINE, "SHOW POOLS shows max_connections = 7", || {
        let (console, db) = (&console, &db);
        async move { pool_max(rows(console, "SHOW POOLS").await, db).as_deref() == Some("7") }
    })
    .await;
    let nodes = rows(&console, "SHOW NODES").await;
    let weight = |name: &str| {
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["weight"].clone())
    };
    assert_eq!(weight("replica1").as_deref(), Some("5"));
    assert_eq!(weight("replica2").as_deref(), Some("1"));

    // RELOAD from the console does the same; a broken file is refused and
    // the configuration in force stays.
    router.rewrite_config(&config(&db, 3, 2));
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        pool_max(rows(&console, "SHOW POOLS").await, &db).as_deref(),
        Some("3")
    );
    router.rewrite_config("[pool]\nmax_connections = \"many\"\n");
    let refused = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::CONFIG_FILE_ERROR),
        "{refused:?}"
    );
    assert!(
        format!("{refused:?}").contains("\\\"many\\\""),
        "{refused:?}"
    );
    assert_eq!(
        pool_max(rows(&console, "SHOW POOLS").await, &db).as_deref(),
        Some("3")
    );

    // A removed node drains: new requests no longer see it.
    let cluster = Cluster::shared();
    let without_replica2 = RouterConfig::new(cluster.primary(), &db)
        .replicas(&cluster.replicas()[..1])
        .admin()
        .build();
    router.rewrite_config(&without_replica2);
    console.simple_query("RELOAD").await.unwrap();
    let names: Vec<String> = rows(&console, "SHOW NODES")
        .await
        .into_iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, ["primary", "replica1"]);

    let before = done.load(Ordering::Relaxed);
    eventually(DEADLINE, "the client goes on querying", || {
        let done = done.clone();
        async move { done.load(Ordering::Relaxed) > before + 5 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    worker
        .await
        .unwrap()
        .expect("no query failed across the reloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_open_transaction_commit_and_refuses_new_clients() {
    let db = database("sigterm").await;
    let mut router = Pgrouter::start(&config(&db, 5, 1));
    let in_transaction = router.connect("app", APP_PASSWORD, &db).await;
    in_transaction
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let idle = router.connect("app", APP_PASSWORD, &db).await;

    router.signal("TERM");
    eventually(DEADLINE, "new connections are refused", || {
        let (router, db) = (&router, &db);
        async move { router.try_connect("app", APP_PASSWORD, db).await.is_err() }
    })
    .await;
    // The idle client is told why it goes.
    let gone = idle.simple_query("SELECT 1").await.unwrap_err();
    let reason = gone.as_db_error().map(|e| e.code().clone());
    assert!(
        reason.is_none() || reason == Some(SqlState::ADMIN_SHUTDOWN),
        "{gone:?}"
    );

    in_transaction
        .simple_query("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_transaction.simple_query("COMMIT").await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = router.wait_exit(DEADLINE);
        (router, status)
    })
    .await
    .unwrap()
    .1
    .expect("pgrouter exits once its last client has left");
    assert!(status.success(), "{status}");

    let cluster = Cluster::shared();
    let su = cluster.superuser(cluster.primary(), &db).await;
    assert_eq!(first_value(&su, "SELECT count(*) FROM t").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_and_json_logs_are_json() {
    let cluster = Cluster::shared();
    let config = RouterConfig::new(cluster.primary(), "app")
        .server("log_format = \"json\"")
        .build();
    let mut router = Pgrouter::start(&config);
    let client = router.connect("app", APP_PASSWORD, "app").await;
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    router.signal("INT");
    let status = tokio::task::spawn_blocking(move || {
        let status = router.wait_exit(DEADLINE);
        (router, status)
    })
    .await
    .unwrap();
    let (router, status) = status;
    assert!(status.is_some(), "SIGINT does not wait for the transaction");
    let logs = router.logs();
    let listening = logs
        .iter()
        .find(|line| line.contains("listening on"))
        .expect("a listening line");
    assert!(
        listening.starts_with('{') && listening.contains("\"level\":\"INFO\""),
        "{listening}"
    );
}
