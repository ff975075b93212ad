//! Routing of pipelined and batched requests, with real drivers, through
//! pgrouter in transaction mode in front of the shared cluster's primary
//! and two replicas.
//!
//! A driver may send several requests (each up to its Sync) before it
//! reads a reply, or one batch of several statements with a single Sync:
//! psycopg 3 pipelines, asyncpg's COPY on a fresh connection, tokio-postgres
//! queries in flight together on one `Client`, pgjdbc multi-statement
//! strings and `executeBatch`. Each request must be routed on its own
//! merits and a batch with a write in it must run on the primary: no
//! SQLSTATE 25006 ("cannot execute INSERT in a read-only transaction",
//! "cannot execute COPY during recovery"), every row written is on the
//! primary, and a read that is a request of its own is served by a replica.
//!
//! Needs `python3` with asyncpg and psycopg (see drivers.rs), and a JDK
//! (`javac`, `java`) with pgjdbc at /usr/share/java/postgresql.jar (Debian:
//! `apt-get install default-jdk-headless libpostgresql-jdbc-java`; .ci/run
//! does it). A missing one fails the test, it is not skipped.

use super::drivers::{driver_path, require_module, run_python_script};
use crate::common::cluster::APP_PASSWORD;
use crate::common::{url_encode, Cluster, Pgrouter, RouterConfig, HOST};
use futures_util::future::{join_all, BoxFuture, FutureExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_postgres::Client;

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
const JAVA_HINT: &str =
    "install a JDK and pgjdbc: apt-get install default-jdk-headless libpostgresql-jdbc-java";

/// A fresh database on the shared cluster and pgrouter in front of its
/// primary and replicas (transaction mode, the default), with `configure`
/// applied to the config.
async fn start(
    prefix: &str,
    configure: impl FnOnce(RouterConfig) -> RouterConfig,
) -> (String, Pgrouter) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let config = configure(
        RouterConfig::new(cluster.primary(), &db)
            .replicas(cluster.replicas())
            .pool("checkout_timeout = \"30s\""),
    )
    .build();
    (db, Pgrouter::start(&config))
}

/// postgres://postgres@HOST:PORT/DB: the primary, directly, as the
/// superuser (trust).
fn primary_url(db: &str) -> String {
    let primary = Cluster::shared().primary();
    format!(
        "postgres://postgres@{HOST}:{}/{}",
        primary.port,
        url_encode(db)
    )
}

/// Runs tests/drivers/test_request_routing.py's checks of `group`.
async fn run_request_checks(group: &str) {
    require_module("psycopg");
    if group == "asyncpg" {
        require_module("asyncpg");
    }
    let (db, router) = start(&format!("req_{group}"), |c| c).await;
    let args = vec![
        router.url("app", APP_PASSWORD, &db),
        primary_url(&db),
        group.to_owned(),
    ];
    run_python_script("test_request_routing.py", args, &router).await;
}

/// psycopg 3 pipelines that start with a read and write after it, in one
/// implicit transaction (one Sync) or as requests sent back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipelines_run_their_writes_on_the_primary() {
    run_request_checks("psycopg").await;
}

/// asyncpg's `copy_records_to_table` right after `connect`: the COPY FROM
/// STDIN runs on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_records_to_table_on_a_fresh_connection_runs_on_the_primary() {
    run_request_checks("asyncpg").await;
}

// ------------------------------------------------------- tokio-postgres ---

/// Rounds per tokio-postgres variant: enough for the requests of a round
/// to be in flight together many times over.
const ROUNDS: i32 = 50;

#[derive(Clone, Copy)]
enum Op {
    /// `SELECT inet_server_port()`, prepared (`Client::query`).
    Read,
    /// `INSERT INTO t VALUES ($1)`, prepared (`Client::execute`).
    Write(i32),
    /// The read with `query_typed`: Parse, Bind, Describe, Execute and Sync
    /// in one go, no prepare round trip.
    ReadTyped,
    /// The write with `execute_typed`.
    WriteTyped(i32),
}

enum Outcome {
    /// The port that served a read.
    Read(u16),
    /// A write's row count.
    Wrote(u64),
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn run(client: &Client, op: Op) -> BoxFuture<'_, Result<Outcome, String>> {
    async move {
        let port = |rows: Vec<tokio_postgres::Row>| {
            let port: i32 = rows
                .first()
                .ok_or("the read returned no row")?
                .try_get(0)
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Read(port as u16))
        };
        match op {
            Op::Read => match client.query("SELECT inet_server_port()", &[]).await {
                Ok(rows) => port(rows),
                Err(e) => Err(format!("read: {}", describe(&e))),
            },
            Op::ReadTyped => match client.query_typed("SELECT inet_server_port()", &[]).await {
                Ok(rows) => port(rows),
                Err(e) => Err(format!("typed read: {}", describe(&e))),
            },
            Op::Write(id) => client
                .execute("INSERT INTO t VALUES ($1)", &[&id])
                .await
                .map(Outcome::Wrote)
                .map_err(|e| format!("INSERT {id}: {}", describe(&e))),
            Op::WriteTyped(id) => client
                .execute_typed(
                    "INSERT INTO t VALUES ($1)",
                    &[(&id, tokio_postgres::types::Type::INT4)],
                )
                .await
                .map(Outcome::Wrote)
                .map_err(|e| format!("typed INSERT {id}: {}", describe(&e))),
        }
    }
    .boxed()
}

/// Runs `ROUNDS` rounds of the operations `round(r)` gives, all in flight
/// together on one tokio-postgres client (it pipelines them on its one
/// connection), through pgrouter with read_your_writes off (a read that is
/// a request of its own goes to a replica, whatever was written before).
/// Fails unless every write succeeded, every read was served by a replica,
/// and the primary has every row written.
async fn pipelined_rounds(prefix: &str, round: impl Fn(i32) -> Vec<Op>) {
    let cluster = Cluster::shared();
    let (db, router) = start(prefix, |c| c.routing("read_your_writes = \"off\"")).await;
    let su = cluster.superuser(cluster.primary(), &db).await;
    su.batch_execute("CREATE TABLE t (id int PRIMARY KEY); GRANT ALL ON t TO app")
        .await
        .expect("creating table t on the primary");
    // So that a write sent to a replica fails with 25006, not 42P01.
    cluster.wait_replicas_caught_up().await;
    let replicas: Vec<u16> = cluster.replicas().iter().map(|r| r.port).collect();
    let client = router.connect("app", APP_PASSWORD, &db).await;

    let mut failures = Vec::new();
    let mut ops_run = 0;
    let mut reads = 0;
    for r in 0..ROUNDS {
        let ops = round(r);
        ops_run += ops.len();
        let results = join_all(ops.iter().map(|&op| run(&client, op))).await;
        for (op, result) in ops.iter().zip(results) {
            match (op, result) {
                (_, Err(e)) => failures.push(format!("round {r}: {e}")),
                (Op::Write(id) | Op::WriteTyped(id), Ok(Outcome::Wrote(n))) => {
                    if n != 1 {
                        failures.push(format!("round {r}: INSERT {id} wrote {n} rows"));
                    }
                }
                (_, Ok(Outcome::Read(port))) => {
                    reads += 1;
                    if !replicas.contains(&port) {
                        failures.push(format!(
                            "round {r}: a read was served by port {port}, not a replica {replicas:?} \
                             (primary {})",
                            cluster.primary().port
                        ));
                    }
                }
                (_, Ok(Outcome::Wrote(_))) => unreachable!("a read returns a port"),
            }
        }
    }
    let mut on_primary: Vec<i32> = su
        .query("SELECT id FROM t", &[])
        .await
        .expect("reading t on the primary")
        .iter()
        .map(|row| row.get(0))
        .collect();
    on_primary.sort_unstable();
    let mut expected: Vec<i32> = (0..ROUNDS).flat_map(&round).filter_map(write_id).collect();
    expected.sort_unstable();
    if !failures.is_empty() || on_primary != expected {
        let shown = failures.iter().take(8).cloned().collect::<Vec<_>>();
        panic!(
            "{} of {ops_run} pipelined requests ({reads} reads answered) failed through pgrouter \
             (pid {}); first ones:\n  {}\n{} of {} rows written are on the primary \
             (missing: {:?})",
            failures.len(),
            router.pid(),
            shown.join("\n  "),
            on_primary.len(),
            expected.len(),
            expected
                .iter()
                .filter(|id| !on_primary.contains(id))
                .take(20)
                .collect::<Vec<_>>(),
        );
    }
}

fn write_id(op: Op) -> Option<i32> {
    match op {
        Op::Write(id) | Op::WriteTyped(id) => Some(id),
        Op::Read | Op::ReadTyped => None,
    }
}

/// `tokio::join!(client.query(read), client.execute(insert))`: the read's
/// requests go out first, the INSERT's right behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_read_then_write_in_flight_together() {
    pipelined_rounds("req_tp_rw", |r| vec![Op::Read, Op::Write(r)]).await;
}

/// The INSERT first, the read right behind it (the read must not follow
/// the write to the primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_write_then_read_in_flight_together() {
    pipelined_rounds("req_tp_wr", |r| vec![Op::Write(r), Op::Read]).await;
}

/// Eight requests in flight per round, reads and writes alternating,
/// prepared and unprepared (`query_typed`/`execute_typed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_many_interleaved_reads_and_writes_in_flight() {
    pipelined_rounds("req_tp_many", |r| {
        let id = r * 4;
        vec![
            Op::Read,
            Op::Write(id),
            Op::ReadTyped,
            Op::WriteTyped(id + 1),
            Op::Read,
            Op::Write(id + 2),
            Op::ReadTyped,
            Op::WriteTyped(id + 3),
        ]
    })
    .await;
}

// ---------------------------------------------------------------- pgjdbc ---

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Panics (test failure, not a skip) unless `tool -version` runs.
fn require_tool(tool: &str) {
    match Command::new(tool)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} -version` failed; {JAVA_HINT}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run `{tool}` ({e}); {JAVA_HINT}"),
    }
}

/// Compiles tests/drivers/BatchRouting.java into `dir`.
fn compile_java(dir: &Path) {
    let source = driver_path("BatchRouting.java");
    let out = Command::new("javac")
        .arg("-d")
        .arg(dir)
        .arg("-cp")
        .arg(JDBC_JAR)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running javac ({e}); {JAVA_HINT}"));
    assert!(
        out.status.success(),
        "javac {source} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pgjdbc: a multi-statement string that starts with a read (one Sync),
/// a Statement batch and a PreparedStatement batch, and a transaction, all
/// writing through pgrouter (tests/drivers/BatchRouting.java).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_batches_run_their_writes_on_the_primary() {
    require_tool("javac");
    require_tool("java");
    assert!(
        Path::new(JDBC_JAR).is_file(),
        "pgjdbc is missing: no {JDBC_JAR}; {JAVA_HINT}"
    );
    let classes = TempDir::new("pgrouter-jdbc");
    let dir = classes.0.clone();
    tokio::task::spawn_blocking(move || compile_java(&dir))
        .await
        .expect("javac thread panicked");

    let (db, router) = start("req_jdbc", |c| c).await;
    let router_url = format!("jdbc:postgresql://{HOST}:{}/{db}", router.port());
    let primary = Cluster::shared().primary();
    let primary_url = format!(
        "jdbc:postgresql://{HOST}:{}/{db}?user=postgres",
        primary.port
    );
    let classpath = format!("{}:{JDBC_JAR}", classes.0.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .arg("-cp")
            .arg(&classpath)
            .arg("BatchRouting")
            .args([&router_url, "app", APP_PASSWORD, &primary_url])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running java ({e}); {JAVA_HINT}"))
    })
    .await
    .expect("java thread panicked");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "BatchRouting through pgrouter (pid {}) exited with {}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        router.pid(),
        out.status,
    );
    println!("{stdout}{stderr}");
}
