//! Smoke tests of the test harness itself (the PostgreSQL cluster only; no
//! pgrouter involved).

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::common::cluster::{APP_PASSWORD, MD5_PASSWORD};
use crate::common::{eventually, Cluster};

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("SELECT current_user")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_accepts_scram_md5_and_trust_logins() {
    let cluster = Cluster::shared();
    let primary = cluster.primary();
    assert_eq!(primary.host, "127.0.0.1");

    let app = cluster
        .try_connect(primary, "app", APP_PASSWORD, "app")
        .await
        .expect("SCRAM login as app");
    assert_eq!(current_user(&app).await, "app");
    // The password really is stored as SCRAM, md5user's as md5.
    let su = cluster.superuser(primary, "postgres").await;
    let rows = su
        .query(
            "SELECT rolname::text, left(rolpassword, 6) FROM pg_authid \
             WHERE rolname IN ('app', 'md5user', 'trustuser') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["app", "md5user", "trustuser"]);
    assert_eq!(stored[0].1.as_deref(), Some("SCRAM-"), "app uses SCRAM");
    assert!(
        stored[1].1.as_deref().is_some_and(|p| p.starts_with("md5")),
        "md5user stored as md5: {stored:?}"
    );
    assert_eq!(stored[2].1, None, "trustuser has no password");

    let md5 = cluster
        .try_connect(primary, "md5user", MD5_PASSWORD, "app")
        .await
        .expect("md5 login as md5user");
    assert_eq!(current_user(&md5).await, "md5user");

    let trust = cluster
        .try_connect(primary, "trustuser", "", "app")
        .await
        .expect("trust login as trustuser");
    assert_eq!(current_user(&trust).await, "trustuser");

    let err = match cluster.try_connect(primary, "app", "wrong", "app").await {
        Ok(_) => panic!("login with a wrong password succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

    let err = match cluster
        .try_connect(primary, "md5user", "wrong", "app")
        .await
    {
        Ok(_) => panic!("md5 login with a wrong password succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_streams_from_primary() {
    let cluster = Cluster::shared();
    assert_eq!(cluster.replicas().len(), 2);
    let replica = &cluster.replicas()[0];
    assert_ne!(replica.port, cluster.primary().port);

    let db = cluster.create_database("harness_repl").await;
    let primary = cluster
        .try_connect(cluster.primary(), "app", APP_PASSWORD, &db)
        .await
        .expect("app on primary");
    primary
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'hello')",
        )
        .await
        .unwrap();
    cluster.wait_replicas_caught_up().await;

    // Replicas also accept the test roles (pg_hba was copied).
    let on_replica = cluster
        .try_connect(replica, "app", APP_PASSWORD, &db)
        .await
        .expect("SCRAM login on the replica");
    eventually(
        Duration::from_secs(30),
        "row visible on the replica",
        || async {
            match on_replica
                .query_one("SELECT v FROM t WHERE id = 1", &[])
                .await
            {
                Ok(row) => {
                    assert_eq!(row.get::<_, String>(0), "hello");
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let in_recovery: bool = on_replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "replica must be in recovery");
    let err = on_replica
        .batch_execute("INSERT INTO t VALUES (2, 'nope')")
        .await
        .expect_err("writes on a replica must fail");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));

    let primary_recovery: bool = primary
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!primary_recovery, "primary must not be in recovery");

    // A second write also shows up (exercises `eventually` without an
    // explicit catch-up call).
    primary
        .batch_execute("INSERT INTO t VALUES (3, 'later')")
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "row 3 replicated", || async {
        on_replica
            .query_opt("SELECT 1 FROM t WHERE id = 3", &[])
            .await
            .map(|r| r.is_some())
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_database_gives_distinct_usable_databases() {
    let cluster = Cluster::shared();
    let a = cluster.create_database("harness-DB").await;
    let b = cluster.create_database("harness-DB").await;
    assert_ne!(a, b);
    assert!(a.starts_with("harness_db_"), "{a}");

    for db in [&a, &b] {
        let app = cluster
            .try_connect(cluster.primary(), "app", APP_PASSWORD, db)
            .await
            .unwrap_or_else(|e| panic!("app connecting to {db}: {e}"));
        let (name, owner): (String, String) = {
            let row = app
                .query_one(
                    "SELECT current_database()::text, pg_get_userbyid(datdba)::text \
                     FROM pg_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(&name, db);
        assert_eq!(owner, "app");
        app.batch_execute("CREATE TABLE owned_by_app (id serial PRIMARY KEY, v int)")
            .await
            .unwrap();

        // The other roles can use tables app created.
        let md5 = cluster
            .try_connect(cluster.primary(), "md5user", MD5_PASSWORD, db)
            .await
            .unwrap_or_else(|e| panic!("md5user connecting to {db}: {e}"));
        md5.batch_execute("INSERT INTO owned_by_app (v) VALUES (1)")
            .await
            .unwrap();
        let trust = cluster
            .try_connect(cluster.primary(), "trustuser", "", db)
            .await
            .unwrap_or_else(|e| panic!("trustuser connecting to {db}: {e}"));
        trust
            .batch_execute(
                "CREATE TABLE owned_by_trust (id int); INSERT INTO owned_by_app (v) VALUES (2)",
            )
            .await
            .unwrap();
        let n: i64 = app
            .query_one("SELECT count(*) FROM owned_by_app", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }

    // Already replayed on the replica when create_database returns.
    let replica = &cluster.replicas()[0];
    cluster
        .try_connect(replica, "app", APP_PASSWORD, &b)
        .await
        .unwrap_or_else(|e| panic!("app connecting to {b} on the replica: {e}"));
}

/// A private (non-shared) cluster is torn down synchronously on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_cluster_cleans_up_on_drop() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(0))
        .await
        .unwrap();
    assert!(cluster.replicas().is_empty());
    let dir = cluster.dir().to_path_buf();
    let port = cluster.primary().port;
    let client = cluster.superuser(cluster.primary(), "").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server on port {port} still running"
    );
}
