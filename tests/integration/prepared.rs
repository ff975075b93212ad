//! Named prepared statements in transaction mode: many clients, few server
//! connections, statements used across transactions and connections.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use std::process::Command;
use tokio_postgres::error::SqlState;

async fn router(prefix: &str, pool: usize, routing: bool) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let mut config = RouterConfig::new(cluster.primary(), &db)
        .pool(&format!("max_connections = {pool}"))
        .pool("checkout_timeout = \"30s\"");
    if routing {
        config = config.replicas(cluster.replicas());
    }
    (db, Pgrouter::start(&config.build()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statements_are_reused_by_fifty_clients_over_five_connections() {
    let (db, router) = router("prep", 5, false).await;
    let setup = router.connect("app", APP_PASSWORD, &db).await;
    setup
        .batch_execute("CREATE TABLE kv (k int primary key, v int)")
        .await
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..50 {
        let client = router.connect("app", APP_PASSWORD, &db).await;
        workers.push(tokio::spawn(async move {
            // Prepared once (Parse of a named statement), used across many
            // transactions that land on any of the five connections.
            let insert = client
                .prepare("INSERT INTO kv VALUES ($1, $2)")
                .await
                .unwrap();
            let select = client
                .prepare("SELECT v FROM kv WHERE k = $1")
                .await
                .unwrap();
            let add = client.prepare("SELECT $1::int4 + $2::int4").await.unwrap();
            for i in 0..20 {
                let k = worker * 1000 + i;
                client.execute(&insert, &[&k, &(k * 2)]).await.unwrap();
                let row = client.query_one(&select, &[&k]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), k * 2);
                let row = client.query_one(&add, &[&k, &1]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), k + 1);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let row = setup
        .query_one("SELECT count(*)::int4 FROM kv", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_close_and_unknown_statements_behave_as_on_postgres() {
    let (db, router) = router("prepclose", 2, false).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let statement = client
        .prepare("SELECT $1::text AS greeting, 42 AS answer")
        .await
        .unwrap();
    // Describe gave the columns and parameter types.
    assert_eq!(statement.columns().len(), 2);
    assert_eq!(statement.columns()[0].name(), "greeting");
    assert_eq!(statement.params().len(), 1);
    let row = client.query_one(&statement, &[&"hi"]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "hi");
    // Dropping the statement closes it; using it by name afterwards is
    // refused with 26000, as PostgreSQL does.
    drop(statement);
    let error = client.simple_query("EXECUTE s0").await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{error}"
    );
    // Another statement of the same text works (a fresh client name).
    let again = client
        .prepare("SELECT $1::text AS greeting, 42 AS answer")
        .await
        .unwrap();
    let row = client.query_one(&again, &[&"again"]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "again");
}

fn pgbench(url: &str, args: &[&str]) -> String {
    let output = Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pgbench {args:?}:\n{text}");
    if args.contains(&"-i") {
        return text;
    }
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|n| n.split_whitespace().next())
        .unwrap_or_else(|| panic!("no failed count in:\n{text}"));
    assert_eq!(failed, "0", "pgbench {args:?}:\n{text}");
    text
}

/// pgbench -M prepared, 50 clients over 5 server connections: read-write
/// on the primary, and select-only through routing to the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_fifty_clients_over_five_connections() {
    let cluster = Cluster::shared();
    let seconds = std::env::var("PGROUTER_PGBENCH_SECONDS").unwrap_or_else(|_| "20".into());
    let (db, router) = router("pgbprep", 5, false).await;
    let url = router.url("app", APP_PASSWORD, &db);
    let init_url = url.clone();
    tokio::task::spawn_blocking(move || pgbench(&init_url, &["-i", "-q", "-s", "1"]))
        .await
        .unwrap();
    let run_url = url.clone();
    let secs = seconds.clone();
    tokio::task::spawn_blocking(move || {
        pgbench(
            &run_url,
            &["-M", "prepared", "-c", "50", "-j", "2", "-T", &secs, "-n"],
        )
    })
    .await
    .unwrap();
    drop(router);

    cluster.wait_replicas_caught_up().await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .replicas(cluster.replicas())
        .pool("max_connections = 5")
        .pool("checkout_timeout = \"30s\"")
        .build();
    let router = Pgrouter::start(&config);
    let url = router.url("app", APP_PASSWORD, &db);
    tokio::task::spawn_blocking(move || {
        pgbench(
            &url,
            &[
                "-M", "prepared", "-S", "-c", "50", "-j", "2", "-T", &seconds, "-n",
            ],
        )
    })
    .await
    .unwrap();
}
