//! CancelRequest through pgrouter: forwarded with the server's own key to
//! the connection the client is using, dropped otherwise.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

async fn router(prefix: &str) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("max_connections = 2")
        .build();
    (db, Pgrouter::start(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sleep_errors_with_57014_within_two_seconds() {
    let (db, router) = router("cancel").await;
    for mode in ["simple", "extended"] {
        let client = router.connect("app", APP_PASSWORD, &db).await;
        let token = client.cancel_token();
        let started = Instant::now();
        let running = tokio::spawn(async move {
            if mode == "simple" {
                client.simple_query("SELECT pg_sleep(10)").await.map(|_| ())
            } else {
                client
                    .query_typed("SELECT pg_sleep(10)", &[])
                    .await
                    .map(|_| ())
            }
        });
        // Cancel until it lands: the first may arrive before the query
        // holds a server connection, and is then rightly dropped.
        let error = loop {
            token.cancel_query(NoTls).await.unwrap();
            if running.is_finished() {
                break running.await.unwrap().unwrap_err();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never cancelled"
            );
        };
        assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{mode}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode}: cancelled after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_an_unknown_key_is_dropped() {
    let (db, router) = router("cancelbad").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    let running =
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(0.5), 'done'").await });
    // A CancelRequest with a key pgrouter never handed out.
    for secret in 0..5i32 {
        let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
        let mut packet = Vec::new();
        packet.extend_from_slice(&16i32.to_be_bytes());
        packet.extend_from_slice(&80877102i32.to_be_bytes());
        packet.extend_from_slice(&12345i32.to_be_bytes());
        packet.extend_from_slice(&secret.to_be_bytes());
        stream.write_all(&packet).await.unwrap();
    }
    let messages = running.await.unwrap().expect("the query was not cancelled");
    assert!(messages.len() >= 2);
    assert!(router.wait_for_log(
        "cancel request for no running query dropped",
        Duration::from_secs(5)
    ));
}
