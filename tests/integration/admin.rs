//! The admin console (tokio-postgres' simple query protocol and psql),
//! PAUSE/RESUME around a transaction in flight, and EXPLAIN ROUTE on an
//! application's connection.

use crate::auth::psql;
use crate::common::cluster::APP_PASSWORD;
use crate::common::config::ADMIN_PASSWORD;
use crate::common::console::rows;
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use crate::routing::first_value;
use std::time::Duration;
use tokio_postgres::error::SqlState;

const DEADLINE: Duration = Duration::from_secs(20);

async fn setup(prefix: &str) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = crate::lifecycle::database(prefix).await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .replicas(cluster.replicas())
        .admin()
        .build();
    (db, Pgrouter::start(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_pools_clients_servers_nodes_stats_config_and_version() {
    let (db, router) = setup("console").await;
    let app = router.connect("app", APP_PASSWORD, &db).await;
    app.simple_query("INSERT INTO t VALUES (1)").await.unwrap();
    app.simple_query("SELECT * FROM t").await.unwrap();
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;

    let pools = rows(&console, "SHOW POOLS").await;
    let pool = pools
        .iter()
        .find(|p| p["database"] == db && p["user"] == "app")
        .unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!(pool["cl_idle"], "1", "{pool:?}");
    assert_eq!(pool["max_connections"], "5");
    assert!(pool["sv_idle"].parse::<u32>().unwrap() >= 1, "{pool:?}");

    let clients = rows(&console, "SHOW CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|c| c["database"] == db && c["state"] == "idle"),
        "{clients:?}"
    );
    assert!(clients.iter().any(|c| c["database"] == "pgrouter"));

    let servers = rows(&console, "SHOW SERVERS;").await;
    assert!(servers
        .iter()
        .any(|s| s["node"] == "primary" && s["state"] == "idle"));
    assert!(servers.iter().all(|s| !s["backend_pid"].is_empty()));

    let nodes = rows(&console, "show nodes").await;
    let role = |name: &str| {
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| (n["role"].clone(), n["healthy"].clone()))
    };
    assert_eq!(role("primary"), Some(("primary".into(), "true".into())));
    assert_eq!(role("replica1"), Some(("replica".into(), "true".into())));
    assert_eq!(nodes.len(), 3);

    let stats = rows(&console, "SHOW STATS").await;
    let queries: u64 = stats
        .iter()
        .filter(|s| s["database"] == db)
        .map(|s| s["total_queries"].parse::<u64>().unwrap())
        .sum();
    assert!(queries >= 2, "{stats:?}");

    let config = rows(&console, "SHOW CONFIG").await;
    assert!(config
        .iter()
        .any(|c| c["key"] == "pool.max_connections" && c["value"] == "5"));
    let version = first_value(&console, "SHOW VERSION").await;
    assert!(version.starts_with("pgrouter "), "{version}");

    let unknown = console.simple_query("SHOW WHATEVER").await.unwrap_err();
    assert_eq!(unknown.code(), Some(&SqlState::SYNTAX_ERROR), "{unknown:?}");
    assert!(
        unknown.to_string().contains("SHOW HELP") || format!("{unknown:?}").contains("SHOW HELP")
    );
    // The extended protocol is refused, and the console stays usable.
    let extended = console.query("SHOW NODES", &[]).await.unwrap_err();
    assert_eq!(
        extended.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{extended:?}"
    );
    let explained = rows(&console, "EXPLAIN ROUTE DELETE FROM t").await;
    assert_eq!(explained[0]["route"], "primary");

    // Not an admin: refused at login.
    let Err(refused) = router.try_connect("app", APP_PASSWORD, "pgrouter").await else {
        panic!("app may not use the console");
    };
    assert_eq!(
        refused.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );

    // psql shows the console's answers as ordinary result sets.
    let url = router.url("admin", ADMIN_PASSWORD, "pgrouter");
    let output = tokio::task::spawn_blocking(move || psql(&url, "SHOW NODES"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("replica2|"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_running_transaction_and_holds_new_ones_until_resume() {
    let (db, router) = setup("pause").await;
    let in_flight = router.connect("app", APP_PASSWORD, &db).await;
    in_flight
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let watcher = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;

    let pause_sql = format!("PAUSE {db}");
    let pause =
        tokio::spawn(async move { console.simple_query(&pause_sql).await.map(|_| console) });
    let db_name = db.clone();
    eventually(DEADLINE, "SHOW POOLS says paused", || {
        let (watcher, db) = (&watcher, &db_name);
        async move {
            rows(watcher, "SHOW POOLS")
                .await
                .iter()
                .any(|p| &p["database"] == db && p["user"] == "app" && p["paused"] == "true")
        }
    })
    .await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");

    // A new transaction is held, not refused.
    let held = router.connect("app", APP_PASSWORD, &db).await;
    let held_query = tokio::spawn(async move {
        let count = first_value(&held, "SELECT count(*) FROM t").await;
        (held, count)
    });
    eventually(DEADLINE, "the new client waits", || {
        let (watcher, db) = (&watcher, &db_name);
        async move {
            rows(watcher, "SHOW CLIENTS")
                .await
                .iter()
                .any(|c| &c["database"] == db && c["state"] == "waiting")
        }
    })
    .await;

    // The running transaction finishes; then PAUSE returns.
    in_flight
        .simple_query("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    in_flight.simple_query("COMMIT").await.unwrap();
    let console = tokio::time::timeout(DEADLINE, pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap()
        .expect("PAUSE succeeds");
    assert!(!held_query.is_finished(), "still held while paused");

    console.simple_query(&format!("RESUME {db}")).await.unwrap();
    let (_held, count) = tokio::time::timeout(DEADLINE, held_query)
        .await
        .expect("the held query runs after RESUME")
        .unwrap();
    // Routed to a replica, which may not have replayed the commit yet.
    assert!(count == "2" || count == "0", "{count}");
    let pools = rows(&watcher, "SHOW POOLS").await;
    assert!(pools.iter().all(|p| p["paused"] == "false"), "{pools:?}");
    let missing = console.simple_query("PAUSE no_such_db").await.unwrap_err();
    assert_eq!(missing.code(), Some(&SqlState::INVALID_CATALOG_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_route_answers_without_running_the_statement() {
    let (db, router) = setup("explain").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;

    let write = rows(&client, "EXPLAIN ROUTE INSERT INTO t VALUES (42)").await;
    assert_eq!(write.len(), 1);
    assert_eq!(write[0]["node"], "primary");
    assert_eq!(write[0]["route"], "primary");
    assert_eq!(write[0]["reason"], "write");
    let su = Cluster::shared()
        .superuser(Cluster::shared().primary(), &db)
        .await;
    assert_eq!(
        first_value(&su, "SELECT count(*) FROM t").await,
        "0",
        "not run"
    );

    let read = rows(&client, "explain route SELECT * FROM t").await;
    assert_eq!(read[0]["route"], "replica");
    assert_eq!(read[0]["reason"], "read");
    assert!(read[0]["node"].starts_with("replica"), "{read:?}");
    assert!(read[0]["detail"].contains("lag"), "{read:?}");

    let hinted = rows(&client, "EXPLAIN ROUTE /* pgrouter:primary */ SELECT 1").await;
    assert_eq!(hinted[0]["reason"], "hint");
    assert_eq!(hinted[0]["route"], "primary");

    // The extended protocol on the unnamed statement (one batch).
    let typed = client
        .query_typed("EXPLAIN ROUTE DELETE FROM t", &[])
        .await
        .unwrap();
    assert_eq!(typed.len(), 1);
    assert_eq!(typed[0].get::<_, &str>("reason"), "write");
    assert_eq!(typed[0].get::<_, &str>("route"), "primary");
    assert_eq!(
        first_value(&su, "SELECT count(*) FROM t").await,
        "0",
        "not run"
    );

    // Inside a transaction pgrouter has not yet sent anywhere (a plain
    // BEGIN waits for its first statement), a read-write one is explained.
    client.simple_query("BEGIN").await.unwrap();
    let in_transaction = rows(&client, "EXPLAIN ROUTE UPDATE t SET id = 1").await;
    assert_eq!(in_transaction[0]["reason"], "write");
    client.simple_query("ROLLBACK").await.unwrap();
}
