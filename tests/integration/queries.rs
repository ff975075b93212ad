//! Queries through pgrouter with real clients: simple and extended protocol,
//! portals, COPY, errors, psql and pgbench.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use futures_util::SinkExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

async fn router(prefix: &str, mode: &str) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool(&format!("mode = \"{mode}\""))
        .pool("max_connections = 2")
        .build();
    (db, Pgrouter::start(&config))
}

fn simple_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_and_several_statements_in_one_message() {
    for mode in ["transaction", "session"] {
        let (db, router) = router("simple", mode).await;
        let client = router.connect("app", APP_PASSWORD, &db).await;
        let rows = client
            .simple_query("SELECT 1; SELECT 'two'; SELECT 3")
            .await
            .unwrap();
        assert_eq!(simple_rows(&rows), ["1", "two", "3"], "mode {mode}");
        client
            .batch_execute(
                "CREATE TABLE t (id int primary key, v text);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b');
                 UPDATE t SET v = 'c' WHERE id = 2",
            )
            .await
            .unwrap();
        let rows = client
            .simple_query("SELECT v FROM t ORDER BY id")
            .await
            .unwrap();
        assert_eq!(simple_rows(&rows), ["a", "c"], "mode {mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_unnamed_statements() {
    let (db, router) = router("extended", "transaction").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    // query_typed sends Parse/Bind/Execute/Sync with the unnamed statement.
    for i in 0..20 {
        let row = client
            .query_typed_one("SELECT $1::int4 + 1", &[(&i, Type::INT4)])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let rows = client
        .query_typed(
            "SELECT g FROM generate_series(1, $1::int4) g",
            &[(&500i32, Type::INT4)],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[499].get::<_, i32>(0), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_with_row_limits_return_portal_suspended() {
    let (db, router) = router("portal", "transaction").await;
    let mut client = router.connect("app", APP_PASSWORD, &db).await;
    let tx = client.transaction().await.unwrap();
    let statement = tx
        .prepare("SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let portal = tx.bind(&statement, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        // Each call is an Execute with a row limit; all but the last end in
        // PortalSuspended.
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 3);
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_to_stdout() {
    let (db, router) = router("copy", "transaction").await;
    let mut client = router.connect("app", APP_PASSWORD, &db).await;
    client
        .batch_execute("CREATE TABLE items (id int, name text)")
        .await
        .unwrap();
    // tokio-postgres runs COPY through the extended protocol.
    let tx = client.transaction().await.unwrap();
    let sink = tx
        .copy_in("COPY items FROM STDIN WITH (FORMAT csv)")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i},item-{i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    let copied = sink.as_mut().finish().await.unwrap();
    assert_eq!(copied, 1000);
    tx.commit().await.unwrap();

    let row = client
        .query_typed_one("SELECT count(*)::int4 FROM items", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1000);

    let tx = client.transaction().await.unwrap();
    let stream = tx
        .copy_out("COPY (SELECT id FROM items ORDER BY id LIMIT 3) TO STDOUT")
        .await
        .unwrap();
    use futures_util::TryStreamExt;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text, "0\n1\n2\n");
    tx.commit().await.unwrap();

    // The connection went back to the pool clean: plain queries still work.
    let rows = client.simple_query("SELECT 'after copy'").await.unwrap();
    assert_eq!(simple_rows(&rows), ["after copy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_statements_report_sqlstate_and_the_connection_stays_usable() {
    let (db, router) = router("errors", "transaction").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;

    let error = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let error = client
        .query_typed("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::UNDEFINED_TABLE));
    let error = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::SYNTAX_ERROR));

    // An error inside a transaction: aborted until ROLLBACK, then fine.
    client.simple_query("BEGIN").await.unwrap();
    assert!(client.simple_query("SELECT 1/0").await.is_err());
    let error = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.simple_query("ROLLBACK").await.unwrap();

    let rows = client.simple_query("SELECT 'still here'").await.unwrap();
    assert_eq!(simple_rows(&rows), ["still here"]);
}

fn psql(router: &Pgrouter, db: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("psql")
        .arg(router.url("app", APP_PASSWORD, db))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        input.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_queries_copy_and_errors() {
    let (db, router) = router("psql", "transaction").await;
    let script = "CREATE TABLE t (id int, v text);\n\
                  COPY t FROM STDIN;\n1\tone\n2\ttwo\n\\.\n\
                  SELECT 1/0;\n\
                  SELECT count(*) FROM t;\n\
                  COPY (SELECT v FROM t ORDER BY id) TO STDOUT;\n\
                  \\set VERBOSITY verbose\n\
                  SELECT * FROM missing;\n\
                  SELECT 'end';\n";
    let (_, stdout, stderr) = psql(&router, &db, &["-f", "-"], Some(script));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["2", "one", "two", "end"],
        "stderr: {stderr}"
    );
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(stderr.contains("42P01"), "{stderr}");
}

fn pgbench(router: &Pgrouter, db: &str, args: &[&str]) -> String {
    let output = Command::new("pgbench")
        .args(args)
        .arg(router.url("app", APP_PASSWORD, db))
        .output()
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

fn pgbench_seconds() -> String {
    std::env::var("PGROUTER_PGBENCH_SECONDS").unwrap_or_else(|_| "10".into())
}

/// Transaction mode with 50 clients over 5 server connections, for the
/// simple and the extended protocol: no failed transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_fifty_clients_over_five_connections() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("pgbench").await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .pool("mode = \"transaction\"")
        .pool("max_connections = 5")
        .pool("checkout_timeout = \"30s\"")
        .build();
    let router = Pgrouter::start(&config);
    tokio::task::spawn_blocking(move || {
        pgbench(&router, &db, &["-i", "-q", "-s", "1"]);
        let seconds = pgbench_seconds();
        for mode in ["simple", "extended"] {
            let out = pgbench(
                &router,
                &db,
                &["-M", mode, "-c", "50", "-j", "2", "-T", &seconds, "-n"],
            );
            let processed = out
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split('/').next())
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no processed count in:\n{out}"));
            assert!(processed > 0, "{out}");
            let failed = out
                .lines()
                .find_map(|l| l.strip_prefix("number of failed transactions: "))
                .and_then(|n| n.split_whitespace().next())
                .unwrap_or_else(|| panic!("no failed count in:\n{out}"));
            assert_eq!(failed, "0", "-M {mode}:\n{out}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_across_many_writes_is_reassembled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (db, router) = router("split", "transaction").await;
    // Raw protocol as trustuser, the query sent one byte per write.
    let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let mut startup = Vec::new();
    let body = format!("user\0trustuser\0database\0{db}\0\0");
    startup.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(body.as_bytes());
    stream.write_all(&startup).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during login");
        seen.extend_from_slice(&buf[..n]);
    }
    let query = b"SELECT 'split'\0";
    let mut message = vec![b'Q'];
    message.extend_from_slice(&((query.len() + 4) as i32).to_be_bytes());
    message.extend_from_slice(query);
    for byte in &message {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut reply = Vec::new();
    while !reply.ends_with(b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during query");
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(
        reply.windows(5).any(|w| w == b"split"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}
