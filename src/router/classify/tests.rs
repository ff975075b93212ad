use super::*;

use Kind::{Read, SessionState as S, TransactionControl as Tc, Unparsable, Write as W};

const BEGIN_RW: Kind = Kind::Begin { read_only: false };
const BEGIN_RO: Kind = Kind::Begin { read_only: true };

/// (sql, expected kind) for single statements.
pub(super) const CASES: &[(&str, Kind)] = &[
    // Data modification.
    ("INSERT INTO t VALUES (1)", W("insert")),
    ("insert into t select * from u returning id", W("insert")),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO NOTHING", W("insert")),
    ("UPDATE t SET a = 1 WHERE id = $1", W("update")),
    ("DELETE FROM t WHERE id = $1", W("delete")),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", W("merge")),
    // COPY.
    ("COPY t FROM STDIN", W("copy from")),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W("copy from")),
    ("COPY t TO STDOUT", Read),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", Read),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", W("delete")),
    ("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", W("locking clause")),
    ("COPY t TO '/tmp/t.csv'", W("copy to file")),
    // DDL and other writes.
    ("CREATE TABLE t (id int DEFAULT nextval('s'))", W("ddl")),
    ("CREATE TABLE t2 AS SELECT 1", W("ddl")),
    ("CREATE UNLOGGED TABLE t (id int)", W("ddl")),
    ("CREATE INDEX i ON t (a)", W("ddl")),
    ("CREATE VIEW v AS SELECT 1", W("ddl")),
    ("CREATE MATERIALIZED VIEW v AS SELECT 1", W("ddl")),
    ("CREATE SEQUENCE s", W("ddl")),
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", W("ddl")),
    ("CREATE SCHEMA s", W("ddl")),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", W("ddl")),
    ("ALTER TABLE t ADD COLUMN b int", W("ddl")),
    ("DROP TABLE t", W("ddl")),
    ("TRUNCATE t", W("truncate")),
    ("COMMENT ON TABLE t IS 'x'", W("ddl")),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY v", W("ddl")),
    ("REINDEX TABLE t", W("ddl")),
    ("CLUSTER t USING i", W("ddl")),
    ("GRANT SELECT ON t TO u", W("grant")),
    ("GRANT r TO u", W("grant")),
    ("REVOKE SELECT ON t FROM u", W("revoke")),
    ("VACUUM t", W("vacuum")),
    ("VACUUM (ANALYZE, VERBOSE) t", W("vacuum")),
    ("ANALYZE t", W("analyze")),
    ("ANALYZE VERBOSE t", W("analyze")),
    ("CALL p(1)", W("call")),
    ("DO $$ BEGIN PERFORM 1; END $$", W("do")),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W("lock")),
    ("NOTIFY ch, 'payload'", W("notify")),
    ("PREPARE TRANSACTION 'gid'", W("two-phase commit")),
    ("COMMIT PREPARED 'gid'", W("two-phase commit")),
    ("ROLLBACK PREPARED 'gid'", W("two-phase commit")),
    ("CHECKPOINT", W("checkpoint")),
    // Statement kinds not known to be read-only fail closed.
    ("CACHE TABLE t", W("other")),
    ("PRAGMA foo", W("other")),
    // Locking clauses at any depth.
    ("SELECT a FROM t FOR UPDATE", W("locking clause")),
    ("SELECT a FROM t WHERE id = $1 FOR NO KEY UPDATE", W("locking clause")),
    ("SELECT a FROM t FOR SHARE", W("locking clause")),
    ("SELECT a FROM t for key share", W("locking clause")),
    ("SELECT a FROM t FOR UPDATE SKIP LOCKED", W("locking clause")),
    ("SELECT a FROM t FOR NO KEY UPDATE SKIP LOCKED LIMIT 1", W("locking clause")),
    ("SELECT a FROM t FOR UPDATE OF t", W("locking clause")),
    ("SELECT a FROM t x FOR UPDATE OF x NOWAIT", W("locking clause")),
    ("SELECT a FROM t ORDER BY a LIMIT 1 FOR UPDATE", W("locking clause")),
    ("SELECT a FROM t FOR UPDATE LIMIT 1", W("locking clause")),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", W("locking clause")),
    ("SELECT * FROM (SELECT * FROM t FOR KEY SHARE) s", W("locking clause")),
    ("SELECT (SELECT id FROM t FOR SHARE)", W("locking clause")),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u FOR UPDATE)", W("locking clause")),
    ("SELECT * FROM t WHERE a IN (SELECT a FROM u FOR NO KEY UPDATE)", W("locking clause")),
    ("SELECT a FROM t UNION SELECT b FROM u FOR UPDATE", W("locking clause")),
    ("(SELECT a FROM t FOR UPDATE) UNION SELECT 1", W("locking clause")),
    ("SELECT 1 UNION ALL (SELECT a FROM t FOR SHARE)", W("locking clause")),
    ("WITH c AS (SELECT * FROM t FOR UPDATE) SELECT * FROM c", W("locking clause")),
    (
        "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.id = t.id FOR UPDATE) l",
        W("locking clause"),
    ),
    // What sqlparser 0.64 cannot read still goes to the primary.
    ("SELECT 1 FOR UPDATE", Unparsable),
    ("SELECT a FROM t FOR UPDATE OF t, u", Unparsable),
    ("SELECT * FROM ROWS FROM (f(), g())", Unparsable),
    // SELECT INTO.
    ("SELECT 1 INTO x", W("select into")),
    ("SELECT * INTO UNLOGGED t2 FROM t", W("select into")),
    ("SELECT 1 INTO TEMP x", S("select into temp")),
    ("SELECT * INTO TEMPORARY TABLE x FROM t", S("select into temp")),
    // Data-modifying CTEs, at any depth.
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", W("data-modifying cte")),
    (
        "WITH a AS (SELECT 1), b AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM b",
        W("data-modifying cte"),
    ),
    ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", W("insert")),
    ("WITH a AS (SELECT 1) UPDATE t SET x = 1", W("update")),
    (
        "SELECT * FROM (WITH d AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM d) s",
        W("data-modifying cte"),
    ),
    (
        "WITH a AS (WITH b AS (DELETE FROM t RETURNING *) SELECT * FROM b) SELECT * FROM a",
        W("data-modifying cte"),
    ),
    (
        "SELECT * FROM t WHERE id IN (WITH m AS (MERGE INTO t USING s ON t.id = s.id \
         WHEN MATCHED THEN DELETE RETURNING t.id) SELECT id FROM m)",
        W("data-modifying cte"),
    ),
    // EXPLAIN.
    ("EXPLAIN DELETE FROM t", Read),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", Read),
    ("EXPLAIN (COSTS off) INSERT INTO t VALUES (1)", Read),
    ("EXPLAIN ANALYZE DELETE FROM t", W("explain analyze write")),
    ("EXPLAIN ANALYZE VERBOSE UPDATE t SET a = 1", W("explain analyze write")),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", W("explain analyze write")),
    ("EXPLAIN (ANALYZE true) INSERT INTO t VALUES (1)", W("explain analyze write")),
    ("EXPLAIN (analyse) DELETE FROM t", W("explain analyze write")),
    ("EXPLAIN ANALYSE DELETE FROM t", Unparsable),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", W("explain analyze write")),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", Read),
    ("EXPLAIN (ANALYZE off) DELETE FROM t", Read),
    ("EXPLAIN ANALYZE SELECT * FROM t", Read),
    ("EXPLAIN ANALYZE SELECT a FROM t FOR UPDATE", W("explain analyze write")),
    ("EXPLAIN ANALYZE SELECT a FROM t FOR NO KEY UPDATE", W("explain analyze write")),
    (
        "EXPLAIN ANALYZE WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        W("explain analyze write"),
    ),
    ("EXPLAIN ANALYZE SELECT nextval('s')", W("explain analyze write")),
    ("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", S("advisory lock")),
    ("EXPLAIN EXECUTE p(1)", S("execute")),
    // Known writers among functions.
    ("SELECT nextval('s')", W("nextval")),
    ("SELECT NEXTVAL('s')", W("nextval")),
    ("SELECT pg_catalog.nextval('s')", W("nextval")),
    ("SELECT * FROM t WHERE id = nextval('s')", W("nextval")),
    ("SELECT * FROM nextval('s')", W("nextval")),
    ("SELECT setval('s', 1)", W("setval")),
    ("SELECT txid_current()", W("txid")),
    ("SELECT pg_current_xact_id()", W("txid")),
    ("SELECT pg_advisory_xact_lock(1)", W("advisory lock")),
    ("SELECT pg_try_advisory_xact_lock(1, 2)", W("advisory lock")),
    ("SELECT lo_create(0)", W("large object")),
    ("SELECT lo_import('/tmp/x')", W("large object")),
    ("SELECT lo_unlink(42)", W("large object")),
    ("SELECT lowrite(0, 'x')", W("large object")),
    ("SELECT lo_put(42, 0, 'x')", W("large object")),
    ("SELECT pg_notify('ch', 'x')", W("notify")),
    ("SELECT dblink_exec('conn', 'DELETE FROM t')", W("dblink_exec")),
    ("SELECT pg_advisory_lock(1)", S("advisory lock")),
    ("SELECT pg_try_advisory_lock(1)", S("advisory lock")),
    ("SELECT pg_advisory_lock_shared(1)", S("advisory lock")),
    ("SELECT pg_advisory_unlock_all()", S("advisory lock")),
    ("SELECT set_config('a.b', 'c', false)", S("set_config")),
    ("SELECT set_config('a.b', 'c', $1)", S("set_config")),
    ("SELECT set_config('a.b', 'c', 'true')", S("set_config")),
    ("SELECT set_config('a.b', 'c', true)", Read),
    ("SELECT public.nextval('s')", Read),
    ("SELECT nextval('s') FOR UPDATE", Unparsable),
    // Session state.
    ("SET search_path TO a", S("set")),
    ("SET SESSION search_path = a, b", S("set")),
    ("SET statement_timeout = 0", S("set")),
    ("SET LOCAL work_mem = '1MB'", Tc),
    ("SET LOCAL ROLE r", Tc),
    ("SET LOCAL TIME ZONE 'UTC'", Tc),
    ("RESET ALL", S("reset")),
    ("RESET work_mem", S("reset")),
    ("RESET pgrouter.route", S("reset")),
    ("SET TIME ZONE 'UTC'", S("set time zone")),
    ("SET NAMES 'UTF8'", S("set names")),
    ("SET ROLE r", S("set role")),
    ("SET SESSION AUTHORIZATION u", S("set session authorization")),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        S("session characteristics"),
    ),
    ("LISTEN ch", S("listen")),
    ("UNLISTEN *", S("unlisten")),
    ("PREPARE p(int) AS SELECT $1", S("prepare")),
    ("PREPARE p AS DELETE FROM t", S("prepare")),
    ("EXECUTE p(1)", S("execute")),
    ("DEALLOCATE p", S("deallocate")),
    ("DEALLOCATE ALL", S("deallocate")),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", S("declare with hold")),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT a FROM t FOR UPDATE", W("locking clause")),
    ("DECLARE c CURSOR FOR SELECT 1", Read),
    ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT * FROM t", Read),
    ("DECLARE c CURSOR FOR SELECT nextval('s')", W("nextval")),
    ("CREATE TEMP TABLE x (a int)", S("create temp table")),
    ("CREATE TEMPORARY TABLE x AS SELECT 1", S("create temp table")),
    ("CREATE TEMP TABLE x AS SELECT nextval('s')", W("nextval")),
    ("CREATE TEMP VIEW v AS SELECT 1", S("create temp view")),
    ("CREATE TEMPORARY SEQUENCE s", S("create temp sequence")),
    ("DISCARD ALL", S("discard")),
    ("DISCARD TEMP", S("discard")),
    ("LOAD 'auto_explain'", S("load")),
    // Transactions.
    ("BEGIN", BEGIN_RW),
    ("BEGIN WORK", BEGIN_RW),
    ("BEGIN READ WRITE", BEGIN_RW),
    ("START TRANSACTION", BEGIN_RW),
    ("BEGIN READ ONLY", BEGIN_RO),
    ("begin transaction read only", BEGIN_RO),
    ("START TRANSACTION READ ONLY", BEGIN_RO),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", BEGIN_RO),
    ("START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY", BEGIN_RO),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", BEGIN_RW),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", BEGIN_RW),
    ("BEGIN READ ONLY DEFERRABLE", BEGIN_RO),
    ("BEGIN READ ONLY, NOT DEFERRABLE", BEGIN_RO),
    ("BEGIN READ ONLY bogus", Unparsable),
    ("SET TRANSACTION READ ONLY", Kind::SetTransactionReadOnly),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", W("serializable")),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY", W("serializable")),
    ("SET TRANSACTION READ WRITE", W("read write")),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", Tc),
    ("COMMIT", Tc),
    ("COMMIT WORK", Tc),
    ("COMMIT AND CHAIN", Tc),
    ("ROLLBACK", Tc),
    ("END", Tc),
    ("ABORT", Tc),
    ("SAVEPOINT s", Tc),
    ("RELEASE SAVEPOINT s", Tc),
    ("RELEASE s", Tc),
    ("ROLLBACK TO SAVEPOINT s", Tc),
    ("ROLLBACK TO s", Tc),
    ("CLOSE c", Tc),
    ("CLOSE ALL", Tc),
    ("FETCH 10 FROM c", Read),
    ("MOVE NEXT FROM c", Read),
    // SET pgrouter.route.
    ("SET pgrouter.route = primary", Kind::SetRoute(RouteSetting::Primary)),
    ("SET pgrouter.route TO replica", Kind::SetRoute(RouteSetting::Replica)),
    ("SET pgrouter.route = 'auto'", Kind::SetRoute(RouteSetting::Auto)),
    ("SET SESSION pgrouter.route TO 'replica'", Kind::SetRoute(RouteSetting::Replica)),
    ("set PGROUTER.Route to REPLICA", Kind::SetRoute(RouteSetting::Replica)),
    ("SET \"pgrouter\".\"route\" = \"Primary\"", Kind::SetRoute(RouteSetting::Primary)),
    ("SET pgrouter.route = bogus", S("set")),
    ("SET pgrouter.route TO DEFAULT", S("set")),
    ("SET LOCAL pgrouter.route = replica", Tc),
    ("SET pgrouter.other = replica", S("set")),
    // Reads.
    ("SELECT 1", Read),
    ("select * from t where a = $1 and b = $2", Read),
    ("SELECT $1::int, 'a'::text, now()::date", Read),
    ("SELECT E'it\\'s; DELETE FROM t', 'x;y' AS \"a;b\"", Read),
    ("SELECT $$a; DELETE FROM t$$, $tag$ ; DROP TABLE t; $tag$", Read),
    ("VALUES (1), (2)", Read),
    ("TABLE t", Read),
    ("TABLE s.t", Read),
    ("TABLE t FOR UPDATE", W("locking clause")),
    ("(TABLE t)", Read),
    ("SHOW search_path", Read),
    ("SHOW ALL", Read),
    ("SHOW TRANSACTION ISOLATION LEVEL", Read),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 9) SELECT * FROM r", Read),
    ("WITH a AS MATERIALIZED (SELECT 1) SELECT * FROM a", Read),
    ("(SELECT 1) UNION (SELECT 2) ORDER BY 1", Read),
    ("SELECT * FROM t ORDER BY a LIMIT 10 OFFSET 5", Read),
    ("SELECT * FROM t JOIN u USING (id) WHERE t.a IS NOT NULL", Read),
    ("SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM t", Read),
    // Unparsable.
    ("SELEC 1", Unparsable),
    ("SELECT 'unterminated", Unparsable),
    ("FOO BAR", Unparsable),
    ("COMMIT BOGUS", Unparsable),
    ("SET pgrouter.route = ", Unparsable),
];

#[test]
fn every_case_classifies_as_expected() {
    let mut failures = Vec::new();
    for (sql, expected) in CASES {
        let got = classify(sql);
        if got.kind != *expected || got.statements != 1 {
            failures.push(format!(
                "{sql:?}: expected {expected:?}, got {:?} ({} statements)",
                got.kind, got.statements
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn surrounding_whitespace_comments_and_semicolons_do_not_matter() {
    for (sql, expected) in CASES {
        for text in [
            format!("  \n\t{sql} ;; \n"),
            format!("/* pgrouter: replica */ {sql};"),
            format!("-- leading\n{sql}\n-- trailing"),
        ] {
            let got = classify(&text);
            assert_eq!(got.kind, *expected, "{text:?}");
            assert_eq!(got.statements, 1, "{text:?}");
        }
    }
}

#[test]
fn empty_texts_are_empty_reads() {
    for sql in [
        "",
        "   ",
        ";",
        " ; ;; ",
        "/* only a comment */",
        "-- only\n",
        "/* a */ ; -- b",
    ] {
        let got = classify(sql);
        assert_eq!(got.kind, Read, "{sql:?}");
        assert_eq!(got.statements, 0, "{sql:?}");
        assert!(got.functions.is_empty());
    }
}

#[test]
fn statements_combine() {
    let cases: &[(&str, Kind, usize)] = &[
        ("BEGIN; INSERT INTO t VALUES (1); COMMIT", W("insert"), 3),
        ("BEGIN; SELECT 1; COMMIT", BEGIN_RW, 3),
        ("BEGIN READ ONLY; SELECT 1; COMMIT", BEGIN_RO, 3),
        (
            "BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN; SELECT 2",
            BEGIN_RW,
            5,
        ),
        ("SELECT 1; BEGIN READ ONLY", BEGIN_RO, 2),
        (
            "BEGIN READ ONLY; SELECT a FROM t FOR UPDATE; COMMIT",
            W("locking clause"),
            3,
        ),
        ("SELECT 1; SELECT 2", Read, 2),
        ("SELECT 1;;; SELECT 2;", Read, 2),
        ("SELECT 1; -- c\n ; /* x */", Read, 1),
        ("COMMIT; SELECT 1", Read, 2),
        ("SET TRANSACTION READ ONLY; SELECT 1", Read, 2),
        (
            "SAVEPOINT a; SET TRANSACTION READ ONLY",
            Kind::SetTransactionReadOnly,
            2,
        ),
        ("COMMIT; ROLLBACK", Tc, 2),
        ("SELECT 1; SET search_path = a", S("set"), 2),
        ("SET search_path = a; DELETE FROM t", W("delete"), 2),
        (
            "SELECT pg_advisory_lock(1); SELECT nextval('s')",
            W("nextval"),
            2,
        ),
        (
            "SELECT pg_advisory_lock(1); SELECT 1",
            S("advisory lock"),
            2,
        ),
        ("LISTEN a; SET x = 1", S("listen"), 2),
        ("SELECT 1; SELEC 2; DELETE FROM t", Unparsable, 3),
        ("DELETE FROM t; SELECT 'unterminated", Unparsable, 2),
        ("SET pgrouter.route = replica; SELECT 1", S("set"), 2),
        (
            "SET pgrouter.route = replica;",
            Kind::SetRoute(RouteSetting::Replica),
            1,
        ),
        (
            "BEGIN; SET LOCAL work_mem = '1MB'; SELECT 1; COMMIT",
            BEGIN_RW,
            4,
        ),
        ("SELECT 'a;b'; SELECT $$;$$; SELECT \"x;\" FROM t", Read, 3),
        ("SELECT 1 /* ; */; SELECT 2 -- ;\n; SELECT 3", Read, 3),
        ("SELECT $1; DELETE FROM t", W("delete"), 2),
        // Where PostgreSQL ends strings and comments, so does the split.
        ("SELECT 'a\\'; DELETE FROM t; --'", W("delete"), 2),
        ("SELECT E'a\\\\'; DELETE FROM t; --'", W("delete"), 2),
        ("SELECT E'a\\'; DELETE FROM t; --'", Read, 1),
        ("SELECT date'2020-01-01'; DELETE FROM t", W("delete"), 2),
        ("/* /* */ ; DELETE FROM t; */ SELECT 1", Read, 1),
        ("SELECT 1 -- ; DELETE FROM t", Read, 1),
        ("SELECT $a$ ; DELETE FROM t; $b$", Unparsable, 1),
        ("SELECT a FROM t FOR/**/UPDATE", W("locking clause"), 1),
        (
            "SELECT a FROM t FOR/**/NO -- x\n KEY UPDATE",
            W("locking clause"),
            1,
        ),
    ];
    for (sql, expected, statements) in cases {
        let got = classify(sql);
        assert_eq!(&got.kind, expected, "{sql:?}");
        assert_eq!(got.statements, *statements, "{sql:?}");
    }
}

#[test]
fn sql_function_bodies_with_semicolons_go_to_the_primary() {
    let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END";
    let got = classify(sql);
    assert!(matches!(got.kind, W(_) | Unparsable), "{got:?}");
}

#[test]
fn combination_rule_order() {
    assert_eq!(combine(&[]), Read);
    assert_eq!(
        combine(&[Kind::SetRoute(RouteSetting::Auto)]),
        Kind::SetRoute(RouteSetting::Auto)
    );
    assert_eq!(combine(&[W("a"), Unparsable, S("b")]), Unparsable);
    assert_eq!(combine(&[S("b"), W("a"), W("c")]), W("a"));
    assert_eq!(combine(&[Read, S("b"), S("c")]), S("b"));
    assert_eq!(
        combine(&[Kind::SetRoute(RouteSetting::Auto), S("b")]),
        S("set")
    );
    assert_eq!(combine(&[Read, BEGIN_RO, BEGIN_RW]), BEGIN_RW);
    assert_eq!(combine(&[Tc, BEGIN_RO, Read]), BEGIN_RO);
    assert_eq!(combine(&[Tc, Kind::SetTransactionReadOnly, Read]), Read);
    assert_eq!(
        combine(&[Tc, Kind::SetTransactionReadOnly]),
        Kind::SetTransactionReadOnly
    );
    assert_eq!(combine(&[Tc, Tc]), Tc);
}

#[test]
fn hints_are_found_in_comments_of_any_form() {
    use Hint::{Primary, Replica};
    let cases: &[(&str, Option<Hint>)] = &[
        ("/* pgrouter: replica */ SELECT 1", Some(Replica)),
        ("SELECT 1 -- pgrouter: primary", Some(Primary)),
        ("/*PGROUTER:REPLICA*/SELECT 1", Some(Replica)),
        ("/*  pgrouter :  Primary  */ SELECT 1", Some(Primary)),
        ("-- PgRouter:replica\nSELECT 1", Some(Replica)),
        ("/* app=x, pgrouter: replica */ SELECT 1", Some(Replica)),
        ("SELECT /* pgrouter: replica */ * FROM t", Some(Replica)),
        (
            "/* outer /* pgrouter: primary */ still a comment */ SELECT 1",
            Some(Primary),
        ),
        (
            "/* pgrouter: replica */ SELECT 1; /* pgrouter: primary */ SELECT 2",
            Some(Primary),
        ),
        (
            "/* pgrouter: primary */ SELECT 1; -- pgrouter: replica",
            Some(Primary),
        ),
        ("/* pgrouter: primary */", Some(Primary)),
        ("SELECT 1 /* pgrouter: replica", Some(Replica)),
        ("SELECT 1", None),
        ("SELECT '/* pgrouter: replica */'", None),
        ("SELECT $$ -- pgrouter: replica $$", None),
        ("SELECT \"-- pgrouter: replica\" FROM t", None),
        ("SELECT E'\\' -- pgrouter: replica'", None),
        ("/* pgrouter: replicas */ SELECT 1", None),
        ("/* notpgrouter: replica */ SELECT 1", None),
        ("/* pgrouter replica */ SELECT 1", None),
        ("/* pgrouter: bogus */ SELECT 1", None),
    ];
    for (sql, expected) in cases {
        assert_eq!(classify(sql).hint, *expected, "{sql:?}");
    }
}

#[test]
fn hints_are_found_in_unparsable_sql() {
    for sql in [
        "/* pgrouter: replica */ SELEC garbage",
        "SELECT 'unterminated /* pgrouter: replica */",
        "-- pgrouter: replica\nSELECT 1 FOR UPDATE OF a, b",
    ] {
        let got = classify(sql);
        assert_eq!(got.kind, Unparsable, "{sql:?}");
        let expected = (!sql.starts_with("SELECT 'unterminated")).then_some(Hint::Replica);
        assert_eq!(got.hint, expected, "{sql:?}");
    }
}

fn functions(sql: &str) -> Vec<String> {
    classify(sql)
        .functions
        .iter()
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn functions_are_collected_everywhere() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT f()", &["f"]),
        ("SELECT * FROM f()", &["f"]),
        ("SELECT * FROM s.f() AS x(a int)", &["s.f"]),
        ("SELECT * FROM t, LATERAL g(t.x) AS x", &["g"]),
        (
            "SELECT * FROM generate_series(1, 3) WITH ORDINALITY",
            &["generate_series"],
        ),
        ("SELECT Public.F(1)", &["public.f"]),
        ("SELECT \"MyFunc\"()", &["MyFunc"]),
        ("SELECT \"S\".f()", &["S.f"]),
        (
            "WITH c AS (SELECT a(1) AS x) SELECT b(x) FROM c WHERE d(x) > 0 ORDER BY e(x)",
            &["a", "b", "d", "e"],
        ),
        ("SELECT (SELECT h() FROM t)", &["h"]),
        ("SELECT * FROM t WHERE a IN (SELECT k())", &["k"]),
        (
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = m(t.a))",
            &["m"],
        ),
        ("SELECT * FROM (SELECT n() AS v) s", &["n"]),
        ("SELECT 1 UNION SELECT o()", &["o"]),
        (
            "SELECT upper(lower(x)) FROM t GROUP BY p(x) HAVING q(x) > 1",
            &["lower", "p", "q", "upper"],
        ),
        (
            "SELECT count(*) FILTER (WHERE g(x)) OVER (ORDER BY h(y)) FROM t",
            &["count", "g", "h"],
        ),
        (
            "SELECT CASE WHEN c1() THEN c2() ELSE c3() END",
            &["c1", "c2", "c3"],
        ),
        ("VALUES (f(1)), (g(2))", &["f", "g"]),
        ("SELECT f(), f(), F(), \"f\"()", &["f"]),
        ("COPY (SELECT f()) TO STDOUT", &["f"]),
        ("EXPLAIN SELECT f()", &[]),
        ("EXPLAIN ANALYZE SELECT f()", &["f"]),
        ("DECLARE c CURSOR FOR SELECT f()", &["f"]),
        ("SELECT f(); SELECT g()", &["f", "g"]),
        ("BEGIN READ ONLY; SELECT f(); COMMIT", &["f"]),
        ("SELECT pg_current_wal_lsn()", &["pg_current_wal_lsn"]),
        ("SELECT \"RANDOM\"()", &["RANDOM"]),
        ("SELECT public.random()", &["public.random"]),
        ("SELECT public.nextval('s')", &["public.nextval"]),
        ("SELECT set_config('a.b', 'c', true)", &[]),
        ("SELECT a FROM t WHERE x = f() FOR NO KEY UPDATE", &["f"]),
        // Built-ins known to be safe are left out.
        (
            "SELECT now(), random(), clock_timestamp(), pg_sleep(1), pg_stat_get_numscans(1), \
             current_timestamp, CURRENT_USER, coalesce(a, b), nullif(a, b), greatest(1, 2), \
             gen_random_uuid(), pg_catalog.random(), PG_CATALOG.NOW(), version(), \
             current_setting('x'), pg_is_in_recovery(), pg_backend_pid(), setseed(0.5), \
             pg_relation_size('t'), pg_typeof(1), format('%s', 1), to_char(1, '9'), \
             statement_timestamp(), txid_current_snapshot(), inet_server_addr() FROM t",
            &[],
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(functions(sql), expected.to_vec(), "{sql:?}");
    }
}

#[test]
fn every_listed_safe_builtin_is_left_out() {
    for name in READ_ONLY_VOLATILE_BUILTINS
        .iter()
        .chain(SQL_SYNTAX_FUNCTIONS)
    {
        let sql = format!("SELECT {name}()");
        let got = classify(&sql);
        if got.kind == Read {
            assert!(got.functions.is_empty(), "{sql}: {:?}", got.functions);
        }
        let sql = format!("SELECT pg_catalog.{name}(1)");
        assert!(classify(&sql).functions.is_empty(), "{sql}");
    }
}

#[test]
fn a_batch_is_judged_by_all_its_statements() {
    let read = classify("SELECT f(1)");
    let write = classify("INSERT INTO t VALUES (1)");
    let hinted = classify("/* pgrouter: primary */ SELECT 2");
    let merged = Classification::merged([&read, &write]);
    assert_eq!(merged.kind, W("insert"));
    assert_eq!(merged.statements, 2);
    assert_eq!(merged.functions, read.functions);
    let reads = Classification::merged([&read, &read]);
    assert_eq!(reads.kind, Read);
    assert_eq!(reads.functions.len(), 1, "functions are deduplicated");
    assert_eq!(
        Classification::merged([&read, &hinted]).hint,
        Some(Hint::Primary)
    );
    let session = classify("SET work_mem = '8MB'");
    assert_eq!(Classification::merged([&read, &session]).kind, S("set"));
}

#[test]
fn every_spelling_of_a_role_change_is_one() {
    for sql in [
        "SET ROLE tenant",
        "SET role='tenant'",
        "SET role = 'tenant'",
        "SET \"role\" TO tenant",
        "SET SESSION ROLE tenant",
    ] {
        assert_eq!(classify(sql).kind, S("set role"), "{sql}");
    }
    for sql in [
        "SET SESSION AUTHORIZATION bob",
        "SET session_authorization = 'bob'",
    ] {
        assert_eq!(classify(sql).kind, S("set session authorization"), "{sql}");
    }
    assert_eq!(classify("SET LOCAL role = 'tenant'").kind, Tc);
}

#[test]
fn a_set_beside_a_write_still_changes_the_session() {
    let class = classify("SET work_mem = '3MB'; INSERT INTO t VALUES (1)");
    assert_eq!(class.kind, W("insert"));
    assert_eq!(class.session_state(), Some("set"));
    assert_eq!(classify("SELECT 1").session_state(), None);
}
