//! Read/write routing over the shared cluster's primary and two replicas:
//! which statements go where, balancing, read-only transactions, hints.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use std::collections::HashMap;
use tokio_postgres::Client;

/// The first column of the first row a simple query returns.
pub async fn first_value(client: &Client, sql: &str) -> String {
    crate::common::console::first_row(client, sql)
        .await
        .swap_remove(0)
}

/// The port of the node that served `sql` (its first column must be
/// inet_server_port()).
pub async fn served_by(client: &Client, sql: &str) -> u16 {
    first_value(client, sql)
        .await
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: not a port: {e}"))
}

pub fn replica_ports(cluster: &Cluster) -> Vec<u16> {
    cluster.replicas().iter().map(|r| r.port).collect()
}

async fn setup(
    prefix: &str,
    configure: impl FnOnce(RouterConfig) -> RouterConfig,
) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let su = cluster.superuser(cluster.primary(), &db).await;
    su.batch_execute(
        "CREATE TABLE t (id int primary key, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE SEQUENCE s;
         CREATE FUNCTION f_ins() RETURNS int LANGUAGE sql AS
           'INSERT INTO t VALUES ((SELECT max(id) + 1 FROM t), ''f'') RETURNING 1';
         CREATE FUNCTION f_pure(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i + 1';
         GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app;",
    )
    .await
    .unwrap();
    cluster.wait_replicas_caught_up().await;
    let config = configure(
        RouterConfig::new(cluster.primary(), &db)
            .replicas(cluster.replicas())
            .routing("read_your_writes = \"off\""),
    )
    .build();
    (db, Pgrouter::start(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_every_write_to_the_primary() {
    let cluster = Cluster::shared();
    let (db, router) = setup("rw", |c| c.routing("balance = \"round_robin\"")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let primary = cluster.primary().port;
    let replicas = replica_ports(cluster);

    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(served_by(&client, "SELECT inet_server_port()").await);
    }
    for port in &replicas {
        assert!(seen.contains(port), "replica {port} got no read: {seen:?}");
    }
    assert!(
        !seen.contains(&primary),
        "a read went to the primary: {seen:?}"
    );
    // Extended protocol reads too.
    let row = client
        .query_typed_one(
            "SELECT inet_server_port()::int4, count(*)::int4 FROM t",
            &[],
        )
        .await
        .unwrap();
    assert!(replicas.contains(&(row.get::<_, i32>(0) as u16)));

    let primary_cases = [
        "INSERT INTO t VALUES (100, 'x') RETURNING inet_server_port()",
        "UPDATE t SET v = 'y' WHERE id = 100 RETURNING inet_server_port()",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR SHARE",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR KEY SHARE",
        "SELECT inet_server_port() FROM (SELECT * FROM t WHERE id = 1 FOR UPDATE) s",
        "SELECT inet_server_port() WHERE EXISTS (SELECT 1 FROM t FOR SHARE)",
        "WITH d AS (DELETE FROM t WHERE id = 100 RETURNING 1) SELECT inet_server_port()",
        "WITH a AS (SELECT 1), b AS (UPDATE t SET v = v WHERE id = 1 RETURNING 1) SELECT inet_server_port()",
        "SELECT inet_server_port(), nextval('s')",
        "SELECT inet_server_port(), f_ins()",
        "/* pgrouter: primary */ SELECT inet_server_port()",
        "SELECT inet_server_port() -- pgrouter: primary",
        "SELECT inet_server_port(); INSERT INTO t VALUES (101, 'm'); SELECT 1",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT inet_server_port(); COMMIT",
        "BEGIN; SELECT inet_server_port(); COMMIT",
    ];
    for sql in primary_cases {
        let port = served_by(&client, sql).await;
        assert_eq!(port, primary, "{sql} ran on {port}");
    }
    // Session state pins the client to the primary connection (last: the
    // client stays there).
    let pinned = router.connect("app", APP_PASSWORD, &db).await;
    let sql = "SELECT inet_server_port(), set_config('work_mem', '8MB', false)";
    assert_eq!(served_by(&pinned, sql).await, primary);
    assert_eq!(
        served_by(&pinned, "SELECT inet_server_port()").await,
        primary
    );
    // A pure function does not force the primary.
    let port = served_by(&client, "SELECT inet_server_port(), f_pure(1)").await;
    assert!(replicas.contains(&port), "f_pure ran on {port}");
    // A replica hint sends even a locking read... no: a hint wins.
    let port = served_by(&client, "/* pgrouter: replica */ SELECT inet_server_port()").await;
    assert!(replicas.contains(&port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_transactions_run_on_the_primary_and_read_only_ones_on_one_replica() {
    let cluster = Cluster::shared();
    let (db, router) = setup("tx", |c| c.routing("balance = \"round_robin\"")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let primary = cluster.primary().port;
    let replicas = replica_ports(cluster);

    // BEGIN as its own message: deferred until the first statement.
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        primary
    );
    client
        .simple_query("INSERT INTO t VALUES (200, 'tx')")
        .await
        .unwrap();
    client.simple_query("COMMIT").await.unwrap();

    // An empty transaction needs no server at all.
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("ROLLBACK").await.unwrap();

    for begin in [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    ] {
        client.simple_query(begin).await.unwrap();
        let first = served_by(&client, "SELECT inet_server_port()").await;
        let pid = first_value(&client, "SELECT pg_backend_pid()").await;
        for _ in 0..5 {
            assert_eq!(served_by(&client, "SELECT inet_server_port()").await, first);
        }
        assert_eq!(first_value(&client, "SELECT pg_backend_pid()").await, pid);
        assert!(replicas.contains(&first), "{begin} ran on {first}");
        client.simple_query("COMMIT").await.unwrap();
    }

    // BEGIN, then SET TRANSACTION READ ONLY as the first statement.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("SET TRANSACTION READ ONLY")
        .await
        .unwrap();
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(
        replicas.contains(&port),
        "SET TRANSACTION READ ONLY ran on {port}"
    );
    client.simple_query("COMMIT").await.unwrap();

    // tokio-postgres' own transactions (BEGIN through the extended
    // protocol's neighbour, simple query) work and see their writes.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (201, 'in tx')", &[])
        .await
        .unwrap();
    let row = tx
        .query_one("SELECT v FROM t WHERE id = 201", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "in tx");
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_policies_spread_reads_as_they_say() {
    let cluster = Cluster::shared();
    let replicas = replica_ports(cluster);

    // Weighted round robin, 3:1.
    let (db, router) = setup("wrr", |c| {
        c.routing("balance = \"weighted_round_robin\"")
            .weight("replica1", 3)
            .weight("replica2", 1)
    })
    .await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..40 {
        *counts
            .entry(served_by(&client, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    assert_eq!(counts.get(&replicas[0]), Some(&30), "{counts:?}");
    assert_eq!(counts.get(&replicas[1]), Some(&10), "{counts:?}");
    drop(router);

    // Least connections: a read-only transaction holds replica A, so the
    // next reads go to B.
    let (db, router) = setup("leastconn", |c| {
        c.routing("balance = \"least_connections\"")
    })
    .await;
    let holder = router.connect("app", APP_PASSWORD, &db).await;
    holder.simple_query("BEGIN READ ONLY").await.unwrap();
    let held = served_by(&holder, "SELECT inet_server_port()").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    for _ in 0..5 {
        let port = served_by(&client, "SELECT inet_server_port()").await;
        assert_ne!(port, held, "least_connections chose the busy replica");
        assert!(replicas.contains(&port));
    }
    holder.simple_query("COMMIT").await.unwrap();
    drop(router);

    // ip_hash: one client address always lands on the same replica.
    let (db, router) = setup("iphash", |c| c.routing("balance = \"ip_hash\"")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let first = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&first));
    for _ in 0..10 {
        assert_eq!(served_by(&client, "SELECT inet_server_port()").await, first);
    }
    drop(router);

    // least_response_time: reads stay on replicas.
    let (db, router) = setup("lrt", |c| c.routing("balance = \"least_response_time\"")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    for _ in 0..10 {
        let port = served_by(&client, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&port));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pin_hints_and_set_route_override() {
    let cluster = Cluster::shared();
    let primary = cluster.primary().port;
    let replicas = replica_ports(cluster);
    let (db, router) = setup("pin", |c| c).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    client
        .simple_query("SET pgrouter.route = primary")
        .await
        .unwrap();
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        primary
    );
    client
        .simple_query("SET pgrouter.route TO 'auto'")
        .await
        .unwrap();
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&port));
    drop(router);

    // A database pinned to the primary; read_write_split off.
    let (db, router) = setup("pindb", |c| c.database_line("route = \"primary\"")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        primary
    );
    drop(router);
    let (db, router) = setup("nosplit", |c| c.routing("read_write_split = false")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        primary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_write_is_caught_by_the_read_only_safety_net() {
    let cluster = Cluster::shared();
    let primary = cluster.primary().port;
    // f_ins is volatile and inserts; listing it as a read function sends
    // it to a replica, which refuses with 25006.
    let (db, router) = setup("safety", |c| c.routing("read_functions = [\"f_ins\"]")).await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let sql = "SELECT inet_server_port(), f_ins()";
    assert_eq!(served_by(&client, sql).await, primary);
    assert!(router.wait_for_log("classifier missed", std::time::Duration::from_secs(5)));
    // Learned: the next one goes to the primary straight away.
    assert_eq!(served_by(&client, sql).await, primary);
    let count = first_value(
        &client,
        "/* pgrouter: primary */ SELECT count(*) FROM t WHERE v = 'f'",
    )
    .await;
    assert_eq!(count, "2");
}
