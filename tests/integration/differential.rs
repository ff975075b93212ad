//! Differential protocol test: seeded client programs over the raw wire
//! protocol, each run against the primary directly and through pgrouter
//! (transaction mode, read/write routing over the replicas, read-your-writes
//! "lsn"); the reply streams must be the same.
//!
//! Run:
//!   cargo test --test integration differential
//!       the CI run: seeds 1..=400
//!   DIFF_SEED=1234 cargo test --test integration differential -- --nocapture
//!       one seed, its program printed
//!   DIFF_SEEDS=5000 cargo test --test integration differential -- --nocapture
//!       seeds 1..=5000
//!   DIFF_MAX_FAILURES=50 ...
//!       stop after this many failing seeds (default 10)
//!   DIFF_PARALLEL=4 ...
//!       programs at once (default 1: a failing seed then fails alone too)
//!   DIFF_SELF_CHECK=1 ...
//!       both sides straight to PostgreSQL: checks the test itself (after a
//!       change to the generator), which must then pass for any seeds
//!   DIFF_VERBOSE=1 ...
//!       every failing program in full, not only the first three
//!
//! A program is a list of steps, each one or more frontend messages and the
//! reading of their replies: simple queries (one or several statements,
//! or several Query messages pipelined), extended-protocol statements with a
//! Sync each (pipelined or one at a time), batches of statements under one
//! Sync, batches split by Flush (whose replies are read before more is
//! sent), named statements (prepared alone, used by Bind, closed), explicit
//! transactions with savepoints, statements that fail (division by zero,
//! unique violation) in the middle of batches and transactions, COPY FROM
//! STDIN and COPY TO STDOUT. A small model of PostgreSQL's transaction
//! states keeps the programs to what a real client does (named statements
//! are used only once their Parse succeeded, ROLLBACK TO names a savepoint
//! that exists, the unnamed statement is never used past its Sync): so a
//! difference is pgrouter's, not the program's.
//!
//! Each program has its own table `t_<seed>`, named in every statement
//! (so that no program's SQL text is another's: pgrouter shares server-side
//! prepared statements between clients by text), created the same way in two
//! databases: one the direct run uses, one behind pgrouter. Every step's
//! replies are compared exactly, except for BackendKeyData and
//! ParameterStatus (left out), NoticeResponses (compared per step as a
//! set), ErrorResponses (severity, SQLSTATE and message only) and the table
//! OIDs of RowDescription. The table's final contents must match too, and
//! no reply through pgrouter may be 25006 (a write sent to a replica).
//! A program runs on one connection, its reads after its own writes:
//! read-your-writes must make them see those writes, so a stale read is a
//! difference too.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::common::wire::{self, Conn, Msg};
use crate::common::{Cluster, Pgrouter, RouterConfig};

/// Seeds of the CI run.
const DEFAULT_SEEDS: u64 = 400;
/// Programs run at the same time (DIFF_PARALLEL).
const PARALLEL: u64 = 1;
/// Seeds whose tables are created together.
const CHUNK: u64 = 100;
/// How long one reply may take before the run calls it missing.
const READ_DEADLINE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// A deterministic generator (SplitMix64)
// ---------------------------------------------------------------------------

use crate::common::env_u64;
use crate::common::rng::Rng;

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

/// One frontend message of a program.
#[derive(Clone, Debug)]
enum Out {
    Query(String),
    Parse {
        name: String,
        sql: String,
    },
    Bind {
        statement: String,
        params: Vec<String>,
    },
    DescribeStatement(String),
    DescribePortal,
    Execute(i32),
    Close(String),
    Sync,
    Flush,
    CopyData(String),
    CopyDone,
}

impl Out {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Out::Query(sql) => wire::query(sql),
            Out::Parse { name, sql } => wire::parse(name, sql, &[]),
            Out::Bind { statement, params } => {
                let params: Vec<Option<&str>> = params.iter().map(|p| Some(p.as_str())).collect();
                wire::bind("", statement, &params)
            }
            Out::DescribeStatement(name) => wire::describe_statement(name),
            Out::DescribePortal => wire::describe_portal(""),
            Out::Execute(max_rows) => wire::execute("", *max_rows),
            Out::Close(name) => wire::close_statement(name),
            Out::Sync => wire::sync(),
            Out::Flush => wire::flush(),
            Out::CopyData(row) => wire::copy_data(row.as_bytes()),
            Out::CopyDone => wire::copy_done(),
        }
    }

    /// Extended-protocol messages answered by one completion (or an error).
    fn completes(&self) -> bool {
        matches!(
            self,
            Out::Parse { .. }
                | Out::Bind { .. }
                | Out::DescribeStatement(_)
                | Out::DescribePortal
                | Out::Execute(_)
                | Out::Close(_)
        )
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Out::Query(sql) => write!(f, "Query {sql:?}"),
            Out::Parse { name, sql } => write!(f, "Parse {name:?} {sql:?}"),
            Out::Bind { statement, params } => write!(f, "Bind {statement:?} {params:?}"),
            Out::DescribeStatement(name) => write!(f, "Describe S {name:?}"),
            Out::DescribePortal => write!(f, "Describe P \"\""),
            Out::Execute(max_rows) => write!(f, "Execute {max_rows}"),
            Out::Close(name) => write!(f, "Close S {name:?}"),
            Out::Sync => write!(f, "Sync"),
            Out::Flush => write!(f, "Flush"),
            Out::CopyData(row) => write!(f, "CopyData {row:?}"),
            Out::CopyDone => write!(f, "CopyDone"),
        }
    }
}

const PREPARE: &str = "prepare a named statement";
const CLOSE: &str = "close a named statement";

struct Step {
    kind: &'static str,
    msgs: Vec<Out>,
    /// All messages in one write, then all replies read; otherwise the
    /// replies are read at each Query, Sync and Flush before sending more.
    pipelined: bool,
}

struct Program {
    seed: u64,
    table: String,
    steps: Vec<Step>,
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "program of seed {} (table {}):", self.seed, self.table)?;
        for (i, step) in self.steps.iter().enumerate() {
            let how = if step.pipelined {
                "one write"
            } else {
                "waits for replies"
            };
            writeln!(f, "  {:>2}. {} ({how}):", i + 1, step.kind)?;
            for msg in &step.msgs {
                writeln!(f, "        {msg}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The model: PostgreSQL's transaction states, as far as programs need them
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tx {
    Idle,
    Open,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
    Fail,
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    RollbackTo(String),
    Release(String),
}

/// A statement: its SQL and what it does.
#[derive(Clone, Debug)]
struct Stmt {
    sql: String,
    params: Vec<String>,
    effect: Effect,
    /// Returns several rows (worth an Execute with a row limit).
    rows: bool,
}

/// The parameterized statements, whose parameters are made at each use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    /// No parameters.
    None,
    SelectById,
    Insert,
    Update,
    Add,
    Duplicate,
    DivideBy,
}

#[derive(Clone, Debug)]
struct Named {
    name: String,
    param: Param,
    effect: Effect,
}

struct Model {
    tx: Tx,
    savepoints: Vec<String>,
    next_savepoint: u32,
    /// Ids for new rows: never used twice, so inserts conflict only when
    /// meant to (ids 1..=5 exist from the start and are never deleted).
    next_id: i64,
    inserted: Vec<i64>,
    named: Vec<Named>,
    next_name: u32,
}

/// One request unit (a Query string, or extended messages up to Sync):
/// after an error the rest is skipped.
#[derive(Default)]
struct Unit {
    skipping: bool,
}

impl Model {
    /// A statement's effect on the transaction state; true when it fails
    /// (and the rest of its unit is skipped).
    fn apply(&mut self, effect: &Effect) -> bool {
        match (self.tx, effect) {
            (Tx::Failed, Effect::Commit | Effect::Rollback) => {
                self.tx = Tx::Idle;
                self.savepoints.clear();
                false
            }
            (Tx::Failed, Effect::RollbackTo(name)) => match self.position(name) {
                Some(at) => {
                    self.savepoints.truncate(at + 1);
                    self.tx = Tx::Open;
                    false
                }
                None => true,
            },
            (Tx::Failed, _) => true,
            (_, Effect::Read | Effect::Write) => false,
            (Tx::Open, Effect::Fail) => {
                self.tx = Tx::Failed;
                true
            }
            (Tx::Idle, Effect::Fail) => true,
            (_, Effect::Begin) => {
                self.tx = Tx::Open;
                false
            }
            (_, Effect::Commit | Effect::Rollback) => {
                self.tx = Tx::Idle;
                self.savepoints.clear();
                false
            }
            (Tx::Idle, Effect::Savepoint(_) | Effect::RollbackTo(_) | Effect::Release(_)) => true,
            (Tx::Open, Effect::Savepoint(name)) => {
                self.savepoints.push(name.clone());
                false
            }
            (Tx::Open, Effect::RollbackTo(name)) => match self.position(name) {
                Some(at) => {
                    self.savepoints.truncate(at + 1);
                    false
                }
                None => {
                    self.tx = Tx::Failed;
                    true
                }
            },
            (Tx::Open, Effect::Release(name)) => match self.position(name) {
                Some(at) => {
                    self.savepoints.truncate(at);
                    false
                }
                None => {
                    self.tx = Tx::Failed;
                    true
                }
            },
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.savepoints.iter().rposition(|s| s == name)
    }

    /// Runs a statement in a unit.
    fn run(&mut self, unit: &mut Unit, effect: &Effect) {
        if !unit.skipping && self.apply(effect) {
            unit.skipping = true;
        }
    }
}

struct Gen {
    rng: Rng,
    table: String,
    m: Model,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            table: table_name(seed),
            m: Model {
                tx: Tx::Idle,
                savepoints: Vec::new(),
                next_savepoint: 1,
                next_id: 100,
                inserted: Vec::new(),
                named: Vec::new(),
                next_name: 1,
            },
        }
    }

    fn new_id(&mut self) -> i64 {
        let id = self.m.next_id;
        self.m.next_id += 1;
        self.m.inserted.push(id);
        id
    }

    /// An id that may exist: an original row or an inserted one.
    fn some_id(&mut self) -> i64 {
        if !self.m.inserted.is_empty() && self.rng.chance(50) {
            *self.rng.pick(&self.m.inserted)
        } else {
            self.rng.range(1, 5)
        }
    }

    fn stmt(sql: String, effect: Effect) -> Stmt {
        Stmt {
            sql,
            params: Vec::new(),
            effect,
            rows: false,
        }
    }

    /// A read, write or failing statement with its values in the SQL.
    fn data_stmt(&mut self) -> Stmt {
        let t = self.table.clone();
        let k = self.rng.range(0, 9);
        let roll = self.rng.below(100);
        if roll < 45 {
            match self.rng.below(5) {
                0 => Stmt {
                    rows: true,
                    ..Self::stmt(
                        format!("SELECT id, v, n FROM {t} ORDER BY id"),
                        Effect::Read,
                    )
                },
                1 => Self::stmt(
                    format!("SELECT count(*), coalesce(sum(n), 0) AS total FROM {t}"),
                    Effect::Read,
                ),
                2 => {
                    let id = self.some_id();
                    Self::stmt(
                        format!("SELECT v, n FROM {t} WHERE id = {id}"),
                        Effect::Read,
                    )
                }
                3 => Self::stmt(format!("SELECT {k} AS k, '{t}' AS s"), Effect::Read),
                _ => Stmt {
                    rows: true,
                    ..Self::stmt(
                        format!("SELECT id FROM {t} WHERE n > {k} ORDER BY id LIMIT 3"),
                        Effect::Read,
                    )
                },
            }
        } else if roll < 85 {
            match self.rng.below(4) {
                0 => {
                    let id = self.new_id();
                    Self::stmt(
                        format!("INSERT INTO {t} VALUES ({id}, 'v{id}', {k})"),
                        Effect::Write,
                    )
                }
                1 => {
                    let id = self.some_id();
                    Self::stmt(
                        format!("UPDATE {t} SET n = n + {k} WHERE id = {id}"),
                        Effect::Write,
                    )
                }
                2 if !self.m.inserted.is_empty() => {
                    let id = *self.rng.pick(&self.m.inserted);
                    Self::stmt(format!("DELETE FROM {t} WHERE id = {id}"), Effect::Write)
                }
                _ => {
                    let id = self.new_id();
                    Self::stmt(
                        format!("INSERT INTO {t} VALUES ({id}, 'r', {k}) RETURNING id, n"),
                        Effect::Write,
                    )
                }
            }
        } else {
            match self.rng.below(3) {
                0 => Self::stmt(format!("SELECT 1/0 AS {t}"), Effect::Fail),
                1 => {
                    let id = self.rng.range(1, 5);
                    Self::stmt(
                        format!("INSERT INTO {t} VALUES ({id}, 'dup', 0)"),
                        Effect::Fail,
                    )
                }
                _ => {
                    let id = self.rng.range(1, 5);
                    Self::stmt(
                        format!("SELECT n / 0 FROM {t} WHERE id = {id}"),
                        Effect::Fail,
                    )
                }
            }
        }
    }

    /// A parameterized statement's SQL and effect.
    fn param_sql(&self, param: Param) -> (String, Effect) {
        let t = &self.table;
        match param {
            Param::None => unreachable!("no parameters"),
            Param::SelectById => (format!("SELECT v, n FROM {t} WHERE id = $1"), Effect::Read),
            Param::Insert => (
                format!("INSERT INTO {t} VALUES ($1, $2, $3)"),
                Effect::Write,
            ),
            Param::Update => (
                format!("UPDATE {t} SET n = $1 WHERE id = $2"),
                Effect::Write,
            ),
            Param::Add => (format!("SELECT $1::int + $2::int AS {t}"), Effect::Read),
            Param::Duplicate => (
                format!("INSERT INTO {t} VALUES ($1, 'dup', 0)"),
                Effect::Fail,
            ),
            Param::DivideBy => (format!("SELECT 10 / $1::int AS {t}"), Effect::Fail),
        }
    }

    /// Fresh parameter values for a use of a parameterized statement.
    fn params(&mut self, param: Param) -> Vec<String> {
        match param {
            Param::None => Vec::new(),
            Param::SelectById => vec![self.some_id().to_string()],
            Param::Insert => {
                let id = self.new_id();
                vec![
                    id.to_string(),
                    format!("p{id}"),
                    self.rng.range(0, 9).to_string(),
                ]
            }
            Param::Update => vec![
                self.rng.range(0, 99).to_string(),
                self.some_id().to_string(),
            ],
            Param::Add => vec![
                self.rng.range(-5, 5).to_string(),
                self.rng.range(0, 50).to_string(),
            ],
            Param::Duplicate => vec![self.rng.range(1, 5).to_string()],
            Param::DivideBy => vec!["0".into()],
        }
    }

    fn random_param(&mut self) -> Param {
        *self.rng.pick(&[
            Param::SelectById,
            Param::SelectById,
            Param::Insert,
            Param::Insert,
            Param::Update,
            Param::Add,
            Param::Duplicate,
            Param::DivideBy,
        ])
    }

    fn param_stmt(&mut self) -> Stmt {
        let param = self.random_param();
        let (sql, effect) = self.param_sql(param);
        let params = self.params(param);
        Stmt {
            sql,
            params,
            effect,
            rows: false,
        }
    }

    /// A transaction-control statement fitting the current state, if one
    /// is wanted.
    fn tx_stmt(&mut self) -> Option<Stmt> {
        let (bias, roll) = match self.m.tx {
            Tx::Idle => (15, self.rng.below(100)),
            Tx::Open => (22, self.rng.below(100)),
            Tx::Failed => (55, self.rng.below(100)),
        };
        if !self.rng.chance(bias) {
            return None;
        }
        let savepoint = self.m.savepoints.last().cloned();
        let older =
            (!self.m.savepoints.is_empty()).then(|| self.rng.pick(&self.m.savepoints).clone());
        let (sql, effect) = match self.m.tx {
            Tx::Idle => match roll {
                0..=79 => ("BEGIN".to_string(), Effect::Begin),
                80..=89 => ("COMMIT".into(), Effect::Commit),
                _ => ("ROLLBACK".into(), Effect::Rollback),
            },
            Tx::Open => match (roll, older) {
                (0..=29, _) => ("COMMIT".into(), Effect::Commit),
                (30..=44, _) => ("ROLLBACK".into(), Effect::Rollback),
                (45..=54, _) => ("BEGIN".into(), Effect::Begin),
                (55..=79, _) | (_, None) => {
                    let name = format!("sp{}", self.m.next_savepoint);
                    self.m.next_savepoint += 1;
                    (format!("SAVEPOINT {name}"), Effect::Savepoint(name))
                }
                (80..=92, Some(name)) => (
                    format!("ROLLBACK TO SAVEPOINT {name}"),
                    Effect::RollbackTo(name),
                ),
                (_, Some(name)) => (format!("RELEASE SAVEPOINT {name}"), Effect::Release(name)),
            },
            Tx::Failed => match (roll, savepoint) {
                (0..=39, Some(name)) => (format!("ROLLBACK TO {name}"), Effect::RollbackTo(name)),
                (0..=69, _) => ("ROLLBACK".into(), Effect::Rollback),
                _ => ("COMMIT".into(), Effect::Commit),
            },
        };
        Some(Self::stmt(sql, effect))
    }

    /// Any statement: transaction control, or data (with parameters when
    /// `params`).
    fn any_stmt(&mut self, params: bool) -> Stmt {
        if let Some(stmt) = self.tx_stmt() {
            return stmt;
        }
        if params && self.rng.chance(30) {
            self.param_stmt()
        } else {
            self.data_stmt()
        }
    }

    /// One statement through the extended protocol, appended to `msgs`:
    /// the unnamed statement (Parse/Bind/Execute), or a Bind of a named one.
    fn extended(&mut self, msgs: &mut Vec<Out>, unit: &mut Unit) {
        if !self.m.named.is_empty() && self.rng.chance(35) {
            let named = self.rng.pick(&self.m.named).clone();
            if self.rng.chance(10) {
                msgs.push(Out::DescribeStatement(named.name.clone()));
            }
            let params = self.params(named.param);
            msgs.push(Out::Bind {
                statement: named.name.clone(),
                params,
            });
            if self.rng.chance(20) {
                msgs.push(Out::DescribePortal);
            }
            msgs.push(Out::Execute(0));
            self.m.run(unit, &named.effect);
            return;
        }
        let stmt = self.any_stmt(true);
        msgs.push(Out::Parse {
            name: String::new(),
            sql: stmt.sql.clone(),
        });
        if self.rng.chance(10) {
            msgs.push(Out::DescribeStatement(String::new()));
        }
        msgs.push(Out::Bind {
            statement: String::new(),
            params: stmt.params.clone(),
        });
        if self.rng.chance(25) {
            msgs.push(Out::DescribePortal);
        }
        if stmt.rows && self.rng.chance(25) {
            // A row limit: PortalSuspended, then the rest.
            msgs.push(Out::Execute(2));
        }
        msgs.push(Out::Execute(0));
        self.m.run(unit, &stmt.effect);
    }

    fn step(&mut self) -> Step {
        let roll = self.rng.below(100);
        match roll {
            0..=17 => {
                let stmt = self.any_stmt(false);
                self.m.run(&mut Unit::default(), &stmt.effect);
                Step {
                    kind: "simple query",
                    msgs: vec![Out::Query(stmt.sql)],
                    pipelined: false,
                }
            }
            18..=25 => {
                let mut unit = Unit::default();
                let count = self.rng.range(2, 3);
                let mut parts = Vec::new();
                for _ in 0..count {
                    let stmt = self.any_stmt(false);
                    self.m.run(&mut unit, &stmt.effect);
                    parts.push(stmt.sql);
                }
                Step {
                    kind: "multi-statement query",
                    msgs: vec![Out::Query(parts.join("; "))],
                    pipelined: false,
                }
            }
            26..=30 => {
                let count = self.rng.range(2, 3);
                let mut msgs = Vec::new();
                for _ in 0..count {
                    let stmt = self.any_stmt(false);
                    self.m.run(&mut Unit::default(), &stmt.effect);
                    msgs.push(Out::Query(stmt.sql));
                }
                Step {
                    kind: "pipelined queries",
                    msgs,
                    pipelined: true,
                }
            }
            31..=50 => {
                let count = self.rng.range(1, 3);
                let mut msgs = Vec::new();
                for _ in 0..count {
                    self.extended(&mut msgs, &mut Unit::default());
                    msgs.push(Out::Sync);
                }
                Step {
                    kind: "extended, a Sync each",
                    msgs,
                    pipelined: self.rng.chance(50),
                }
            }
            51..=65 => {
                let count = self.rng.range(2, 3);
                let mut msgs = Vec::new();
                let mut unit = Unit::default();
                for _ in 0..count {
                    self.extended(&mut msgs, &mut unit);
                }
                msgs.push(Out::Sync);
                Step {
                    kind: "extended batch, one Sync",
                    msgs,
                    pipelined: true,
                }
            }
            66..=75 => {
                let chunks = self.rng.range(1, 3);
                let mut msgs = Vec::new();
                let mut unit = Unit::default();
                for _ in 0..chunks {
                    for _ in 0..self.rng.range(1, 2) {
                        self.extended(&mut msgs, &mut unit);
                    }
                    msgs.push(Out::Flush);
                }
                if self.rng.chance(70) {
                    self.extended(&mut msgs, &mut unit);
                }
                msgs.push(Out::Sync);
                Step {
                    kind: "extended batch split by Flush",
                    msgs,
                    pipelined: false,
                }
            }
            76..=82 if self.m.tx != Tx::Failed => {
                let name = format!("s{}", self.m.next_name);
                self.m.next_name += 1;
                let (sql, param, effect) = if self.rng.chance(60) {
                    let param = self.random_param();
                    let (sql, effect) = self.param_sql(param);
                    (sql, param, effect)
                } else {
                    // Not an INSERT of a literal new id: the statement may
                    // be run more than once.
                    let stmt = loop {
                        let stmt = self.data_stmt();
                        if !(stmt.effect == Effect::Write && stmt.sql.starts_with("INSERT")) {
                            break stmt;
                        }
                    };
                    (stmt.sql, Param::None, stmt.effect)
                };
                let mut msgs = vec![Out::Parse {
                    name: name.clone(),
                    sql,
                }];
                if self.rng.chance(30) {
                    msgs.push(Out::DescribeStatement(name.clone()));
                }
                msgs.push(Out::Sync);
                self.m.named.push(Named {
                    name,
                    param,
                    effect,
                });
                Step {
                    kind: PREPARE,
                    msgs,
                    pipelined: false,
                }
            }
            83..=85 if self.m.tx != Tx::Failed && !self.m.named.is_empty() => {
                let at = self.rng.below(self.m.named.len() as u64) as usize;
                let named = self.m.named.remove(at);
                Step {
                    kind: CLOSE,
                    msgs: vec![Out::Close(named.name), Out::Sync],
                    pipelined: false,
                }
            }
            86..=92 => {
                let t = self.table.clone();
                let mut rows = Vec::new();
                let mut effect = Effect::Write;
                for _ in 0..self.rng.range(1, 3) {
                    let k = self.rng.range(0, 9);
                    let id = if self.rng.chance(10) {
                        effect = Effect::Fail;
                        self.rng.range(1, 5)
                    } else {
                        self.new_id()
                    };
                    rows.push(format!("{id}\tc{id}\t{k}\n"));
                }
                self.m.run(&mut Unit::default(), &effect);
                let mut msgs = vec![Out::Query(format!("COPY {t} (id, v, n) FROM STDIN"))];
                if self.rng.chance(50) {
                    msgs.push(Out::CopyData(rows.concat()));
                } else {
                    msgs.extend(rows.into_iter().map(Out::CopyData));
                }
                msgs.push(Out::CopyDone);
                Step {
                    kind: "COPY FROM STDIN",
                    msgs,
                    pipelined: false,
                }
            }
            _ => {
                let t = self.table.clone();
                self.m.run(&mut Unit::default(), &Effect::Read);
                Step {
                    kind: "COPY TO STDOUT",
                    msgs: vec![Out::Query(format!(
                        "COPY (SELECT id, v, n FROM {t} ORDER BY id) TO STDOUT"
                    ))],
                    pipelined: false,
                }
            }
        }
    }
}

fn table_name(seed: u64) -> String {
    format!("t_{seed}")
}

fn generate(seed: u64) -> Program {
    let mut gen = Gen::new(seed);
    let count = gen.rng.range(6, 14);
    let mut steps: Vec<Step> = (0..count).map(|_| gen.step()).collect();
    if gen.m.tx != Tx::Idle {
        let end = if gen.rng.chance(50) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        steps.push(Step {
            kind: "end the transaction",
            msgs: vec![Out::Query(end.into())],
            pipelined: false,
        });
    }
    steps.push(Step {
        kind: "final read",
        msgs: vec![Out::Query(format!(
            "SELECT id, v, n FROM {} ORDER BY id",
            gen.table
        ))],
        pipelined: false,
    });
    Program {
        seed,
        table: gen.table,
        steps,
    }
}

// ---------------------------------------------------------------------------
// Running a program
// ---------------------------------------------------------------------------

/// The replies to one step, as compared.
#[derive(Default, Debug, PartialEq, Eq)]
struct Replies {
    msgs: Vec<String>,
    /// NoticeResponses, sorted: their order relative to the rest may
    /// legitimately differ.
    notices: Vec<String>,
}

impl Replies {
    fn push(&mut self, msg: &Msg) {
        match msg.tag {
            b'S' | b'K' => {}
            b'N' => {
                self.notices.push(msg.canonical());
                self.notices.sort();
            }
            _ => self.msgs.push(msg.canonical()),
        }
    }
}

impl fmt::Display for Replies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msgs.join(" "))?;
        if !self.notices.is_empty() {
            write!(f, "  notices: {}", self.notices.join(" "))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Transcript {
    steps: Vec<Replies>,
    /// Why the run stopped early (a reply missing, the connection closed).
    stopped: Option<String>,
}

struct Reader<'a> {
    conn: &'a mut Conn,
    replies: &'a mut Replies,
}

impl Reader<'_> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.conn
            .try_send(bytes)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    async fn read(&mut self) -> Result<Msg, String> {
        match self.conn.try_read_msg(READ_DEADLINE).await {
            Ok(msg) => {
                self.replies.push(&msg);
                Ok(msg)
            }
            Err(e) => Err(format!("{e} (waited {READ_DEADLINE:?} for a reply)")),
        }
    }

    async fn through_ready(&mut self) -> Result<(), String> {
        while self.read().await?.tag != b'Z' {}
        Ok(())
    }
}

async fn run_step(conn: &mut Conn, step: &Step, replies: &mut Replies) -> Result<(), String> {
    let mut r = Reader { conn, replies };
    if step.pipelined {
        let bytes: Vec<u8> = step.msgs.iter().flat_map(Out::bytes).collect();
        r.send(&bytes).await?;
        let readies = step
            .msgs
            .iter()
            .filter(|m| matches!(m, Out::Query(_) | Out::Sync))
            .count();
        for _ in 0..readies {
            r.through_ready().await?;
        }
        return Ok(());
    }
    let mut group = Vec::new();
    // Messages since the last read that each owe one completion.
    let mut owed = 0;
    // An error since the last Sync: the server skips to the next Sync.
    let mut failed = false;
    let mut i = 0;
    while i < step.msgs.len() {
        let msg = &step.msgs[i];
        group.extend(msg.bytes());
        if msg.completes() {
            owed += 1;
        }
        match msg {
            Out::Query(_) => {
                r.send(&std::mem::take(&mut group)).await?;
                let mut copy_sent = false;
                loop {
                    let reply = r.read().await?;
                    match reply.tag {
                        b'Z' => break,
                        b'G' if !copy_sent => {
                            // The server takes the copy data now.
                            let mut data = Vec::new();
                            while let Some(next @ (Out::CopyData(_) | Out::CopyDone)) =
                                step.msgs.get(i + 1)
                            {
                                data.extend(next.bytes());
                                i += 1;
                            }
                            r.send(&data).await?;
                            copy_sent = true;
                        }
                        _ => {}
                    }
                }
                // Copy data the server never asked for is not sent, as a
                // client would not.
                while let Some(Out::CopyData(_) | Out::CopyDone) = step.msgs.get(i + 1) {
                    i += 1;
                }
                owed = 0;
                failed = false;
            }
            Out::Sync => {
                r.send(&std::mem::take(&mut group)).await?;
                r.through_ready().await?;
                owed = 0;
                failed = false;
            }
            Out::Flush => {
                r.send(&std::mem::take(&mut group)).await?;
                while !failed && owed > 0 {
                    let reply = r.read().await?;
                    match reply.tag {
                        b'E' => failed = true,
                        b'1' | b'2' | b'3' | b'n' | b'T' | b'C' | b'I' | b's' => owed -= 1,
                        _ => {}
                    }
                }
                owed = 0;
            }
            _ => {}
        }
        i += 1;
    }
    if !group.is_empty() {
        r.send(&group).await?;
    }
    Ok(())
}

async fn run_program(addr: &str, db: &str, program: &Program) -> Transcript {
    let mut conn = Conn::trust(addr, db, &[]).await;
    let mut transcript = Transcript::default();
    for (i, step) in program.steps.iter().enumerate() {
        let mut replies = Replies::default();
        let result = run_step(&mut conn, step, &mut replies).await;
        transcript.steps.push(replies);
        if let Err(e) = result {
            transcript.stopped = Some(format!("step {}: {e}", i + 1));
            break;
        }
    }
    let _ = conn.try_send(&wire::terminate()).await;
    transcript
}

/// The table's rows, read on the primary directly.
async fn table_contents(cluster: &Cluster, db: &str, table: &str) -> String {
    let su = cluster.superuser(cluster.primary(), db).await;
    let sql = format!(
        "SELECT coalesce(string_agg(format('%s:%s:%s', id, v, n), ' ' ORDER BY id), '') FROM {table}"
    );
    su.query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

struct Failure {
    seed: u64,
    /// One line: where and how the runs differ.
    summary: String,
    /// The program, and both sides of the difference.
    detail: String,
}

struct Context {
    cluster: &'static Cluster,
    direct_addr: String,
    direct_db: String,
    router_addr: String,
    router_db: String,
}

async fn check_seed(ctx: Arc<Context>, seed: u64) -> Result<(), Failure> {
    let program = generate(seed);
    let (direct, routed) = tokio::join!(
        run_program(&ctx.direct_addr, &ctx.direct_db, &program),
        run_program(&ctx.router_addr, &ctx.router_db, &program)
    );
    if std::env::var_os("DIFF_SEED").is_some() {
        for (i, step) in direct.steps.iter().enumerate() {
            println!("step {:>2} PostgreSQL: {step}", i + 1);
            match routed.steps.get(i) {
                Some(got) => println!("        pgrouter:   {got}"),
                None => println!("        pgrouter:   <not run>"),
            }
        }
    }
    if let Some(why) = &direct.stopped {
        panic!(
            "test bug: the direct run of seed {seed} stopped at {why}\n{program}\n\
             re-run: DIFF_SEED={seed} cargo test --test integration differential -- --nocapture"
        );
    }
    // The generator's model keeps programs to what real clients do: a
    // statement name that PostgreSQL does not know, a named Parse that it
    // refuses, or a savepoint that does not exist means the model is wrong.
    for (i, replies) in direct.steps.iter().enumerate() {
        let step = &program.steps[i];
        let unrealistic = replies.msgs.iter().find(|m| {
            [" 26000 ", " 42P05 ", " 3B001 "]
                .iter()
                .any(|code| m.contains(code))
                || (step.kind == PREPARE || step.kind == CLOSE) && m.starts_with("E(")
        });
        if let Some(msg) = unrealistic {
            panic!(
                "test bug: PostgreSQL answered step {} ({}) of seed {seed} with {msg}\n{program}",
                i + 1,
                step.kind
            );
        }
    }
    let fail = |summary: String, detail: String| Failure {
        seed,
        summary: format!("seed {seed}: {summary}"),
        detail: format!(
            "{detail}\n{program}  re-run: DIFF_SEED={seed} cargo test --test integration \
             differential -- --nocapture\n"
        ),
    };
    for (i, expected) in direct.steps.iter().enumerate() {
        let got = routed.steps.get(i);
        if got == Some(expected) {
            continue;
        }
        let step = &program.steps[i];
        let got_text = match got {
            Some(got) => got.to_string(),
            None => "<not run>".into(),
        };
        let mut detail = format!(
            "seed {seed}: step {} ({}) differs\n  pgrouter:   {got_text}\n  PostgreSQL: {expected}\n",
            i + 1,
            step.kind
        );
        if let Some(why) = &routed.stopped {
            detail.push_str(&format!("  the pgrouter run stopped at {why}\n"));
        }
        let first_diff = match got {
            Some(got) => got
                .msgs
                .iter()
                .zip(&expected.msgs)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{a} instead of {b}"))
                .unwrap_or_else(|| {
                    format!(
                        "{} replies instead of {} (notices {:?} vs {:?})",
                        got.msgs.len(),
                        expected.msgs.len(),
                        got.notices,
                        expected.notices
                    )
                }),
            None => "not run".into(),
        };
        return Err(fail(
            format!("step {} ({}): {first_diff}", i + 1, step.kind),
            detail,
        ));
    }
    if let Some(why) = &routed.stopped {
        return Err(fail(
            format!("the pgrouter run stopped at {why}"),
            String::new(),
        ));
    }
    let wrong_node = routed
        .steps
        .iter()
        .flat_map(|s| &s.msgs)
        .find(|m| m.contains(" 25006 "));
    if let Some(msg) = wrong_node {
        return Err(fail(
            format!("a write reached a replica: {msg}"),
            String::new(),
        ));
    }
    let want = table_contents(ctx.cluster, &ctx.direct_db, &program.table).await;
    let have = table_contents(ctx.cluster, &ctx.router_db, &program.table).await;
    if want != have {
        return Err(fail(
            "the table's final contents differ".into(),
            format!("  pgrouter:   {have}\n  PostgreSQL: {want}\n"),
        ));
    }
    Ok(())
}

/// Creates the programs' tables in both databases, as the programs'
/// model expects them (ids 1..=5), and waits for the replicas.
async fn create_tables(cluster: &Cluster, dbs: &[&str], seeds: &[u64]) {
    let mut sql = String::new();
    for &seed in seeds {
        let t = table_name(seed);
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, v text, n int); \
             INSERT INTO {t} SELECT g, 'v' || g, g FROM generate_series(1, 5) g;\n"
        ));
    }
    sql.push_str("GRANT ALL ON ALL TABLES IN SCHEMA public TO trustuser;");
    for db in dbs {
        let su = cluster.superuser(cluster.primary(), db).await;
        su.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("creating tables in {db}: {e}"));
    }
    cluster.wait_replicas_caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_programs_get_the_same_replies_through_pgrouter() {
    let seeds: Vec<u64> = match (env_u64("DIFF_SEED"), env_u64("DIFF_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (1..=count).collect(),
        (None, None) => (1..=DEFAULT_SEEDS).collect(),
    };
    let max_failures = env_u64("DIFF_MAX_FAILURES").unwrap_or(10) as usize;
    let parallel = env_u64("DIFF_PARALLEL").unwrap_or(PARALLEL).max(1) as usize;
    if seeds.len() == 1 {
        println!("{}", generate(seeds[0]));
    }

    let cluster = Cluster::shared();
    let direct_db = cluster.create_database("diff_direct").await;
    let router_db = cluster.create_database("diff_router").await;
    let config = RouterConfig::new(cluster.primary(), &router_db)
        .replicas(cluster.replicas())
        .routing("read_your_writes = \"lsn\"")
        .pool("max_connections = 20")
        .build();
    let router = Pgrouter::start(&config);
    let ctx = Arc::new(Context {
        cluster,
        direct_addr: cluster.primary().addr(),
        direct_db: direct_db.clone(),
        // The test's own check: both sides straight to PostgreSQL must
        // always agree.
        router_addr: if std::env::var_os("DIFF_SELF_CHECK").is_some() {
            cluster.primary().addr()
        } else {
            router.addr.to_string()
        },
        router_db: router_db.clone(),
    });

    let started = Instant::now();
    let mut failures: Vec<Failure> = Vec::new();
    let mut ran = 0;
    'chunks: for chunk in seeds.chunks(CHUNK as usize) {
        create_tables(cluster, &[&direct_db, &router_db], chunk).await;
        let mut running = JoinSet::new();
        let mut next = chunk.iter();
        loop {
            while running.len() < parallel && failures.len() < max_failures {
                match next.next() {
                    Some(&seed) => {
                        running.spawn(check_seed(ctx.clone(), seed));
                    }
                    None => break,
                }
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            ran += 1;
            if let Err(failure) = done.expect("a seed's task panicked") {
                failures.push(failure);
            }
        }
        if failures.len() >= max_failures {
            break 'chunks;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "differential: {ran} of {} seeds run in {elapsed:.1?}, {} failed",
        seeds.len(),
        failures.len()
    );
    if failures.is_empty() {
        return;
    }
    failures.sort_by_key(|f| f.seed);
    let mut report = format!(
        "{} of {ran} programs got other replies through pgrouter than from PostgreSQL{}:\n",
        failures.len(),
        if failures.len() >= max_failures {
            " (stopped there; DIFF_MAX_FAILURES raises the limit)"
        } else {
            ""
        }
    );
    for failure in &failures {
        report.push_str(&format!("  {}\n", failure.summary));
    }
    let all = std::env::var_os("DIFF_VERBOSE").is_some();
    report.push_str(if all {
        "\nIn full:\n"
    } else {
        "\nThe first ones in full (DIFF_VERBOSE=1 shows all):\n"
    });
    for failure in failures.iter().take(if all { usize::MAX } else { 3 }) {
        report.push_str(&format!("\n{}", failure.detail));
    }
    panic!("{report}");
}
