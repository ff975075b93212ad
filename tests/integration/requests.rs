//! Protocol-level regressions: requests whose answers through pgrouter must
//! be PostgreSQL's own, checked byte by byte with the raw client
//! (tests/common/wire.rs) and, where PostgreSQL's answer is the point,
//! against the primary directly.
//!
//! pgrouter runs in transaction mode with read/write routing over the
//! shared cluster's replicas unless a test says otherwise.

use std::time::Duration;

use crate::common::wire::{
    bind, comparable, describe_statement, execute, extended_query, flush, parse, parse_bytes,
    parse_messages, query, query_bytes, sync, tags, terminate, typed_message, with_declared_length,
    Conn, Msg,
};
use crate::common::{Cluster, Pgrouter, RouterConfig};

/// How long a reply may take before the test calls it missing.
const REPLY_DEADLINE: Duration = Duration::from_secs(5);

struct Setup {
    cluster: &'static Cluster,
    db: String,
    router: Pgrouter,
}

/// A fresh database with `schema` run in it (by the superuser, then
/// granted to trustuser) and replayed by the replicas, and pgrouter in
/// front of the primary and the replicas, configured by `configure`.
async fn setup(
    prefix: &str,
    schema: &str,
    configure: impl FnOnce(RouterConfig) -> RouterConfig,
) -> Setup {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    if !schema.is_empty() {
        let su = cluster.superuser(cluster.primary(), &db).await;
        su.batch_execute(schema)
            .await
            .unwrap_or_else(|e| panic!("{schema}: {e}"));
        su.batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO trustuser")
            .await
            .unwrap();
        cluster.wait_replicas_caught_up().await;
    }
    let config = configure(RouterConfig::new(cluster.primary(), &db).replicas(cluster.replicas()));
    let router = Pgrouter::start(&config.build());
    Setup {
        cluster,
        db,
        router,
    }
}

impl Setup {
    async fn client(&self) -> Conn {
        Conn::trust(self.router.addr, &self.db, &[]).await
    }

    async fn direct(&self) -> Conn {
        Conn::trust(self.cluster.primary().addr(), &self.db, &[]).await
    }

    /// A count on the primary, read directly.
    async fn count_on_primary(&self, sql: &str) -> i64 {
        let su = self
            .cluster
            .superuser(self.cluster.primary(), &self.db)
            .await;
        su.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

/// Sends `bytes` and reads through `readies` ReadyForQuery; a missing
/// reply ends the transcript with a line saying so instead of failing.
async fn exchange(conn: &mut Conn, bytes: &[u8], readies: usize) -> Vec<String> {
    if let Err(e) = conn.try_send(bytes).await {
        return vec![format!("<write failed: {e}>")];
    }
    let (msgs, result) = conn.try_read_readies(readies, REPLY_DEADLINE).await;
    let mut out = comparable(&msgs);
    if let Err(e) = result {
        out.push(format!("<{e} waiting {REPLY_DEADLINE:?} for the reply>"));
    }
    out
}

/// One ErrorResponse with `code`, then ReadyForQuery with `status`.
fn is_error_then_ready(msgs: &[Msg], code: &str, status: char) -> bool {
    msgs.len() == 2
        && msgs[0].sqlstate().as_deref() == Some(code)
        && msgs[1].status() == Some(status)
}

// ---------------------------------------------------------------------------
// a. A deferred BEGIN whose first statement gets no server connection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_statement_after_a_deferred_begin_aborts_the_transaction() {
    let s = setup(
        "req_deferred_begin",
        "CREATE TABLE t (id int PRIMARY KEY)",
        |c| {
            c.pool("max_connections = 1")
                .pool("checkout_timeout = \"300ms\"")
        },
    )
    .await;
    let mut client = s.client().await;
    let mut holder = s.client().await;

    // The holder keeps the primary's only connection inside a transaction.
    let held = holder.simple("BEGIN; SELECT txid_current()").await;
    assert_eq!(held.last().and_then(Msg::status), Some('T'), "{held:?}");

    // pgrouter answers the plain BEGIN itself...
    let begin = client.simple("BEGIN").await;
    assert_eq!(
        begin.iter().map(Msg::canonical).collect::<Vec<_>>(),
        ["C(\"BEGIN\")", "Z(T)"],
        "BEGIN"
    );
    // ...and the first statement finds no server connection: the
    // transaction has failed, as it would have on PostgreSQL.
    let failed = client.simple("INSERT INTO t VALUES (1)").await;
    assert!(
        is_error_then_ready(&failed, "53300", 'E'),
        "the first statement should fail with 53300 and ReadyForQuery 'E': {failed:?}"
    );
    let done = holder.simple("COMMIT").await;
    assert_eq!(done.last().and_then(Msg::status), Some('I'), "{done:?}");

    // From here on the pool has a free connection; the transaction must
    // stay failed until it ends, as it does on PostgreSQL.
    let mut problems = Vec::new();
    let steps: [(&str, Vec<u8>); 4] = [
        (
            "INSERT INTO t VALUES (2)",
            query("INSERT INTO t VALUES (2)"),
        ),
        ("SELECT 1", query("SELECT 1")),
        (
            "extended INSERT INTO t VALUES (3)",
            extended_query("INSERT INTO t VALUES (3)", &[]),
        ),
        ("SAVEPOINT a", query("SAVEPOINT a")),
    ];
    for (what, bytes) in steps {
        client.send(&bytes).await;
        let (msgs, result) = client.try_read_through_ready(REPLY_DEADLINE).await;
        let got_25p02 = msgs
            .iter()
            .any(|m| m.sqlstate().as_deref() == Some("25P02"));
        if result.is_err() || !got_25p02 || msgs.last().and_then(Msg::status) != Some('E') {
            problems.push(format!(
                "{what}: expected ErrorResponse 25P02 (current transaction is aborted) and \
                 ReadyForQuery 'E', got {msgs:?} {result:?}"
            ));
        }
    }
    let commit = client.simple("COMMIT").await;
    let commit = commit.iter().map(Msg::canonical).collect::<Vec<_>>();
    if commit != ["C(\"ROLLBACK\")", "Z(I)"] {
        problems.push(format!(
            "COMMIT of the failed transaction: expected CommandComplete \"ROLLBACK\" and \
             ReadyForQuery 'I', got {commit:?}"
        ));
    }
    let rows = s.count_on_primary("SELECT count(*) FROM t").await;
    if rows != 0 {
        problems.push(format!(
            "{rows} row(s) of the failed transaction were committed"
        ));
    }
    assert!(
        problems.is_empty(),
        "after a deferred BEGIN whose first statement failed:\n  {}",
        problems.join("\n  ")
    );

    // The session is usable afterwards.
    assert_eq!(client.query_value("SELECT 5").await.as_deref(), Some("5"));
}

// ---------------------------------------------------------------------------
// b. A lone named Parse, then a Sync of the wrong length
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_with_a_bad_length_after_a_lone_parse_is_answered_as_postgresql_does() {
    let s = setup("req_bad_sync", "", |c| c).await;
    let bytes = [
        parse("s1", "SELECT 1", &[]),
        // A Sync declaring 8 bytes: 4 of junk follow.
        with_declared_length(b'S', 8, &[0, 0, 0, 0]),
        query("SELECT 42"),
    ]
    .concat();

    let mut direct = s.direct().await;
    let expected = exchange(&mut direct, &bytes, 2).await;
    let shape: Vec<&str> = expected.iter().map(|m| &m[..1]).collect();
    assert_eq!(
        (
            shape.concat().as_str(),
            expected[1].as_str(),
            expected[4].as_str()
        ),
        (
            "1EZTDCZ",
            "E(ERROR 08P01 \"invalid message format\")",
            "D['42']"
        ),
        "PostgreSQL's own answer: {expected:?}"
    );

    let mut routed = s.client().await;
    let got = exchange(&mut routed, &bytes, 2).await;
    assert_eq!(
        got, expected,
        "through pgrouter (left) and from PostgreSQL directly (right)"
    );
}

// ---------------------------------------------------------------------------
// c. Unknown message types after login
// ---------------------------------------------------------------------------

/// Message types no PostgreSQL frontend message has.
const UNKNOWN_TAGS: [u8; 5] = [b'Z', 0x00, 0xFF, b'A', b'z'];

/// Logs in, sends one message of type `tag`, and says what happened if it
/// was not FATAL 08P01 and a close within `deadline`.
async fn junk_outcome(addr: String, db: String, tag: u8, deadline: Duration) -> Result<(), String> {
    let mut conn = Conn::trust(addr.as_str(), &db, &[]).await;
    conn.send(&typed_message(tag, b"")).await;
    let what = format!("message type {:?}", char::from(tag));
    match conn.try_read_to_eof(deadline).await {
        Ok(bytes) => {
            let msgs = parse_messages(&bytes);
            // PostgreSQL sends this one message and closes.
            let fatal = |m: &Msg| {
                m.sqlstate().as_deref() == Some("08P01") && m.severity().as_deref() == Some("FATAL")
            };
            if msgs.len() == 1 && fatal(&msgs[0]) {
                Ok(())
            } else {
                Err(format!(
                    "{what}: closed after {msgs:?}, not one FATAL 08P01"
                ))
            }
        }
        Err(bytes) => Err(format!(
            "{what}: still open after {deadline:?}, having received {:?}",
            parse_messages(&bytes)
        )),
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// "invalid frontend message type" lines in every node's server log: one
/// per backend that was sent the junk.
fn junk_seen_by_servers(cluster: &Cluster) -> usize {
    std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|node| {
            let log = std::fs::read(&node.log_file).unwrap_or_default();
            count_lines(
                &String::from_utf8_lossy(&log),
                "invalid frontend message type",
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_get_fatal_08p01_and_reach_no_server() {
    let cluster = Cluster::shared();
    // PostgreSQL's own answer, for reference.
    let db = cluster.create_database("req_junk_direct").await;
    junk_outcome(cluster.primary().addr(), db, b'Z', REPLY_DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL directly: {e}"));

    let mut problems = Vec::new();
    for mode in ["transaction", "session"] {
        let s = setup(&format!("req_junk_{mode}"), "", |c| {
            c.pool(&format!("mode = \"{mode}\""))
        })
        .await;
        // Warm up: the pools' ParameterStatus set is known, connections
        // exist.
        let mut warm = s.client().await;
        assert_eq!(warm.query_value("SELECT 1").await.as_deref(), Some("1"));
        drop(warm);
        let opened =
            |router: &Pgrouter| count_lines(&router.logs().join("\n"), "server connection opened");
        let opened_before = opened(&s.router);
        let seen_before = junk_seen_by_servers(cluster);

        // 100 connections, 50 at a time, each sending one junk message.
        let mut failures = Vec::new();
        for round in 0..2 {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let tag = UNKNOWN_TAGS[(round * 50 + i) % UNKNOWN_TAGS.len()];
                    tokio::spawn(junk_outcome(
                        s.router.addr.to_string(),
                        s.db.clone(),
                        tag,
                        Duration::from_secs(3),
                    ))
                })
                .collect();
            for task in tasks {
                if let Err(e) = task.await.expect("junk task") {
                    failures.push(e);
                }
            }
        }
        let forked = junk_seen_by_servers(cluster) - seen_before;
        let opened_during = opened(&s.router) - opened_before;
        if !failures.is_empty() {
            failures.sort();
            failures.dedup();
            problems.push(format!(
                "{mode} mode: connections not ended with FATAL 08P01: {}",
                failures.join("; ")
            ));
        }
        if forked > 0 || opened_during > 0 {
            problems.push(format!(
                "{mode} mode: the junk reached servers: {forked} backend(s) logged \
                 \"invalid frontend message type\", pgrouter opened {opened_during} server \
                 connection(s)"
            ));
        }
        // pgrouter still serves.
        let mut after = s.client().await;
        assert_eq!(after.query_value("SELECT 2").await.as_deref(), Some("2"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// d. Terminate inside an unsynced extended batch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_inside_an_unsynced_batch_leaves_the_server_connection_usable() {
    let s = setup("req_terminate_batch", "", |c| {
        c.pool("max_connections = 1")
            .pool("checkout_timeout = \"1500ms\"")
    })
    .await;
    let batch = [
        parse("", "SELECT 1", &[]),
        bind("", "", &[]),
        execute("", 0),
        terminate(),
    ]
    .concat();
    for round in 1..=10 {
        let mut leaving = s.client().await;
        leaving.send(&batch).await;
        // The client goes: whatever pgrouter sends it, it ends.
        let _ = leaving.try_read_to_eof(Duration::from_secs(1)).await;
        drop(leaving);

        let mut next = s.client().await;
        next.send(&query("SELECT 7")).await;
        let (msgs, result) = next.try_read_through_ready(Duration::from_secs(2)).await;
        let value = msgs
            .iter()
            .find(|m| m.tag == b'D')
            .and_then(Msg::first_column);
        assert!(
            result.is_ok() && value.as_deref() == Some("7"),
            "round {round}: after a client sent Parse/Bind/Execute/Terminate without Sync, \
             the next client's SELECT 7 got {msgs:?} ({result:?}) within 2 s"
        );
    }
}

// ---------------------------------------------------------------------------
// e. SQL that is not UTF-8, in the client's encoding
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_sql_in_a_named_parse_is_run_as_postgresql_runs_it() {
    let sql: &[u8] = b"SELECT 'caf\xe9'::text AS word";
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "named Parse",
            [
                parse_bytes("s1", sql, &[]),
                bind("", "s1", &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
        ),
        (
            "unnamed Parse",
            [
                parse_bytes("", sql, &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
        ),
        ("simple Query", query_bytes(sql)),
    ];
    let latin1 = [("client_encoding", "LATIN1")];
    let mut problems = Vec::new();
    for (routing, split) in [("routing on", true), ("routing off", false)] {
        let s = setup("req_latin1", "", |c| {
            c.routing(&format!("read_write_split = {split}"))
        })
        .await;
        for (what, bytes) in &cases {
            let mut direct = Conn::trust(s.cluster.primary().addr(), &s.db, &latin1).await;
            let expected = exchange(&mut direct, bytes, 1).await;
            assert!(
                expected.iter().any(|m| m == "D['caf\\xe9']"),
                "PostgreSQL's own answer to the {what}: {expected:?}"
            );
            let mut routed = Conn::trust(s.router.addr, &s.db, &latin1).await;
            let got = exchange(&mut routed, bytes, 1).await;
            if got != expected {
                problems.push(format!(
                    "{routing}, {what}: pgrouter answered {got:?}, PostgreSQL {expected:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// f. Session mode keeps the client's statement names
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_protocol_statement_names_for_sql() {
    let s = setup("req_session_names", "", |c| c.pool("mode = \"session\"")).await;
    // Each step: bytes and the number of ReadyForQuery it gets.
    let steps: Vec<(&str, Vec<u8>, usize)> = vec![
        (
            "Parse s1 + Sync",
            [parse("s1", "SELECT 7 AS seven", &[]), sync()].concat(),
            1,
        ),
        ("EXECUTE s1", query("EXECUTE s1"), 1),
        (
            "Describe s1",
            [describe_statement("s1"), sync()].concat(),
            1,
        ),
        (
            "pg_prepared_statements",
            query("SELECT name, statement FROM pg_prepared_statements ORDER BY name"),
            1,
        ),
        ("DEALLOCATE s1", query("DEALLOCATE s1"), 1),
        ("EXECUTE s1 again", query("EXECUTE s1"), 1),
        (
            "SQL PREPARE p2",
            query("PREPARE p2 AS SELECT 8 AS eight"),
            1,
        ),
        (
            "Bind p2 + Execute",
            [bind("", "p2", &[]), execute("", 0), sync()].concat(),
            1,
        ),
    ];
    let mut direct = s.direct().await;
    let mut routed = s.client().await;
    let mut problems = Vec::new();
    for (what, bytes, readies) in &steps {
        let expected = exchange(&mut direct, bytes, *readies).await;
        let got = exchange(&mut routed, bytes, *readies).await;
        if got != expected {
            problems.push(format!(
                "{what}: pgrouter answered {got:?}, PostgreSQL {expected:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "session mode, differences from PostgreSQL:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// g. A read, Flush, then a write in the same batch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_flushed_read_in_one_batch_runs_on_the_primary() {
    let s = setup(
        "req_flush_write",
        "CREATE TABLE g (id int PRIMARY KEY)",
        |c| c,
    )
    .await;
    let mut client = s.client().await;
    client
        .send(
            &[
                parse("", "SELECT 1", &[]),
                bind("", "", &[]),
                execute("", 0),
                flush(),
            ]
            .concat(),
        )
        .await;
    let mut first = Vec::new();
    while first.len() < 4 {
        match client.try_read_msg(REPLY_DEADLINE).await {
            Ok(msg) => first.push(msg),
            Err(e) => panic!("replies to the flushed SELECT 1: {e}; got {first:?}"),
        }
    }
    assert_eq!(
        tags(&first),
        "12DC",
        "replies to the flushed SELECT 1: {first:?}"
    );

    client
        .send(
            &[
                parse("", "INSERT INTO g VALUES (1)", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
    let (msgs, result) = client.try_read_through_ready(REPLY_DEADLINE).await;
    let got: Vec<String> = msgs.iter().map(Msg::canonical).collect();
    assert_eq!(
        got,
        ["1", "2", "C(\"INSERT 0 1\")", "Z(I)"],
        "the INSERT after the flushed SELECT ({result:?})"
    );
    assert_eq!(
        s.count_on_primary("SELECT count(*) FROM g WHERE id = 1")
            .await,
        1,
        "the row on the primary"
    );
}
