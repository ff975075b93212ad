//! Session state in transaction mode: what pins a client to its server
//! connection, and that nothing of one client is seen by the next.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};
use crate::routing::first_value;
use std::time::Duration;
use tokio_postgres::error::SqlState;

async fn router(prefix: &str, extra: &str) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let mut config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 1")
        .pool("checkout_timeout = \"10s\"");
    if !extra.is_empty() {
        config = config.pool(extra);
    }
    (db, Pgrouter::start(&config.build()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_state_is_invisible_to_the_next_client() {
    let (db, router) = router("isolate", "").await;
    let a = router.connect("app", APP_PASSWORD, &db).await;
    a.batch_execute("CREATE SCHEMA other").await.unwrap();
    let pid = first_value(&a, "SELECT pg_backend_pid()").await;
    for sql in [
        "SET search_path TO other",
        "SET statement_timeout = '123s'",
        "CREATE TEMP TABLE scratch (a int)",
        "SELECT pg_advisory_lock(42)",
        "LISTEN channel_a",
    ] {
        a.simple_query(sql).await.unwrap();
    }
    // A keeps its connection and its state across transactions.
    assert_eq!(first_value(&a, "SHOW search_path").await, "other");
    assert_eq!(first_value(&a, "SELECT count(*) FROM scratch").await, "0");
    assert_eq!(first_value(&a, "SELECT pg_backend_pid()").await, pid);
    drop(a);

    let b = router.connect("app", APP_PASSWORD, &db).await;
    eventually(
        Duration::from_secs(10),
        "B gets the connection A left",
        || async { first_value(&b, "SELECT pg_backend_pid()").await == pid },
    )
    .await;
    assert_eq!(
        first_value(&b, "SHOW search_path").await,
        "\"$user\", public"
    );
    assert_eq!(first_value(&b, "SHOW statement_timeout").await, "0");
    let error = b.simple_query("SELECT * FROM scratch").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(
        first_value(&b, "SELECT pg_try_advisory_lock(42)").await,
        "t"
    );
    assert_eq!(
        first_value(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_notify_work_through_a_pinned_session() {
    let (db, router) = router("notify", "max_connections = 2").await;
    let (listener, mut connection) = tokio_postgres::connect(
        &router.conn_str("app", APP_PASSWORD, &db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = router.connect("app", APP_PASSWORD, &db).await;
    sender.batch_execute("NOTIFY jobs, 'hello'").await.unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s");
    assert_eq!(payload.as_deref(), Some("hello"));
    assert!(router.wait_for_log(
        "client pinned to its server connection",
        Duration::from_secs(5)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_error_refuses_session_state_with_0a000() {
    let (db, router) = router("pinerr", "pinning = \"error\"").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let error = client.simple_query("LISTEN x").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    let message = error.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("listen") && message.contains("pinning"),
        "{message}"
    );
    // The session stays usable.
    assert_eq!(first_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_of_protocol_statements_is_answered_for_the_client() {
    let (db, router) = router("dealloc", "max_connections = 2").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let statement = client.prepare("SELECT 7").await.unwrap();
    assert_eq!(
        client
            .query_one(&statement, &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    // Other clients' statements of the same text are unaffected.
    let other = router.connect("app", APP_PASSWORD, &db).await;
    let theirs = other.prepare("SELECT 7").await.unwrap();
    assert_eq!(
        other
            .query_one(&theirs, &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    let error = client.simple_query("DEALLOCATE nope").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_outside_a_transaction_follows_the_client_to_other_connections() {
    let (db, router) = router("setreplay", "max_connections = 2").await;
    let a = router.connect("app", APP_PASSWORD, &db).await;
    let b = router.connect("app", APP_PASSWORD, &db).await;
    a.batch_execute("CREATE SCHEMA other").await.unwrap();
    a.simple_query("SET search_path TO other").await.unwrap();
    a.simple_query("SET statement_timeout = '77s'")
        .await
        .unwrap();
    let mut backends = std::collections::HashSet::new();
    for round in 0..6 {
        // B holds one of the two connections in a transaction half the
        // time, so A runs on both.
        if round % 2 == 0 {
            b.simple_query("BEGIN").await.unwrap();
            b.simple_query("SELECT 1").await.unwrap();
        }
        assert_eq!(
            first_value(&a, "SHOW search_path").await,
            "other",
            "round {round}"
        );
        assert_eq!(first_value(&a, "SHOW statement_timeout").await, "77s");
        backends.insert(first_value(&a, "SELECT pg_backend_pid()").await);
        if round % 2 == 0 {
            b.simple_query("COMMIT").await.unwrap();
        }
        // B never sees A's settings, whichever connection it gets.
        assert_eq!(
            first_value(&b, "SHOW search_path").await,
            "\"$user\", public"
        );
        assert_eq!(first_value(&b, "SHOW statement_timeout").await, "0");
    }
    assert_eq!(backends.len(), 2, "A was pinned to one connection");
    // RESET follows too.
    a.simple_query("RESET statement_timeout").await.unwrap();
    assert_eq!(first_value(&a, "SHOW statement_timeout").await, "0");
    assert_eq!(first_value(&a, "SHOW search_path").await, "other");
}
