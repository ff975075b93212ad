//! Pool behaviour against a real PostgreSQL: warm-up, limits, waiting,
//! session and transaction mode, dirty clients, dying and expiring servers.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(15);

/// Server connections pgrouter holds to `db` as user app.
async fn backends(su: &Client, db: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = 'app' \
         AND application_name = 'pgrouter'",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_opens_min_connections_before_accepting_clients() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("warm").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("min_connections = 3")
        .build();
    let _router = Pgrouter::start(&config);
    // Pgrouter::start returns once pgrouter listens: the pool is warm now.
    let su = cluster.superuser(cluster.primary(), "postgres").await;
    assert_eq!(backends(&su, &db).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_never_exceeds_max_connections() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("maxconn").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 2")
        .pool("checkout_timeout = \"30s\"")
        .build();
    let router = Pgrouter::start(&config);
    let su = cluster.superuser(cluster.primary(), "postgres").await;
    let mut workers = Vec::new();
    for _ in 0..10 {
        let client = router.connect("app", APP_PASSWORD, &db).await;
        workers.push(tokio::spawn(async move {
            for _ in 0..5 {
                client.simple_query("SELECT pg_sleep(0.02)").await.unwrap();
            }
        }));
    }
    let mut most = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        most = most.max(backends(&su, &db).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(most >= 1, "the workload ran on server connections");
    assert!(
        most <= 2,
        "saw {most} server connections for max_connections = 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_one_connection_between_clients() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("share").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 1")
        .build();
    let router = Pgrouter::start(&config);
    let a = router.connect("app", APP_PASSWORD, &db).await;
    let b = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
    // B waits while A's transaction holds the connection, then runs on it.
    a.simple_query("BEGIN").await.unwrap();
    let pid_in_tx = backend_pid(&a).await;
    let waiting = tokio::spawn(async move { backend_pid(&b).await });
    a.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    assert!(
        !waiting.is_finished(),
        "B ran while A's transaction was open"
    );
    a.simple_query("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), pid_in_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_gives_53300_naming_the_pool_and_the_session_survives() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("timeout").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 1")
        .pool("checkout_timeout = \"300ms\"")
        .build();
    let router = Pgrouter::start(&config);
    let a = router.connect("app", APP_PASSWORD, &db).await;
    let b = router.connect("app", APP_PASSWORD, &db).await;
    // A plain BEGIN holds nothing yet (pgrouter defers it): the first
    // statement of the transaction takes the connection.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    let error = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    let message = error.as_db_error().unwrap().message().to_owned();
    assert!(message.contains(&format!("{db}/app@primary")), "{message}");
    // The extended protocol gets the same answer.
    let error = b.query_typed("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    a.simple_query("COMMIT").await.unwrap();
    assert_eq!(b.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_max_client_connections_get_53300() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("maxclients").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .server("max_client_connections = 2")
        .build();
    let router = Pgrouter::start(&config);
    let a = router.connect("app", APP_PASSWORD, &db).await;
    let b = router.connect("app", APP_PASSWORD, &db).await;
    let Err(error) = router.try_connect("app", APP_PASSWORD, &db).await else {
        panic!("a third client was let in");
    };
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    let message = error.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("too many clients"), "{message}");
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    drop(a);
    // The freed place goes to the next client.
    eventually(DEADLINE, "a place frees up", || async {
        router.try_connect("app", APP_PASSWORD, &db).await.is_ok()
    })
    .await;
}

/// Waits until backend `pid` runs the test's `pg_sleep(30)`.
async fn wait_until_sleeping(su: &Client, pid: i32) {
    eventually(DEADLINE, "the sleep runs", || async {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep(30)%'",
                &[&pid],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
}

/// Connects and returns the client with the task driving its connection,
/// so that a test can cut the socket without a Terminate.
async fn connect_abortable(router: &Pgrouter, db: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(
        &router.conn_str("app", APP_PASSWORD, db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_leaves_no_dirty_connection() {
    for mode in ["transaction", "session"] {
        let cluster = Cluster::shared();
        let db = cluster.create_database("dirty").await;
        let config = RouterConfig::new(cluster.primary(), &db)
            .pool(&format!("mode = \"{mode}\""))
            .pool("max_connections = 1")
            .build();
        let router = Pgrouter::start(&config);
        let setup = router.connect("app", APP_PASSWORD, &db).await;
        setup
            .batch_execute("CREATE TABLE t (id int)")
            .await
            .unwrap();
        drop(setup);

        let (a, a_task) = connect_abortable(&router, &db).await;
        a.batch_execute("BEGIN; INSERT INTO t VALUES (1); SET LOCAL work_mem = '7MB'")
            .await
            .unwrap();
        let pid = backend_pid(&a).await;
        a_task.abort();

        let b = router.connect("app", APP_PASSWORD, &db).await;
        let row = b
            .query_typed_one(
                "SELECT count(*)::int4, current_setting('work_mem'), \
                 pg_backend_pid(), txid_current_if_assigned() IS NULL FROM t",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            0,
            "{mode}: the insert was rolled back"
        );
        assert_ne!(row.get::<_, String>(1), "7MB", "{mode}");
        assert!(
            row.get::<_, bool>(3),
            "{mode}: B is not inside A's transaction"
        );
        // The connection was cleaned and reused, not just thrown away.
        assert_eq!(row.get::<_, i32>(2), pid, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_connection_for_the_next_client() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("session").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("mode = \"session\"")
        .pool("max_connections = 1")
        .pool("checkout_timeout = \"300ms\"")
        .build();
    let router = Pgrouter::start(&config);
    let a = router.connect("app", APP_PASSWORD, &db).await;
    a.simple_query("SET work_mem = '7MB'").await.unwrap();
    let pid = backend_pid(&a).await;

    // The connection is A's for its whole session.
    let b = router.connect("app", APP_PASSWORD, &db).await;
    let error = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    assert_eq!(
        a.simple_query("SHOW work_mem").await.unwrap().len(),
        3,
        "A keeps its session"
    );
    drop(a);

    eventually(
        DEADLINE,
        "B gets A's connection after DISCARD ALL",
        || async {
            match b
                .query_typed_one("SELECT current_setting('work_mem'), pg_backend_pid()", &[])
                .await
            {
                Ok(row) => {
                    assert_ne!(row.get::<_, String>(0), "7MB");
                    assert_eq!(row.get::<_, i32>(1), pid);
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_its_client_abandoned_is_cancelled_and_the_connection_reused() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("midquery").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 1")
        .build();
    let router = Pgrouter::start(&config);
    let (a, a_task) = connect_abortable(&router, &db).await;
    let pid = backend_pid(&a).await;
    let running = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(30)").await });
    let su = cluster.superuser(cluster.primary(), "postgres").await;
    wait_until_sleeping(&su, pid).await;
    let left = std::time::Instant::now();
    a_task.abort();
    running.abort();

    // The backend stops sleeping (cancelled), not after 30 s.
    eventually(DEADLINE, "the abandoned sleep is cancelled", || async {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%'",
                &[&pid],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 0
    })
    .await;
    // B gets the same backend, clean: outside any transaction, and soon.
    let b = router.connect("app", APP_PASSWORD, &db).await;
    let row = b
        .query_one(
            "SELECT pg_backend_pid(), txid_current_if_assigned() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "the cancelled connection is reused"
    );
    assert!(row.get::<_, bool>(1), "no transaction of A's is left open");
    assert!(
        left.elapsed() < std::time::Duration::from_secs(25),
        "B did not wait for the sleep to end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_connections_are_replaced_and_idle_ones_closed() {
    let cluster = Cluster::shared();
    let su = cluster.superuser(cluster.primary(), "postgres").await;

    let db = cluster.create_database("lifetime").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("min_connections = 1")
        .pool("max_connections = 1")
        .pool("server_lifetime = \"1s\"")
        .build();
    let router = Pgrouter::start(&config);
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let first = backend_pid(&client).await;
    eventually(
        DEADLINE,
        "server_lifetime replaces the connection",
        || async { backend_pid(&client).await != first },
    )
    .await;
    drop(router);

    let db = cluster.create_database("idle").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("server_idle_timeout = \"1s\"")
        .build();
    let router = Pgrouter::start(&config);
    let client = router.connect("app", APP_PASSWORD, &db).await;
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(backends(&su, &db).await, 1);
    eventually(
        DEADLINE,
        "server_idle_timeout closes the connection",
        || async { backends(&su, &db).await == 0 },
    )
    .await;
    assert!(router.wait_for_log("server connection closed", DEADLINE));
}

/// These stop and kill servers, so they get a cluster of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_servers_give_08006_and_the_pool_heals() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(0))
        .await
        .unwrap();
    let primary = cluster.primary().clone();
    let config = RouterConfig::new(&primary, "app")
        .pool("min_connections = 1")
        .pool("max_connections = 2")
        .build();
    let router = Pgrouter::start(&config);
    let su = cluster.superuser(&primary, "postgres").await;

    // A backend killed mid-query, without a goodbye: the client gets 08006.
    let victim = router.connect("app", APP_PASSWORD, "app").await;
    let bystander = router.connect("app", APP_PASSWORD, "app").await;
    let pid = backend_pid(&victim).await;
    let running = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    wait_until_sleeping(&su, pid).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let error = running.await.unwrap().unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::CONNECTION_FAILURE),
        "{error:?}"
    );

    // Postgres restarts every backend after a crash; the pool recovers and
    // serves the other client again.
    eventually(DEADLINE, "the bystander is served again", || async {
        bystander.simple_query("SELECT 1").await.is_ok()
    })
    .await;

    // The server stopped entirely: clients get a clear error, pgrouter
    // keeps retrying with backoff, and heals when it is back.
    tokio::task::block_in_place(|| cluster.stop_node(&primary));
    let error = loop {
        // The bystander's connection may die or may be refused a new one.
        match router.try_connect("app", APP_PASSWORD, "app").await {
            Ok(client) => match client.simple_query("SELECT 1").await {
                Err(error) => break error,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Err(error) => break error,
        }
    };
    assert_eq!(
        error.code(),
        Some(&SqlState::CONNECTION_FAILURE),
        "{error:?}"
    );
    assert!(router.wait_for_log("cannot reach min_connections", DEADLINE));
    tokio::task::block_in_place(|| cluster.start_node(&primary));
    eventually(DEADLINE, "clients are served after the restart", || async {
        match router.try_connect("app", APP_PASSWORD, "app").await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_closed_and_its_transaction_rolled_back() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("idle_tx").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 1")
        .pool("checkout_timeout = \"20s\"")
        .pool("idle_transaction_timeout = \"500ms\"")
        .build();
    let router = Pgrouter::start(&config);
    let setup = router.connect("app", APP_PASSWORD, &db).await;
    setup.batch_execute("CREATE TABLE t (a int)").await.unwrap();
    drop(setup);

    let a = router.connect("app", APP_PASSWORD, &db).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // A goes quiet holding the only connection; B is served once A's
    // transaction has been ended for it.
    let b = router.connect("app", APP_PASSWORD, &db).await;
    let started = std::time::Instant::now();
    let row = b
        .query_one("SELECT count(*)::int4 FROM t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "A's insert was rolled back");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "B waited for the idle transaction's timeout, not for A"
    );
    let error = a
        .simple_query("SELECT 1")
        .await
        .expect_err("A's connection was closed");
    let code = error.as_db_error().map(|e| e.code().code().to_owned());
    assert!(
        code.as_deref() == Some("25P03") || error.is_closed(),
        "A hears why, or finds its connection closed: {error:?}"
    );
}
