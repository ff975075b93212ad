//! Isolation matrix: in transaction mode one server connection serves many
//! clients in turn, and each must find it exactly as a fresh connection
//! would be.
//!
//! Every variant runs on a pgrouter of its own with `max_connections = 1`
//! per pool, so that clients A and B share one server connection per
//! node, with read/write routing off (the primary alone) and on (the
//! primary and both replicas, reads balanced round robin). Client A (the
//! raw wire client) logs in, runs the case's statements, reads once on
//! every node it can reach and leaves: cleanly with Terminate, or by
//! closing its socket without one (and, for some cases, by closing it
//! right after sending its last statement, before the reply). Client B
//! (tokio-postgres) then looks at every server connection of the pool
//! (`/* pgrouter: primary */` and `/* pgrouter: replica */` hints), and
//! each look must equal the look of a fresh direct connection to the same
//! node, database and user: `current_user`, `session_user`, every setting
//! `SHOW ALL` shows (and the custom ones the cases set),
//! `pg_prepared_statements`, `pg_listening_channels()`, the relations of
//! its temp schema, the locks its backend holds (advisory locks) and
//! `pg_cursors`. Where B holds named statements of its own across A's
//! visit, B's Execute of them must still work afterwards.
//!
//! Every client, direct or not, logs in with the same application_name:
//! without one, a server connection shows pgrouter's own
//! (`application_name = pgrouter`), which no client set. What a pooler
//! cannot undo without closing the connection is not counted as a
//! difference: pgrouter's own server-side statements (`pgrouter_N`, its
//! cache of protocol-level statements) in `pg_prepared_statements`; a
//! custom setting (`a.b`) that a RESET left defined but empty where a
//! fresh connection has none; the settings of a library an earlier client
//! loaded (`plpgsql.*` after a DO block) while they are at their defaults.
//!
//! Also here:
//! - the test's own check, straight to PostgreSQL: each case leaves state
//!   that the look sees (else the matrix could not see it leak);
//! - the other side of two leaks: a client keeps its own settings on every
//!   server connection it gets;
//! - a bad startup parameter is refused at login as PostgreSQL refuses it,
//!   and does not cost a backend per request;
//! - a seeded property test: random sequences of the matrix's statements
//!   (some in transactions) by A, before B looks.
//!
//! Run:
//!   cargo test --test integration isolation
//!       all of it, with property seeds 1..=64
//!   ISOLATION_SEED=17 cargo test --test integration isolation::random -- --nocapture
//!       one seed, its program printed
//!   ISOLATION_SEEDS=2000 cargo test --test integration isolation::random
//!       seeds 1..=2000
//!   ISOLATION_PARALLEL=4 ...
//!       variants run at the same time (default 3)

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::cluster::NodeInfo;
use crate::common::config::ADMIN_PASSWORD;
use crate::common::console::rows;
use crate::common::wire::{self, Conn, Msg, TRUST_USER};
use crate::common::{conn_string, Cluster, Pgrouter, RouterConfig, HOST};

/// The superuser, for the cases that need one (SET SESSION AUTHORIZATION).
const SUPERUSER: &str = "postgres";
/// The role the cases switch to: NOLOGIN, granted to app and trustuser.
const TENANT: &str = "tenant";
/// Every client, direct or through pgrouter, gives this application_name:
/// the same startup parameters, as the clients of one application have.
const APP_NAME: &str = "isolation";
/// How long one variant may take in all before it is called hung.
const VARIANT_DEADLINE: Duration = Duration::from_secs(40);
/// How long A waits for any one reply.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// How many times A leaves mid-request in one variant (until B sees
/// something): whether pgrouter has the reply before it notices A is gone
/// is a race.
const MID_REQUEST_ROUNDS: usize = 3;
/// Differences listed per look; more are counted.
const MAX_DIFFERENCES: usize = 6;
/// Variants run at the same time (ISOLATION_PARALLEL).
const PARALLEL: usize = 3;
/// Property-test seeds of the CI run (ISOLATION_SEEDS).
const DEFAULT_SEEDS: u64 = 64;

// ---------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------

/// Creates role `tenant` (once per test binary) and a database with a
/// table `t` everyone may write; waits for the replicas.
async fn database(prefix: &str) -> String {
    static ROLE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cluster = Cluster::shared();
    ROLE.get_or_init(|| async {
        let su = cluster.superuser(cluster.primary(), "postgres").await;
        su.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {TENANT} NOLOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT {TENANT} TO app, {TRUST_USER};"
        ))
        .await
        .unwrap_or_else(|e| panic!("creating role {TENANT}: {e}"));
    })
    .await;
    let db = cluster.create_database(prefix).await;
    let su = cluster.superuser(cluster.primary(), &db).await;
    su.batch_execute("CREATE TABLE t (id int); GRANT ALL ON t TO PUBLIC;")
        .await
        .unwrap_or_else(|e| panic!("creating table t in {db}: {e}"));
    cluster.wait_replicas_caught_up().await;
    db
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routing {
    /// The primary alone.
    Off,
    /// The primary and both replicas.
    On,
}

/// How client A leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// Terminate, then waits for pgrouter to close.
    Terminate,
    /// Closes its socket without a Terminate, after its last reply.
    Drop,
    /// Sends its last step and closes its socket without reading the
    /// reply (the cases marked so, and the property test).
    DropMidRequest,
}

impl fmt::Display for Leave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Leave::Terminate => "Terminate",
            Leave::Drop => "dropped socket",
            Leave::DropMidRequest => "socket dropped mid-request",
        })
    }
}

/// A pgrouter of the variant's own: one server connection per node.
async fn start_router(db: &str, routing: Routing) -> Pgrouter {
    let cluster = Cluster::shared();
    let mut config = RouterConfig::new(cluster.primary(), db)
        .users(&format!(
            "\n[[users]]\nname = \"{TRUST_USER}\"\nauth = \"trust\"\n\
             \n[[users]]\nname = \"{SUPERUSER}\"\nauth = \"trust\"\n"
        ))
        .admin()
        .pool("max_connections = 1")
        .pool("checkout_timeout = \"10s\"");
    if routing == Routing::On {
        config = config
            .replicas(cluster.replicas())
            .routing("balance = \"round_robin\"")
            .routing("read_your_writes = \"off\"")
            // Lag is no concern here: B must reach every replica even
            // while other tests load the cluster.
            .routing("max_replica_lag = \"1h\"")
            .routing("max_replica_lag_bytes = \"1GB\"");
    }
    let config = config.build();
    tokio::task::spawn_blocking(move || Pgrouter::start(&config))
        .await
        .expect("starting pgrouter")
}

fn node_by_port(port: u16) -> Option<&'static NodeInfo> {
    let cluster = Cluster::shared();
    std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .find(|node| node.port == port)
}

fn node_name(port: u16) -> String {
    let cluster = Cluster::shared();
    if cluster.primary().port == port {
        return "primary".into();
    }
    match cluster.replicas().iter().position(|r| r.port == port) {
        Some(i) => format!("replica{}", i + 1),
        None => format!("port {port}"),
    }
}

/// A fresh advisory-lock key (and name suffix) for each variant: variants
/// run at the same time in one database.
fn unique_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    7_300_000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// What client A does
// ---------------------------------------------------------------------------

/// One thing client A does. `{key}` in a text is replaced by the variant's
/// unique key.
#[derive(Clone, Debug)]
enum Step {
    /// A simple Query that must succeed (as it does on PostgreSQL).
    Sql(String),
    /// Any step whose failure is no concern (a name that may not exist, a
    /// statement in a failed transaction).
    MayFail(Box<Step>),
    /// The extended protocol: Parse of `name` ("" for the unnamed
    /// statement), Bind, Execute, Sync. Must succeed.
    Extended { name: String, sql: String },
    /// Bind and Execute of a named statement A parsed before, Sync.
    Execute(String),
    /// Close of a named statement, Sync.
    Close(String),
}

impl Step {
    fn bytes(&self, key: u64) -> Vec<u8> {
        let text = |s: &str| s.replace("{key}", &key.to_string());
        match self {
            Step::Sql(sql) => wire::query(&text(sql)),
            Step::MayFail(step) => step.bytes(key),
            Step::Extended { name, sql } => [
                wire::parse(name, &text(sql), &[]),
                wire::bind("", name, &[]),
                wire::execute("", 0),
                wire::sync(),
            ]
            .concat(),
            Step::Execute(name) => [
                wire::bind("", name, &[]),
                wire::execute("", 0),
                wire::sync(),
            ]
            .concat(),
            Step::Close(name) => [wire::close_statement(name), wire::sync()].concat(),
        }
    }

    fn must_succeed(&self) -> bool {
        !matches!(self, Step::MayFail(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Sql(sql) => write!(f, "{sql}"),
            Step::MayFail(step) => write!(f, "{step} (may fail)"),
            Step::Extended { name, sql } => write!(f, "Parse {name:?} {sql:?}/Bind/Execute/Sync"),
            Step::Execute(name) => write!(f, "Bind {name:?}/Execute/Sync"),
            Step::Close(name) => write!(f, "Close {name:?}/Sync"),
        }
    }
}

fn sql(text: &str) -> Step {
    Step::Sql(text.into())
}

fn try_sql(text: &str) -> Step {
    may_fail(sql(text))
}

fn may_fail(step: Step) -> Step {
    Step::MayFail(Box::new(step))
}

fn extended(name: &str, text: &str) -> Step {
    Step::Extended {
        name: name.into(),
        sql: text.into(),
    }
}

/// The case in which A changes nothing: B must get A's connection.
const CONTROL: &str = "nothing (control)";

/// A statement kind of the matrix: what A does before it leaves.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    user: &'static str,
    /// A's startup parameters beyond user, database and application_name.
    startup: Vec<(&'static str, &'static str)>,
    steps: Vec<Step>,
    /// B prepares named statements before A comes, and runs them after.
    b_statements: bool,
    /// Also a third variant: A sends its last step and closes its socket
    /// without waiting for the reply.
    mid_request: bool,
    /// Whether A's own session shows the state when A leaves (checked
    /// directly against PostgreSQL by the self-check).
    leaves_state: bool,
}

impl Case {
    fn new(name: &str, steps: Vec<Step>) -> Case {
        Case {
            name: name.into(),
            user: TRUST_USER,
            startup: Vec::new(),
            steps,
            b_statements: false,
            mid_request: false,
            leaves_state: true,
        }
    }

    /// One statement that must succeed, named by its text.
    fn sql(text: &str) -> Case {
        Case::new(text, vec![sql(text)])
    }

    fn superuser(mut self) -> Case {
        self.user = SUPERUSER;
        self
    }

    fn startup(mut self, name: &'static str, value: &'static str) -> Case {
        self.startup.push((name, value));
        self
    }

    fn with_b_statements(mut self) -> Case {
        self.b_statements = true;
        self
    }

    /// A's statements undo themselves (or are refused): the self-check
    /// expects A's own session to look fresh.
    fn leaves_nothing(mut self) -> Case {
        self.leaves_state = false;
        self
    }

    fn also_mid_request(mut self) -> Case {
        self.mid_request = true;
        self
    }

    /// The ways A leaves in this case.
    fn leaves(&self) -> Vec<Leave> {
        let mut leaves = vec![Leave::Terminate, Leave::Drop];
        if self.mid_request {
            leaves.push(Leave::DropMidRequest);
        }
        leaves
    }
}

/// Every statement kind that changes session state.
fn cases() -> Vec<Case> {
    // A's statements against B's named statements, which pgrouter names
    // pgrouter_1 and pgrouter_2 on the server (the first ones of its
    // process). Sent as they are, and with a replica hint (three times, to
    // reach both replicas; on the primary alone the hint falls back to
    // it). A may get an error: only B's Execute afterwards counts.
    let against_b = |name: &str, texts: &[&str], hinted: bool| -> Case {
        let mut steps = Vec::new();
        for text in texts {
            if hinted {
                for _ in 0..3 {
                    steps.push(try_sql(&format!("{text} /* pgrouter: replica */")));
                }
            } else {
                steps.push(try_sql(text));
            }
        }
        Case::new(name, steps).with_b_statements().leaves_nothing()
    };
    const DEALLOCATE_B: &[&str] = &["DEALLOCATE pgrouter_1", "DEALLOCATE pgrouter_2"];
    vec![
        Case::new(CONTROL, vec![sql("SELECT 1")]).leaves_nothing(),
        // SET and RESET in all spellings.
        Case::sql("SET work_mem = '3MB'").also_mid_request(),
        Case::sql("SET work_mem TO 3000"),
        Case::sql("set WORK_MEM='3MB'"),
        Case::sql("SET \"work_mem\" TO '3MB'"),
        Case::sql("SET SESSION work_mem = '3MB'"),
        Case::sql("SET TIME ZONE 'Asia/Tokyo'"),
        Case::new(
            "SET search_path = evil, public; then RESET work_mem",
            vec![sql("SET search_path = evil, public"), sql("RESET work_mem")],
        ),
        Case::new(
            "SET work_mem; then SET search_path = evil, public",
            vec![
                sql("SET work_mem = '3MB'"),
                sql("SET search_path = evil, public"),
            ],
        )
        .also_mid_request(),
        Case::new(
            "SET a.b = 1 -- comment; then SET x.y = 2",
            vec![sql("SET a.b = 1 -- comment"), sql("SET x.y = 2")],
        ),
        Case::sql("SET work_mem = '3MB'; INSERT INTO t VALUES (1)"),
        Case::sql("SET work_mem = '3MB'; SELECT 1"),
        Case::new(
            "SET work_mem and search_path; then RESET ALL",
            vec![
                sql("SET work_mem = '3MB'"),
                sql("SET search_path = evil"),
                sql("RESET ALL"),
            ],
        )
        .leaves_nothing(),
        Case::new(
            "SET inside a committed transaction",
            vec![sql("BEGIN"), sql("SET work_mem = '3MB'"), sql("COMMIT")],
        ),
        Case::new(
            "SET through the extended protocol",
            vec![extended("", "SET work_mem = '3MB'")],
        ),
        Case::new(
            "SET LOCAL inside a committed transaction",
            vec![
                sql("BEGIN"),
                sql("SET LOCAL work_mem = '3MB'"),
                sql("COMMIT"),
            ],
        )
        .leaves_nothing(),
        Case::new(
            "SET LOCAL, A leaves inside the transaction",
            vec![
                sql("BEGIN"),
                sql("SET LOCAL work_mem = '3MB'"),
                sql("SELECT 1"),
            ],
        ),
        Case::sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        Case::sql("SELECT set_config('work_mem', '5MB', false)"),
        Case::sql("DO $$ BEGIN PERFORM set_config('work_mem', '7MB', false); END $$"),
        Case::new("startup options=-c work_mem=3MB", vec![sql("SELECT 1")])
            .startup("options", "-c work_mem=3MB"),
        // Identity.
        Case::sql("SET ROLE tenant").also_mid_request(),
        Case::sql("SET role = 'tenant'"),
        Case::sql("SET role='tenant'").also_mid_request(),
        Case::sql("SET \"role\" TO tenant"),
        Case::sql("SET SESSION ROLE tenant"),
        Case::sql("select set_config('role', 'tenant', false)"),
        Case::new(
            "SET ROLE tenant; then RESET ALL",
            vec![sql("SET ROLE tenant"), sql("RESET ALL")],
        ),
        Case::new("startup options=-c role=tenant", vec![sql("SELECT 1")])
            .startup("options", "-c role=tenant"),
        Case::sql("SET SESSION AUTHORIZATION app").superuser(),
        Case::sql("select set_config('session_authorization', 'app', false)").superuser(),
        // PostgreSQL ignores it at startup: the login's user wins.
        Case::new(
            "startup options=-c session_authorization=app",
            vec![sql("SELECT 1")],
        )
        .startup("options", "-c session_authorization=app")
        .superuser()
        .leaves_nothing(),
        // Prepared statements.
        Case::sql("PREPARE p1 AS SELECT 1"),
        Case::new(
            "PREPARE p1; then DEALLOCATE p1",
            vec![sql("PREPARE p1 AS SELECT 1"), sql("DEALLOCATE p1")],
        )
        .leaves_nothing(),
        Case::new(
            "protocol-level named statement",
            vec![extended("a_stmt", "SELECT 1")],
        ),
        Case::new(
            "protocol-level named statement, then Close",
            vec![extended("a_stmt", "SELECT 1"), Step::Close("a_stmt".into())],
        )
        .leaves_nothing(),
        against_b(
            "DEALLOCATE pgrouter_1; DEALLOCATE pgrouter_2 (B's statements)",
            DEALLOCATE_B,
            false,
        ),
        against_b(
            "DEALLOCATE pgrouter_N /* pgrouter: replica */ (B's statements)",
            DEALLOCATE_B,
            true,
        ),
        against_b(
            "DEALLOCATE ALL (B's statements)",
            &["DEALLOCATE ALL"],
            false,
        ),
        against_b(
            "DEALLOCATE ALL /* pgrouter: replica */ (B's statements)",
            &["DEALLOCATE ALL"],
            true,
        ),
        against_b("DISCARD ALL (B's statements)", &["DISCARD ALL"], false),
        against_b(
            "DISCARD ALL /* pgrouter: replica */ (B's statements)",
            &["DISCARD ALL"],
            true,
        ),
        // Other session state.
        Case::sql("CREATE TEMP TABLE scratch (a int)").also_mid_request(),
        Case::sql("SELECT 1 AS a INTO TEMP scratch"),
        Case::sql("SELECT pg_advisory_lock({key})").also_mid_request(),
        Case::sql("LISTEN channel_a").also_mid_request(),
        Case::sql("DECLARE c1 CURSOR WITH HOLD FOR SELECT 1"),
        Case::new(
            "DECLARE ... WITH HOLD inside a committed transaction",
            vec![
                sql("BEGIN"),
                sql("DECLARE c1 CURSOR WITH HOLD FOR SELECT 1"),
                sql("COMMIT"),
            ],
        ),
    ]
}

/// A's raw connection and what it saw.
struct ClientA {
    conn: Conn,
    /// Transaction status of the last ReadyForQuery.
    status: char,
    /// (port, backend pid) of the server connections A ran on.
    backends: Vec<(u16, i32)>,
}

/// Sends a StartupMessage and reads through ReadyForQuery, or until the
/// peer closes: (what arrived, whether ReadyForQuery came).
async fn login_replies(conn: &mut Conn, params: &[(&str, &str)]) -> (Vec<Msg>, bool) {
    conn.send(&wire::startup_packet(wire::PROTOCOL_3_0, params))
        .await;
    let (msgs, result) = conn.try_read_through_ready(READ_DEADLINE).await;
    (msgs, result.is_ok())
}

fn first_error(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.is_error())
}

impl ClientA {
    /// Logs in to `addr` (pgrouter, or a node for the self-check).
    async fn login(addr: &str, db: &str, case: &Case) -> Result<ClientA, String> {
        let mut conn = Conn::connect(addr).await;
        let mut params = vec![
            ("user", case.user),
            ("database", db),
            ("application_name", APP_NAME),
            ("client_encoding", "UTF8"),
        ];
        params.extend(case.startup.iter().copied());
        let (msgs, ready) = login_replies(&mut conn, &params).await;
        if !ready || first_error(&msgs).is_some() {
            return Err(format!("A's login failed: {msgs:?}"));
        }
        Ok(ClientA {
            conn,
            status: 'I',
            backends: Vec::new(),
        })
    }

    /// Runs one step through its ReadyForQuery; `Err` for an error the
    /// step may not have, or no ReadyForQuery.
    async fn run(&mut self, step: &Step, key: u64) -> Result<Vec<Msg>, String> {
        if let Err(e) = self.conn.try_send(&step.bytes(key)).await {
            return Err(format!("A's `{step}`: could not send ({e})"));
        }
        let (msgs, result) = self.conn.try_read_through_ready(READ_DEADLINE).await;
        if let Err(e) = result {
            return Err(format!(
                "A's `{step}`: no ReadyForQuery ({e}); got {msgs:?}"
            ));
        }
        self.status = msgs.last().and_then(Msg::status).unwrap_or('?');
        match first_error(&msgs) {
            Some(error) if step.must_succeed() => {
                Err(format!("A's `{step}` failed: {}", error.describe()))
            }
            _ => Ok(msgs),
        }
    }

    /// Reads once on every server connection A can reach, as any client
    /// does between its statements, and notes which backends those were.
    async fn visit_every_node(&mut self, routing: Routing) {
        let hints: &[&str] = match (self.status, routing) {
            // Inside a transaction: its one connection.
            ('T', _) | (_, Routing::Off) => &[""],
            ('I', Routing::On) => &[
                "/* pgrouter: primary */",
                "/* pgrouter: replica */",
                "/* pgrouter: replica */",
            ],
            _ => return,
        };
        for hint in hints {
            let step = try_sql(&format!(
                "{hint} SELECT inet_server_port(), pg_backend_pid()"
            ));
            let Ok(msgs) = self.run(&step, 0).await else {
                return;
            };
            if let Some(row) = msgs.iter().find(|m| m.tag == b'D') {
                let columns = row.columns();
                let parse = |i: usize| columns.get(i).cloned().flatten().unwrap_or_default();
                if let (Ok(port), Ok(pid)) = (parse(0).parse(), parse(1).parse()) {
                    self.backends.push((port, pid));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What client B sees
// ---------------------------------------------------------------------------

/// Everything a session can observe of the state left on its connection,
/// in one statement (so it runs on one server connection) that changes
/// nothing. Rows: (kind, name, value).
const VIEW_SQL: &str = "\
SELECT 'server', inet_server_port()::text, pg_backend_pid()::text \
UNION ALL SELECT 'current_user', '', current_user::text \
UNION ALL SELECT 'session_user', '', session_user::text \
UNION ALL SELECT 'setting', name, current_setting(name) FROM pg_settings \
    WHERE name NOT LIKE '%.%' OR setting IS DISTINCT FROM boot_val \
UNION ALL SELECT 'custom setting', n, coalesce(current_setting(n, true), '') \
    FROM unnest(ARRAY['a.b', 'x.y']) AS n \
UNION ALL SELECT 'prepared statement', name, '' FROM pg_prepared_statements \
    WHERE name NOT LIKE 'pgrouter\\_%' \
UNION ALL SELECT 'listening channel', c, '' FROM pg_listening_channels() AS c \
UNION ALL SELECT 'temp relation', relname::text, relkind::text FROM pg_class \
    WHERE relnamespace = pg_my_temp_schema() \
UNION ALL SELECT 'lock', locktype || ' ' || coalesce(classid::text, '-') || '/' \
    || coalesce(objid::text, '-') || '/' || coalesce(objsubid::text, '-'), mode \
    FROM pg_locks WHERE pid = pg_backend_pid() \
    AND locktype NOT IN ('relation', 'virtualxid') \
UNION ALL SELECT 'cursor', name, '' FROM pg_cursors";

#[derive(Debug, Clone)]
struct View {
    port: u16,
    pid: i32,
    /// (kind, name) -> value
    state: BTreeMap<(String, String), String>,
}

impl View {
    /// From the rows of [`VIEW_SQL`].
    fn from_rows(rows: impl IntoIterator<Item = [String; 3]>) -> View {
        let mut view = View {
            port: 0,
            pid: 0,
            state: BTreeMap::new(),
        };
        for [kind, name, value] in rows {
            if kind == "server" {
                view.port = name.parse().unwrap_or(0);
                view.pid = value.parse().unwrap_or(0);
            } else {
                view.state.insert((kind, name), value);
            }
        }
        view
    }

    /// B's look, through tokio-postgres; `hint` goes before the SQL.
    async fn fetch(client: &Client, hint: &str) -> Result<View, String> {
        let messages = client
            .simple_query(&format!("{hint}{VIEW_SQL}"))
            .await
            .map_err(|e| format!("B's look {hint}failed: {}", pg_error(&e)))?;
        Ok(View::from_rows(messages.iter().filter_map(|message| {
            let SimpleQueryMessage::Row(row) = message else {
                return None;
            };
            let get = |i| row.get(i).unwrap_or("").to_owned();
            Some([get(0), get(1), get(2)])
        })))
    }

    /// A's look at its own session, over the raw connection.
    async fn fetch_raw(a: &mut ClientA, hint: &str) -> Result<View, String> {
        let msgs = a.run(&sql(&format!("{hint}{VIEW_SQL}")), 0).await?;
        let rows = msgs.iter().filter(|m| m.tag == b'D').map(|row| {
            let mut columns = row.columns().into_iter().map(Option::unwrap_or_default);
            let mut next = || columns.next().unwrap_or_default();
            [next(), next(), next()]
        });
        Ok(View::from_rows(rows))
    }

    /// Each difference from a fresh connection's view, readable.
    fn differences(&self, fresh: &View) -> Vec<String> {
        let mut keys: Vec<&(String, String)> =
            self.state.keys().chain(fresh.state.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let here = self.state.get(key);
                let there = fresh.state.get(key);
                if here == there {
                    return None;
                }
                let (kind, name) = key;
                let what = if name.is_empty() {
                    kind.clone()
                } else {
                    format!("{kind} {name}")
                };
                let show = |v: Option<&String>| match v {
                    Some(v) => format!("`{v}`"),
                    None => "(none)".into(),
                };
                Some(format!(
                    "{what}: B sees {}, a fresh connection {}",
                    show(here),
                    show(there)
                ))
            })
            .collect()
    }
}

/// B's look at each server connection of the pool: one per node.
async fn look_through_pgrouter(b: &Client, routing: Routing) -> Result<Vec<View>, String> {
    match routing {
        Routing::Off => Ok(vec![View::fetch(b, "").await?]),
        Routing::On => {
            let cluster = Cluster::shared();
            let mut views = vec![View::fetch(b, "/* pgrouter: primary */ ").await?];
            // Round robin takes B to each replica within a few reads.
            for _ in 0..6 {
                if cluster
                    .replicas()
                    .iter()
                    .all(|r| views.iter().any(|v| v.port == r.port))
                {
                    break;
                }
                views.push(View::fetch(b, "/* pgrouter: replica */ ").await?);
            }
            for replica in cluster.replicas() {
                if !views.iter().any(|v| v.port == replica.port) {
                    return Err(format!(
                        "B's replica reads never reached {} (port {}): {:?}",
                        node_name(replica.port),
                        replica.port,
                        views.iter().map(|v| v.port).collect::<Vec<_>>()
                    ));
                }
            }
            Ok(views)
        }
    }
}

/// A fresh direct connection's look at the same node and database: the
/// same for every variant, so taken once per node, user and database.
async fn look_directly(port: u16, user: &str, db: &str) -> Result<View, String> {
    type Looks = std::sync::Mutex<std::collections::HashMap<(u16, String, String), View>>;
    static LOOKS: std::sync::OnceLock<Looks> = std::sync::OnceLock::new();
    let looks = LOOKS.get_or_init(Default::default);
    let key = (port, user.to_owned(), db.to_owned());
    if let Some(view) = looks.lock().unwrap().get(&key) {
        return Ok(view.clone());
    }
    let view = look_directly_now(port, user, db).await?;
    looks.lock().unwrap().insert(key, view.clone());
    Ok(view)
}

async fn look_directly_now(port: u16, user: &str, db: &str) -> Result<View, String> {
    let node = node_by_port(port).ok_or_else(|| format!("no node on port {port}"))?;
    let conn = format!(
        "{} application_name={APP_NAME}",
        node.conn_str(user, "", db)
    );
    let client = crate::common::try_connect_str(&conn)
        .await
        .map_err(|e| format!("direct connection to {}: {e}", node_name(port)))?;
    View::fetch(&client, "").await
}

/// A tokio-postgres error with its SQLSTATE and message, when the server
/// sent one.
fn pg_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {} {:?}", db.severity(), db.code().code(), db.message()),
        None => error.to_string(),
    }
}

async fn connect_b(router: &Pgrouter, user: &str, db: &str) -> Result<Client, String> {
    let conn = format!(
        "{} application_name={APP_NAME}",
        conn_string(HOST, router.port(), user, "", db)
    );
    crate::common::try_connect_str(&conn)
        .await
        .map_err(|e| format!("B could not connect: {}", pg_error(&e)))
}

/// B's own named statements: (statement, value it returns, how many
/// runs reach every server connection it may be sent to).
struct BStatements(Vec<(tokio_postgres::Statement, i32, usize)>);

impl BStatements {
    async fn prepare(b: &Client, routing: Routing) -> Result<BStatements, String> {
        let mut wanted = vec![("SELECT 42 /* pgrouter: primary */", 42, 1)];
        if routing == Routing::On {
            wanted.push(("SELECT 43 /* pgrouter: replica */", 43, 2));
        }
        let mut statements = Vec::new();
        for (text, value, runs) in wanted {
            let statement = b
                .prepare(text)
                .await
                .map_err(|e| format!("B's prepare of {text:?}: {}", pg_error(&e)))?;
            statements.push((statement, value, runs));
        }
        let prepared = BStatements(statements);
        prepared.run(b, "before A came").await?;
        Ok(prepared)
    }

    async fn run(&self, b: &Client, when: &str) -> Result<(), String> {
        for (statement, value, runs) in &self.0 {
            for _ in 0..*runs {
                let result = b.query_one(statement, &[]).await;
                match result.map(|row| row.get::<_, i32>(0)) {
                    Ok(v) if v == *value => {}
                    Ok(v) => {
                        return Err(format!(
                            "B's Execute of its named statement returning {value} gave {v} {when}"
                        ))
                    }
                    Err(e) => {
                        return Err(format!(
                        "B's Execute of its named statement returning {value} failed {when}: {}",
                        pg_error(&e)
                    ))
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// One variant: a case, a routing mode, a way to leave
// ---------------------------------------------------------------------------

/// What went wrong in one variant (empty: nothing leaked), and whether B's
/// looks were at server connections A had used.
struct Outcome {
    problems: Vec<String>,
    shared: bool,
    took: Duration,
}

impl Outcome {
    fn with(mut self, problem: String) -> Outcome {
        self.problems.push(problem);
        self
    }
}

async fn run_variant(db: &str, case: &Case, routing: Routing, leave: Leave) -> Outcome {
    let started = Instant::now();
    let router = start_router(db, routing).await;
    let ran = tokio::time::timeout(VARIANT_DEADLINE, variant(&router, db, case, routing, leave));
    let outcome = match ran.await {
        Ok(outcome) => outcome,
        Err(_) => Outcome {
            problems: vec![format!("timed out after {VARIANT_DEADLINE:?}")],
            shared: false,
            took: Duration::ZERO,
        },
    };
    drop(router);
    Outcome {
        took: started.elapsed(),
        ..outcome
    }
}

async fn variant(
    router: &Pgrouter,
    db: &str,
    case: &Case,
    routing: Routing,
    leave: Leave,
) -> Outcome {
    let mut outcome = Outcome {
        problems: Vec::new(),
        shared: false,
        took: Duration::ZERO,
    };
    let key = unique_key();

    // B first when it holds statements across A's visit.
    let mut b = None;
    let mut b_statements = None;
    if case.b_statements {
        let client = match connect_b(router, case.user, db).await {
            Ok(client) => client,
            Err(e) => return outcome.with(e),
        };
        match BStatements::prepare(&client, routing).await {
            Ok(statements) => b_statements = Some(statements),
            Err(e) => return outcome.with(e),
        }
        b = Some(client);
    }

    // Leaving mid-request races with the reply: A tries a few times.
    let rounds = match leave {
        Leave::DropMidRequest => MID_REQUEST_ROUNDS,
        _ => 1,
    };
    for _ in 0..rounds {
        let backends = match a_visits(router, db, case, routing, leave, key).await {
            Ok((backends, problems)) => {
                outcome.problems.extend(problems);
                backends
            }
            Err(e) => return outcome.with(e),
        };
        if b.is_none() {
            match connect_b(router, case.user, db).await {
                Ok(client) => b = Some(client),
                Err(e) => return outcome.with(e),
            }
        }
        let client = b.as_ref().expect("B connected above");
        if let Some(statements) = &b_statements {
            if let Err(e) = statements.run(client, "after A left").await {
                outcome.problems.push(e);
            }
        }
        b_looks(client, routing, case.user, db, &backends, &mut outcome).await;
        if !outcome.problems.is_empty() {
            break;
        }
    }
    outcome
}

/// A comes, changes its session and leaves: the backends it ran on, and
/// what went wrong on the way.
async fn a_visits(
    router: &Pgrouter,
    db: &str,
    case: &Case,
    routing: Routing,
    leave: Leave,
    key: u64,
) -> Result<(Vec<(u16, i32)>, Vec<String>), String> {
    let mut problems = Vec::new();
    let mut a = ClientA::login(&router.addr.to_string(), db, case).await?;
    let (last, steps) = match (leave, case.steps.split_last()) {
        (Leave::DropMidRequest, Some((last, steps))) => (Some(last), steps),
        _ => (None, &case.steps[..]),
    };
    for step in steps {
        if let Err(e) = a.run(step, key).await {
            problems.push(e);
        }
    }
    a.visit_every_node(routing).await;
    match leave {
        Leave::Terminate => {
            let _ = a.conn.try_send(&wire::terminate()).await;
            if a.conn.try_read_to_eof(READ_DEADLINE).await.is_err() {
                problems.push("pgrouter kept A's connection open after Terminate".into());
            }
        }
        Leave::Drop => drop(a.conn),
        Leave::DropMidRequest => {
            if let Some(last) = last {
                let _ = a.conn.try_send(&last.bytes(key)).await;
            }
            drop(a.conn);
        }
    }
    Ok((a.backends, problems))
}

/// B looks at every server connection and compares each with a fresh
/// direct connection to its node; notes whether one was A's.
async fn b_looks(
    b: &Client,
    routing: Routing,
    user: &str,
    db: &str,
    a_backends: &[(u16, i32)],
    outcome: &mut Outcome,
) {
    let views = match look_through_pgrouter(b, routing).await {
        Ok(views) => views,
        Err(e) => {
            outcome.problems.push(e);
            return;
        }
    };
    for view in &views {
        let fresh = match look_directly(view.port, user, db).await {
            Ok(fresh) => fresh,
            Err(e) => {
                outcome.problems.push(e);
                continue;
            }
        };
        let a_was_here = a_backends.contains(&(view.port, view.pid));
        outcome.shared |= a_was_here;
        let mut differences = view.differences(&fresh);
        // Another user sees other settings: the first lines say why.
        if differences.len() > MAX_DIFFERENCES {
            let more = differences.len() - MAX_DIFFERENCES;
            differences.truncate(MAX_DIFFERENCES);
            differences.push(format!("and {more} more differences"));
        }
        for difference in differences {
            let line = format!(
                "on {} (backend {}{}): {difference}",
                node_name(view.port),
                view.pid,
                if a_was_here { ", A's" } else { "" }
            );
            if !outcome.problems.contains(&line) {
                outcome.problems.push(line);
            }
        }
    }
}

fn parallel() -> usize {
    env_u64("ISOLATION_PARALLEL")
        .map(|n| n.max(1) as usize)
        .unwrap_or(PARALLEL)
}

/// Runs every case with both ways of leaving; panics naming each variant
/// in which B saw something of A's.
async fn matrix(routing: Routing) {
    let started = Instant::now();
    let db = database(match routing {
        Routing::Off => "iso_matrix_off",
        Routing::On => "iso_matrix_on",
    })
    .await;
    let cases = cases();
    let variants: Vec<(&Case, Leave)> = cases
        .iter()
        .flat_map(|case| case.leaves().into_iter().map(move |leave| (case, leave)))
        .collect();
    let total = variants.len();
    let outcomes: Vec<(&Case, Leave, Outcome)> = stream::iter(variants)
        .map(|(case, leave)| {
            let db = &db;
            async move { (case, leave, run_variant(db, case, routing, leave).await) }
        })
        .buffered(parallel())
        .collect()
        .await;

    let mut outcomes = outcomes;
    // The control case proves the harness: B gets A's connection.
    for (case, leave, outcome) in &mut outcomes {
        if case.name == CONTROL && !outcome.shared {
            outcome.problems.push(format!(
                "the harness: B never looked at a server connection A had used ({leave})"
            ));
        }
    }
    let unshared: Vec<String> = outcomes
        .iter()
        .filter(|(_, _, o)| !o.shared)
        .map(|(case, leave, _)| format!("[{}] {leave}", case.name))
        .collect();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, _, o)| !o.problems.is_empty())
        .collect();
    let mut slowest: Vec<(Duration, String)> = outcomes
        .iter()
        .map(|(case, leave, o)| (o.took, format!("[{}] {leave}", case.name)))
        .collect();
    slowest.sort_by_key(|(took, _)| std::cmp::Reverse(*took));
    slowest.truncate(3);
    println!(
        "isolation matrix, routing {routing:?}: {total} variants in {:.1?}, {} failed; \
         B got a fresh server connection instead of A's in {}: {unshared:?}; slowest: {slowest:?}",
        started.elapsed(),
        failed.len(),
        unshared.len()
    );
    if failed.is_empty() {
        return;
    }
    let mut report = format!(
        "routing {routing:?}: B saw another client's session state in {} of {total} variants:\n",
        failed.len()
    );
    for (case, leave, outcome) in failed {
        report.push_str(&format!("\n[{}] A left by {leave}:\n", case.name));
        for problem in &outcome.problems {
            report.push_str(&format!("    {problem}\n"));
        }
    }
    panic!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_routing_off() {
    matrix(Routing::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_routing_on() {
    matrix(Routing::On).await;
}

/// The test's own check, straight to PostgreSQL: after its steps, A's
/// own session must differ from a fresh one in each case that leaves
/// state (else the matrix could not see that state leak), and look fresh
/// in the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_each_case_leaves_state_the_look_can_see() {
    let cluster = Cluster::shared();
    let db = database("iso_self").await;
    let primary = cluster.primary();
    let cases = cases();
    let results: Vec<(&Case, Result<Vec<String>, String>)> = stream::iter(&cases)
        .map(|case| {
            let db = &db;
            async move {
                let result = async {
                    let mut a = ClientA::login(&primary.addr(), db, case).await?;
                    for step in &case.steps {
                        a.run(step, unique_key()).await?;
                    }
                    let own = View::fetch_raw(&mut a, "").await?;
                    let fresh = look_directly(primary.port, case.user, db).await?;
                    Ok(own.differences(&fresh))
                }
                .await;
                (case, result)
            }
        })
        .buffered(parallel())
        .collect()
        .await;
    let mut wrong = Vec::new();
    for (case, result) in results {
        match result {
            Err(e) => wrong.push(format!("[{}] {e}", case.name)),
            Ok(differences) if case.leaves_state && differences.is_empty() => wrong.push(format!(
                "[{}] A's own session looks fresh: the look misses its state",
                case.name
            )),
            Ok(differences) if !case.leaves_state && !differences.is_empty() => {
                wrong.push(format!(
                    "[{}] A's own session is not fresh: {differences:?}",
                    case.name
                ))
            }
            Ok(_) => {}
        }
    }
    assert!(wrong.is_empty(), "self-check:\n  {}", wrong.join("\n  "));
}

/// The other half of two leaks: the client whose SET pgrouter lost or
/// replayed wrong must keep its own settings on every server connection it
/// gets (routing on: the primary and both replicas), as on a direct
/// connection after the same statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_its_own_settings_on_every_server_connection() {
    let cluster = Cluster::shared();
    let primary = cluster.primary();
    let db = database("iso_own").await;
    let sequences: Vec<Case> = vec![
        Case::new(
            "SET a.b = 1 -- comment; then SET x.y = 2",
            vec![sql("SET a.b = 1 -- comment"), sql("SET x.y = 2")],
        ),
        Case::sql("SET work_mem = '3MB'; INSERT INTO t VALUES (1)"),
        Case::new(
            "SET work_mem TO 3000; SET search_path = evil, public; RESET work_mem",
            vec![
                sql("SET work_mem TO 3000"),
                sql("SET search_path = evil, public"),
                sql("RESET work_mem"),
            ],
        ),
        Case::sql("set WORK_MEM='3MB'"),
    ];
    // What the statements above can change.
    let watched = |view: &View| -> BTreeMap<(String, String), String> {
        view.state
            .iter()
            .filter(|((kind, name), _)| {
                matches!(kind.as_str(), "current_user" | "custom setting")
                    || (kind == "setting" && matches!(name.as_str(), "work_mem" | "search_path"))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut problems = Vec::new();
    for case in &sequences {
        let router = start_router(&db, Routing::On).await;
        let mut direct = ClientA::login(&primary.addr(), &db, case)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut through = ClientA::login(&router.addr.to_string(), &db, case)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for step in &case.steps {
            direct.run(step, 0).await.unwrap_or_else(|e| panic!("{e}"));
            if let Err(e) = through.run(step, 0).await {
                problems.push(format!("[{}] {e}", case.name));
            }
        }
        let want = watched(&View::fetch_raw(&mut direct, "").await.unwrap());
        let mut seen = Vec::new();
        for hint in [
            "/* pgrouter: primary */ ",
            "/* pgrouter: replica */ ",
            "/* pgrouter: replica */ ",
        ] {
            let view = match View::fetch_raw(&mut through, hint).await {
                Ok(view) => view,
                Err(e) => {
                    problems.push(format!("[{}] {e}", case.name));
                    continue;
                }
            };
            seen.push(node_name(view.port));
            let have = watched(&view);
            let own = View {
                state: have,
                ..view.clone()
            };
            let direct_view = View {
                state: want.clone(),
                ..view
            };
            for difference in own.differences(&direct_view) {
                problems.push(format!(
                    "[{}] on {}: {}",
                    case.name,
                    node_name(own.port),
                    difference.replace("B sees", "A sees").replace(
                        "a fresh connection",
                        "a direct connection after the same statements"
                    )
                ));
            }
        }
        seen.sort();
        seen.dedup();
        // A SET beside another statement pins (docs/BEHAVIOUR.md): its
        // client rightly stays on one connection, where it has it.
        let pins = case.name.contains("; INSERT");
        if seen.len() < 3 && !pins {
            problems.push(format!("[{}] A's looks reached only {seen:?}", case.name));
        }
    }
    assert!(
        problems.is_empty(),
        "a client lost its own settings:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// A bad startup parameter
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_startup_parameter_is_refused_at_login_as_postgres_refuses_it() {
    let cluster = Cluster::shared();
    let db = database("iso_badopt").await;
    let params = [
        ("user", TRUST_USER),
        ("database", db.as_str()),
        ("options", "-c work_mem=bogus"),
    ];

    let mut direct = Conn::connect(cluster.primary().addr()).await;
    let (msgs, _) = login_replies(&mut direct, &params).await;
    let want = first_error(&msgs)
        .unwrap_or_else(|| panic!("PostgreSQL accepted work_mem=bogus: {msgs:?}"))
        .clone();
    assert_eq!(want.severity().as_deref(), Some("FATAL"), "{want:?}");
    assert_eq!(want.sqlstate().as_deref(), Some("22023"), "{want:?}");

    let router = start_router(&db, Routing::Off).await;
    let mut problems = Vec::new();
    let mut bad = Conn::connect(router.addr).await;
    let (msgs, ready) = login_replies(&mut bad, &params).await;
    match first_error(&msgs) {
        Some(got)
            if got.severity() == want.severity()
                && got.sqlstate() == want.sqlstate()
                && !ready => {}
        _ => problems.push(format!(
            "login: pgrouter answered {msgs:?} (logged in: {ready}) where PostgreSQL answers {want:?}"
        )),
    }
    if ready {
        // Let in all the same: its requests must not each cost a backend.
        for i in 0..5 {
            let _ = bad.try_send(&wire::query("SELECT 1")).await;
            let (replies, result) = bad.try_read_through_ready(READ_DEADLINE).await;
            if result.is_err() || i == 0 {
                problems.push(format!(
                    "the bad client's SELECT 1 (#{}) got {replies:?}{}",
                    i + 1,
                    result
                        .as_ref()
                        .err()
                        .map(|e| format!(", then {e}"))
                        .unwrap_or_default()
                ));
            }
            if result.is_err() {
                break;
            }
        }
    }
    let good = connect_b(&router, TRUST_USER, &db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        if let Err(e) = good.simple_query("SELECT 1").await {
            problems.push(format!(
                "a good client's SELECT 1 after the bad one: {}",
                pg_error(&e)
            ));
        }
    }
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let opened: u64 = rows(&console, "SHOW STATS")
        .await
        .iter()
        .filter(|row| row["database"] == db && row["user"] == TRUST_USER)
        .map(|row| row["connections_opened"].parse::<u64>().unwrap_or(0))
        .sum();
    // One connection serves the good client; one more may have served to
    // check the bad client's parameters.
    if opened > 2 {
        problems.push(format!(
            "{opened} server connections opened for the bad client's 5 requests and a \
             good client's 3 (at most 2 expected)"
        ));
    }
    assert!(
        problems.is_empty(),
        "options=-c work_mem=bogus:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Random sequences
// ---------------------------------------------------------------------------

use crate::common::env_u64;
use crate::common::rng::Rng;

/// How many kinds of statement [`random_step`] knows.
const STEP_KINDS: usize = 31;

/// A random statement of kind `kind` (any of them may fail: a name not
/// there, a statement in a failed transaction).
fn random_step(rng: &mut Rng, kind: usize) -> Step {
    const SETTINGS: [(&str, &[&str]); 4] = [
        ("work_mem", &["'3MB'", "3000", "'5MB'"]),
        ("search_path", &["evil, public", "evil", "public, evil"]),
        ("statement_timeout", &["'77s'", "0", "12345"]),
        ("a.b", &["1", "'x'"]),
    ];
    let (name, values) = *rng.pick(&SETTINGS);
    let value = *rng.pick(values);
    let n = rng.index(3);
    let text = match kind {
        0 => format!("SET {name} = {value}"),
        1 => format!("SET {name} TO {value}"),
        2 => format!("set {}={value}", name.to_uppercase()),
        3 => format!("SET \"{name}\" TO {value}"),
        4 => format!("SET SESSION {name} = {value} -- note"),
        5 => format!("RESET {name}"),
        6 => "RESET ALL".into(),
        7 => format!(
            "SELECT set_config('{name}', '{}', {})",
            value.trim_matches('\''),
            rng.pick(&["false", "true"])
        ),
        8 => format!("SET LOCAL {name} = {value}"),
        9 => format!("SET {name} = {value}; INSERT INTO t VALUES ({n})"),
        10 => (*rng.pick(&[
            "SET ROLE tenant",
            "SET role='tenant'",
            "SET \"role\" TO tenant",
            "SET SESSION ROLE tenant",
            "select set_config('role', 'tenant', false)",
        ]))
        .into(),
        11 => "RESET ROLE".into(),
        12 => (*rng.pick(&[
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        ]))
        .into(),
        13 => format!("PREPARE p{n} AS SELECT {n}"),
        14 => format!("DEALLOCATE p{n}"),
        15 => (*rng.pick(&["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE pgrouter_1"])).into(),
        16 => return may_fail(extended(&format!("s{n}"), &format!("SELECT {n}"))),
        17 => return may_fail(Step::Close(format!("s{n}"))),
        18 => return may_fail(Step::Execute(format!("s{n}"))),
        19 => format!("CREATE TEMP TABLE tmp{n} (a int)"),
        20 => format!("DROP TABLE tmp{n}"),
        21 => format!("SELECT pg_advisory_lock({{key}}{n})"),
        22 => format!("SELECT pg_advisory_unlock({{key}}{n})"),
        23 => format!("LISTEN ch{n}"),
        24 => "UNLISTEN *".into(),
        25 => format!("DECLARE c{n} CURSOR WITH HOLD FOR SELECT {n}"),
        26 => format!("CLOSE c{n}"),
        27 => (*rng.pick(&["BEGIN", "BEGIN", "START TRANSACTION READ ONLY"])).into(),
        28 => (*rng.pick(&["COMMIT", "ROLLBACK"])).into(),
        29 => format!("INSERT INTO t VALUES ({n})"),
        _ => format!(
            "DO $$ BEGIN PERFORM set_config('{name}', '{}', false); END $$",
            value.trim_matches('\'')
        ),
    };
    try_sql(&text)
}

/// A's program for a seed: routing, startup parameters, statements, and
/// how it leaves.
fn random_program(seed: u64) -> (Case, Routing, Leave) {
    let mut rng = Rng::new(seed);
    let routing = *rng.pick(&[Routing::Off, Routing::On]);
    let leave = *rng.pick(&[Leave::Terminate, Leave::Drop, Leave::DropMidRequest]);
    let mut case = Case::new(&format!("seed {seed}"), Vec::new());
    match rng.index(8) {
        0 => case = case.startup("options", "-c work_mem=3MB"),
        1 => case = case.startup("options", "-c role=tenant"),
        _ => {}
    }
    // Swarm testing: each program draws from a few kinds only, so that
    // some programs hold no statement that pins (after which the
    // connection is reset whole) and the rest of their state is exposed.
    let mut kinds: Vec<usize> = (0..STEP_KINDS).filter(|_| rng.chance(15)).collect();
    if kinds.is_empty() {
        kinds.push(rng.index(STEP_KINDS));
    }
    let length = 2 + rng.index(10);
    for _ in 0..length {
        let kind = *rng.pick(&kinds);
        case.steps.push(random_step(&mut rng, kind));
    }
    case.b_statements = rng.chance(20);
    (case, routing, leave)
}

fn describe_program(case: &Case, routing: Routing, leave: Leave) -> String {
    let mut out = format!("  routing {routing:?}, A leaves by {leave}");
    if !case.startup.is_empty() {
        out.push_str(&format!(", A's startup parameters {:?}", case.startup));
    }
    if case.b_statements {
        out.push_str(", B holds named statements across A's visit");
    }
    out.push_str(" (any statement may fail)\n");
    for step in &case.steps {
        let step = match step {
            Step::MayFail(step) => step,
            step => step,
        };
        out.push_str(&format!("    {step}\n"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_leave_nothing_for_the_next_client() {
    let seeds: Vec<u64> = match (env_u64("ISOLATION_SEED"), env_u64("ISOLATION_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (1..=count).collect(),
        (None, None) => (1..=DEFAULT_SEEDS).collect(),
    };
    if let [seed] = seeds[..] {
        let (case, routing, leave) = random_program(seed);
        println!("seed {seed}:\n{}", describe_program(&case, routing, leave));
    }
    let started = Instant::now();
    let db = database("iso_random").await;
    let failures: Vec<String> = stream::iter(seeds.iter().copied())
        .map(|seed| {
            let db = &db;
            async move {
                let (case, routing, leave) = random_program(seed);
                let outcome = run_variant(db, &case, routing, leave).await;
                (!outcome.problems.is_empty()).then(|| {
                    format!(
                        "seed {seed} (ISOLATION_SEED={seed} replays it):\n{}  B saw:\n      {}\n",
                        describe_program(&case, routing, leave),
                        outcome.problems.join("\n      ")
                    )
                })
            }
        })
        .buffered(parallel())
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    println!(
        "isolation, random sequences: {} seeds in {:.1?}, {} failed",
        seeds.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} random programs left state for the next client:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
