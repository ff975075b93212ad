#!/usr/bin/env python3
"""Real-driver test for psycopg 3 through pgrouter (transaction mode).

Usage: python3 test_psycopg.py postgres://USER:PASSWORD@HOST:PORT/DB

Run by tests/integration/drivers.rs against a pgrouter with a small pool
(max_connections = 3) in front of a primary and two replicas, so that the
transactions of the ~20 concurrent clients below (threads with sync
connections, or tasks with async connections) interleave on the same few
server connections. Every check must behave exactly as it does on a direct
PostgreSQL connection; run the script against a plain PostgreSQL to see that.

Half of the clients use `prepare_threshold=0` (every query becomes a named
prepared statement `_pg3_N`, numbered per connection, so different clients
use the same names), the other half psycopg's default threshold (5: a query
is prepared on its 6th execution). psycopg also sends `DEALLOCATE ALL` after
a rollback or DDL, and a protocol-level Close for statements evicted from its
cache (more than 100).

Each check is independent (own connections, own tables). All checks run; a
summary is printed at the end and the exit status is 1 if any check failed.
"""

import asyncio
import concurrent.futures
import datetime
import decimal
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
import zoneinfo

try:
    import psycopg
    from psycopg import errors
except ImportError:
    print(
        'MISSING PYTHON MODULE: psycopg is not installed; run: pip install asyncpg "psycopg[binary]"',
        file=sys.stderr,
    )
    sys.exit(3)

if len(sys.argv) != 2:
    print(__doc__, file=sys.stderr)
    sys.exit(2)

URL = sys.argv[1]
CLIENTS = 20
CHECK_TIMEOUT = 120  # seconds per check
# Last resort against hangs: dump every thread's stack and exit.
faulthandler.dump_traceback_later(10 * 60, exit=True)

CHECKS = []


class _QuietAbortedPipelines(logging.Filter):
    """psycopg logs a warning when it leaves a pipeline that an error
    aborted (see pipeline_mode, which does that on purpose): drop it."""

    def filter(self, record):
        return not record.getMessage().startswith("error ignored terminating <psycopg.Pipeline")


logging.getLogger("psycopg").addFilter(_QuietAbortedPipelines())


def check(fn):
    CHECKS.append(fn)
    return fn


def threshold(w):
    """prepare_threshold of client w: 0 for even, psycopg's default for odd."""
    return 0 if w % 2 == 0 else 5


def connect(w=0, **kwargs):
    kwargs.setdefault("prepare_threshold", threshold(w))
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(URL, connect_timeout=30, **kwargs)


async def aconnect(w=0, **kwargs):
    kwargs.setdefault("prepare_threshold", threshold(w))
    kwargs.setdefault("autocommit", True)
    return await psycopg.AsyncConnection.connect(URL, connect_timeout=30, **kwargs)


def summarize(n, results):
    failed = {}
    for w, r in enumerate(results):
        if isinstance(r, BaseException):
            failed.setdefault(f"{type(r).__name__}: {r}", []).append((w, r))
    if failed:
        lines = [f"{sum(len(v) for v in failed.values())}/{n} clients failed:"]
        first = None
        for msg, items in failed.items():
            lines.append(f"  clients {[w for w, _ in items]}: {msg}")
            first = first or items[0][1]
        raise AssertionError("\n".join(lines)) from first


def threads(n, fn):
    """Runs fn(0) .. fn(n-1) in n threads; fails with a summary of every
    client's exception (grouped by message) if any failed."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=n)
    futures = [pool.submit(fn, w) for w in range(n)]
    done, pending = concurrent.futures.wait(futures, timeout=CHECK_TIMEOUT)
    pool.shutdown(wait=False)
    if pending:
        raise AssertionError(f"{len(pending)}/{n} clients still running after {CHECK_TIMEOUT}s")
    summarize(n, [f.exception() or None for f in futures])


async def tasks(n, fn):
    """Like threads() with asyncio tasks."""
    results = await asyncio.wait_for(
        asyncio.gather(*(fn(w) for w in range(n)), return_exceptions=True), CHECK_TIMEOUT
    )
    summarize(n, results)


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


class expect_error:
    """`with expect_error(errors.DivisionByZero, "what"):` fails unless the
    block raises that error."""

    def __init__(self, exc_type, what):
        self.exc_type, self.what = exc_type, what

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError(f"{self.what}: expected {self.exc_type.__name__}, got no error")
        return issubclass(et, self.exc_type)


# ---------------------------------------------------------------- checks ---


def parametrized_queries(conn, w, i):
    cur = conn.cursor()
    cur.execute("SELECT %s::int * %s::int + %s::int", (i, w, 7))
    eq(cur.fetchone(), (i * w + 7,), "mul")
    cur.execute("SELECT g, g * %s FROM generate_series(1, %s) g", (w, i % 6 + 1))
    eq(cur.fetchall(), [(g, g * w) for g in range(1, i % 6 + 2)], "generate_series")
    eq(conn.execute("SELECT %s || '-' || %s", (f"w{w}", str(i))).fetchone(), (f"w{w}-{i}",), "text")
    eq(conn.execute("SELECT %s::bigint, %s::numeric", (i * 10**10, "1.5")).fetchone(),
       (i * 10**10, decimal.Decimal("1.5")), "bigint/numeric")
    eq(conn.execute("SELECT 42").fetchone(), (42,), "no parameters")


@check
def prepared_queries_threads():
    """20 threads (sync connections, autocommit), parametrized queries over
    many transactions and autocommit statements."""

    def client(w):
        with connect(w) as conn:
            for i in range(30):
                if i % 3 == 0:
                    with conn.transaction():
                        parametrized_queries(conn, w, i)
                else:
                    parametrized_queries(conn, w, i)
                if i % 5 == 0:
                    time.sleep(0.001)

    threads(CLIENTS, client)


@check
def prepared_queries_async():
    """20 async connections (not autocommit: psycopg's implicit BEGIN,
    commit/rollback), parametrized queries interleaving."""

    async def client(w):
        async with await aconnect(w, autocommit=False) as conn:
            for i in range(30):
                cur = await conn.execute("SELECT %s::int * %s::int + %s::int", (i, w, 7))
                eq(await cur.fetchone(), (i * w + 7,), "mul")
                cur = await conn.execute("SELECT g, g * %s FROM generate_series(1, %s) g", (w, i % 6 + 1))
                eq(await cur.fetchall(), [(g, g * w) for g in range(1, i % 6 + 2)], "generate_series")
                async with conn.transaction():  # a savepoint inside the implicit transaction
                    cur = await conn.execute("SELECT %s || '!'", (f"w{w}",))
                    eq(await cur.fetchone(), (f"w{w}!",), "in savepoint")
                if i % 4 == 3:
                    await conn.rollback()  # also makes psycopg send DEALLOCATE ALL
                else:
                    await conn.commit()
                await asyncio.sleep(0)

    asyncio.run(tasks(CLIENTS, client))


@check
def explain_route():
    """EXPLAIN ROUTE through psycopg's extended protocol (unnamed
    statement): pgrouter answers it, the statement does not run."""
    with connect(autocommit=True) as conn:
        cur = conn.execute("EXPLAIN ROUTE INSERT INTO no_such_table VALUES (1)", prepare=False)
        eq([c.name for c in cur.description], ["node", "route", "reason", "detail"], "explain columns")
        row = cur.fetchone()
        eq(row[1], "primary", "an INSERT is routed to the primary")
        eq(cur.fetchone(), None, "one row")


@check
def prepared_statement_cache_rotation():
    """prepare_threshold=0 and 130 distinct queries, twice: psycopg closes
    the statements evicted from its 100-entry cache."""

    def client(w):
        with connect(0) as conn:
            for rnd in range(2):
                for k in range(130):
                    eq(conn.execute(f"SELECT %s::int + {k}", (w,)).fetchone(), (w + k,), f"round {rnd} query {k}")

    threads(6, client)


@check
def executemany():
    """cursor.executemany (pipelined by psycopg) into per-client and shared
    tables, with RETURNING, inside/outside transactions; values checked."""
    n = 150
    with connect() as setup:
        setup.execute("DROP TABLE IF EXISTS pg3_shared")
        setup.execute("CREATE TABLE pg3_shared (worker int, i int, v text, PRIMARY KEY (worker, i))")

    def client(w):
        with connect(w) as conn:
            t = f"pg3_items_{w}"
            conn.execute(f"DROP TABLE IF EXISTS {t}")
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, f float8)")
            cur = conn.cursor()
            cur.executemany(f"INSERT INTO {t} VALUES (%s, %s, %s)", [(i, f"v{i}", i / 4) for i in range(n)])
            with conn.transaction():
                cur.executemany(
                    f"INSERT INTO {t} VALUES (%s, %s, %s)", [(i, f"v{i}", i / 4) for i in range(n, 2 * n)]
                )
            cur.executemany(f"UPDATE {t} SET v = v || '!' WHERE id = %s", [(i,) for i in range(0, 2 * n, 3)])
            cur.executemany(
                f"INSERT INTO {t} VALUES (%s, %s, 0) RETURNING id * 2, v",
                [(i, f"r{i}") for i in range(1000, 1010)],
                returning=True,
            )
            returned = []
            while True:
                returned.append(cur.fetchone())
                if not cur.nextset():
                    break
            eq(returned, [(i * 2, f"r{i}") for i in range(1000, 1010)], "executemany RETURNING")
            cur.executemany("INSERT INTO pg3_shared VALUES (%s, %s, %s)", [(w, i, f"{w}:{i}") for i in range(n)])
            with expect_error(errors.UniqueViolation, "duplicate key in executemany"):
                with conn.transaction():
                    cur.executemany(f"INSERT INTO {t} VALUES (%s, 'x', 0)", [(5000,), (0,)])
            cur.execute(f"SELECT id, v, f FROM {t} WHERE id < 1000 ORDER BY id")
            eq(
                cur.fetchall(),
                [(i, f"v{i}" + ("!" if i % 3 == 0 else ""), i / 4) for i in range(2 * n)],
                f"{t} contents",
            )
            eq(conn.execute(f"SELECT count(*) FROM {t}").fetchone(), (2 * n + 10,), "count")
            cur.execute("SELECT i, v FROM pg3_shared WHERE worker = %s ORDER BY i", (w,))
            eq(cur.fetchall(), [(i, f"{w}:{i}") for i in range(n)], "own rows in pg3_shared")

    threads(CLIENTS, client)

    with connect() as conn, conn.transaction():
        # LOCK makes this a transaction any router sends to the primary.
        conn.execute("LOCK TABLE pg3_shared IN SHARE MODE")
        eq(
            conn.execute("SELECT count(*), sum(i) FROM pg3_shared").fetchone(),
            (CLIENTS * n, CLIENTS * sum(range(n))),
            "pg3_shared totals",
        )


@check
def pipeline_mode():
    """Explicit pipeline mode: many queries sent before reading results,
    including an error that aborts the rest of its pipeline."""

    def client(w):
        with connect(w) as conn:
            for rnd in range(5):
                with conn.pipeline():
                    curs = [conn.execute("SELECT %s::int + %s::int", (w, k)) for k in range(20)]
                eq([c.fetchone() for c in curs], [(w + k,) for k in range(20)], "pipelined results")
                # prepare=False: psycopg (3.3) itself loses track of which
                # statements it prepared when a pipeline aborts (fails on a
                # direct connection too), so keep the aborted pipeline out of
                # its statement cache.
                with expect_error(errors.DivisionByZero, "error in pipeline"):
                    with conn.pipeline():
                        conn.execute("SELECT %s::int", (1,), prepare=False)
                        conn.execute("SELECT 1 / %s::int", (0,), prepare=False)
                        conn.execute("SELECT %s::int", (3,), prepare=False)
                eq(conn.execute("SELECT %s::text", (f"after{rnd}",)).fetchone(), (f"after{rnd}",), "after pipeline error")

    threads(CLIENTS, client)


@check
def copy_from_and_to():
    """COPY FROM STDIN (text rows, raw text, binary) and COPY TO STDOUT
    (typed rows, raw), in autocommit and transactions; a failing COPY."""
    n = 500

    def client(w):
        with connect(w) as conn:
            t = f"pg3_copy_{w}"
            conn.execute(f"DROP TABLE IF EXISTS {t}")
            conn.execute(f"CREATE TABLE {t} (id int, v text)")
            cur = conn.cursor()
            with cur.copy(f"COPY {t} (id, v) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i, f"row {i}\t{w}"))
            eq(cur.rowcount, n, "COPY FROM rowcount")
            with conn.transaction():
                with cur.copy(f"COPY {t} FROM STDIN") as copy:
                    copy.write("".join(f"{i}\traw {i}\n" for i in range(n, 2 * n)))
            with cur.copy(f"COPY {t} (id, v) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                for i in range(2 * n, 3 * n):
                    copy.write_row((i, f"bin {i}"))
            # Bad data: the COPY fails, nothing from it stays.
            with expect_error(errors.InvalidTextRepresentation, "bad COPY data"):
                with cur.copy(f"COPY {t} FROM STDIN") as copy:
                    copy.write("1\tok\nnot-a-number\tbad\n")
            eq(conn.execute(f"SELECT count(*), sum(id) FROM {t}").fetchone(),
               (3 * n, sum(range(3 * n))), "after COPY FROM")

            expected = [(i, f"row {i}\t{w}") for i in range(n)] + [(i, f"raw {i}") for i in range(n, 2 * n)] + [
                (i, f"bin {i}") for i in range(2 * n, 3 * n)
            ]
            with cur.copy(f"COPY (SELECT id, v FROM {t} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text"])
                eq(list(copy.rows()), expected, "COPY TO typed rows")
            with conn.transaction():
                with cur.copy(f"COPY (SELECT id FROM {t} WHERE id < 5 ORDER BY id) TO STDOUT") as copy:
                    raw = b"".join(bytes(block) for block in copy)
                eq(raw, b"0\n1\n2\n3\n4\n", "COPY TO raw")
            with cur.copy(f"COPY {t} TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                eq(sorted(copy.rows()), expected, "COPY TO binary")
            eq(conn.execute("SELECT %s::int", (w,)).fetchone(), (w,), "query after COPY")

    threads(CLIENTS, client)


@check
def transactions_and_rollback():
    """conn.transaction() blocks: commit, psycopg.Rollback, exceptions,
    nested savepoints; non-autocommit commit/rollback; failed transactions;
    isolation levels; read-only."""

    def client(w):
        t = f"pg3_tx_{w}"
        with connect(w) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {t}")
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
            expected = []

            def ids():
                return [r[0] for r in conn.execute(f"SELECT id FROM {t} ORDER BY id")]

            for i in range(10):
                b = i * 10
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 1,))
                expected.append(b + 1)
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 2,))
                    raise psycopg.Rollback()
                try:
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 3,))
                        raise KeyError("app error")
                except KeyError:
                    pass
                with conn.transaction() as outer:
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 4,))
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 5,))
                        raise psycopg.Rollback()  # the savepoint only
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 6,))
                    with expect_error(errors.UniqueViolation, "duplicate key in savepoint"):
                        with conn.transaction():
                            conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 4,))
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (b + 7,))
                    assert outer is not None
                expected += [b + 4, b + 6, b + 7]
                eq(ids(), expected, f"rows after round {i}")

        with connect(w, autocommit=False) as conn:
            conn.execute(f"INSERT INTO {t} VALUES (%s)", (1000,))
            conn.rollback()
            conn.execute(f"INSERT INTO {t} VALUES (%s)", (1001,))
            conn.commit()
            conn.execute(f"INSERT INTO {t} VALUES (%s)", (1002,))
            with expect_error(errors.UniqueViolation, "duplicate key"):
                conn.execute(f"INSERT INTO {t} VALUES (%s)", (1001,))
            with expect_error(errors.InFailedSqlTransaction, "statement in failed transaction"):
                conn.execute("SELECT 1")
            conn.rollback()
            expected.append(1001)
            eq([r[0] for r in conn.execute(f"SELECT id FROM {t} ORDER BY id")], expected, "non-autocommit rows")
            conn.commit()

            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            eq(conn.execute("SHOW transaction_isolation").fetchone(), ("serializable",), "serializable")
            eq(conn.execute(f"SELECT count(*) FROM {t}").fetchone(), (len(expected),), "serializable count")
            conn.commit()
            conn.isolation_level = None
            conn.read_only = True
            eq(conn.execute("SHOW transaction_read_only").fetchone(), ("on",), "read only")
            eq(conn.execute(f"SELECT count(*) FROM {t}").fetchone(), (len(expected),), "read-only count")
            with expect_error(errors.ReadOnlySqlTransaction, "write in read-only transaction"):
                conn.execute(f"INSERT INTO {t} VALUES (%s)", (2000,))
            conn.rollback()
            conn.read_only = None
            eq(conn.execute("SHOW transaction_read_only").fetchone(), ("off",), "read write again")
            conn.commit()

    threads(CLIENTS, client)


@check
def errors_then_continue():
    """Server errors (division by zero, syntax, undefined table, bad
    parameter, RAISE) in autocommit and in transactions; the connection
    keeps working and prepared queries still give the right values."""

    def client(w):
        with connect(w) as conn:
            for i in range(10):
                eq(conn.execute("SELECT 1000 / %s::int", (w + 1,)).fetchone(), (1000 // (w + 1),), "1000/x")
                with expect_error(errors.DivisionByZero, "1000/0"):
                    conn.execute("SELECT 1000 / %s::int", (0,))
                with expect_error(errors.DivisionByZero, "1/0"):
                    conn.execute("SELECT 1/0")
                with expect_error(errors.SyntaxError, "syntax error"):
                    conn.execute("SELEC %s", (1,))
                with expect_error(errors.UndefinedTable, "undefined table"):
                    conn.execute(f"SELECT * FROM no_such_table_{w}")
                with expect_error(errors.InvalidTextRepresentation, "bad parameter"):
                    conn.execute("SELECT %s::int", ("x",))
                with expect_error(errors.RaiseException, "RAISE"):
                    conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'boom {w}'; END $$")
                with expect_error(errors.DivisionByZero, "error in a transaction"):
                    with conn.transaction():
                        conn.execute("SELECT %s::int", (i,))
                        conn.execute("SELECT 1 / %s::int", (0,))
                eq(conn.execute("SELECT 1000 / %s::int", (w + 1,)).fetchone(), (1000 // (w + 1),), "still works")
                eq(conn.execute("SELECT %s::text", (f"ok{w}",)).fetchone(), (f"ok{w}",), "still works")

    threads(CLIENTS, client)


@check
def server_side_cursors():
    """Named (server-side, DECLARE) cursors inside transactions: iteration
    in itersize chunks, fetchmany, scroll."""

    def client(w):
        with connect(w) as conn:
            for rnd in range(3):
                limit = 300 + w * 7 + rnd
                with conn.transaction():
                    with conn.cursor(name=f"ssc_{w}") as cur:
                        cur.itersize = 37
                        cur.execute("SELECT g, g * %s FROM generate_series(1, %s) g", (w, limit))
                        eq(list(cur), [(g, g * w) for g in range(1, limit + 1)], "iterated cursor")
                with conn.transaction():
                    with conn.cursor(name="same_name_everywhere", scrollable=True) as cur:
                        cur.execute("SELECT g::text FROM generate_series(1, %s) g", (100,))
                        eq(cur.fetchmany(3), [("1",), ("2",), ("3",)], "fetchmany")
                        cur.scroll(10)
                        eq(cur.fetchone(), ("14",), "after scroll")
                        eq(conn.execute("SELECT %s::int * 2", (w,)).fetchone(), (2 * w,), "query between fetches")
                        cur.scroll(0, mode="absolute")
                        eq(cur.fetchone(), ("1",), "scroll absolute")
                        eq(len(cur.fetchall()), 99, "rest of the cursor")

    threads(CLIENTS, client)


@check
def session_parameters():
    """SET outside a transaction lasts for the session, across the other
    clients' transactions; ParameterStatus (TimeZone, application_name)
    reaches the driver; SET in a rolled-back transaction is undone."""

    def client(w):
        tzname = f"Etc/GMT-{w % 12}"
        with connect(w) as conn:
            conn.execute(f"SET application_name = 'pg3-{w}'")
            conn.execute(f"SET TimeZone = '{tzname}'")
            conn.execute(f"SET drvtest.worker = 'w{w}'")
            conn.execute(f"SET work_mem = '{w + 1}MB'")
            want = (f"pg3-{w}", tzname, f"w{w}", f"{w + 1}MB")
            q = ("SELECT current_setting('application_name'), current_setting('TimeZone'), "
                 "current_setting('drvtest.worker'), current_setting('work_mem')")
            for i in range(10):
                eq(conn.execute(q).fetchone(), want, f"settings, round {i}")
                eq(conn.info.parameter_status("application_name"), f"pg3-{w}", "ParameterStatus application_name")
                eq(conn.info.timezone, zoneinfo.ZoneInfo(tzname), "conn.info.timezone")
                ts = conn.execute("SELECT '2024-01-01 12:00:00+00'::timestamptz").fetchone()[0]
                eq(ts, datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone.utc), "timestamptz value")
                eq(ts.tzinfo, zoneinfo.ZoneInfo(tzname), "timestamptz tzinfo")
                with conn.transaction():
                    conn.execute("SET LOCAL work_mem = '64MB'")
                    eq(conn.execute("SHOW work_mem").fetchone(), ("64MB",), "SET LOCAL")
                with conn.transaction():
                    conn.execute("SET work_mem = '32MB'")
                    raise psycopg.Rollback()
                eq(conn.execute(q).fetchone(), want, f"settings after transactions, round {i}")
                time.sleep(0.005)
            conn.execute("RESET work_mem")
            eq(conn.execute("SHOW work_mem").fetchone(), ("4MB",), "RESET")
        with connect(w, autocommit=False) as conn:
            conn.execute("SET work_mem = '5MB'")  # inside psycopg's implicit transaction
            conn.commit()
            conn.execute("SET work_mem = '7MB'")
            conn.rollback()
            eq(conn.execute("SHOW work_mem").fetchone(), ("5MB",), "SET committed / rolled back")
            conn.commit()

    threads(CLIENTS, client)


@check
def session_sql_prepare():
    """SQL-level PREPARE / EXECUTE / DEALLOCATE, same statement name in
    every client with a different body."""

    def client(w):
        with connect(w) as conn:
            conn.execute(f"PREPARE drv_q(int) AS SELECT $1 * 2 + {w}")
            for i in range(10):
                eq(conn.execute(f"EXECUTE drv_q({i})").fetchone(), (i * 2 + w,), "EXECUTE")
                with conn.transaction():
                    eq(conn.execute(f"EXECUTE drv_q({i + 1})").fetchone(), (i * 2 + 2 + w,), "EXECUTE in tx")
                time.sleep(0.002)
            conn.execute("DEALLOCATE drv_q")
            with expect_error(errors.InvalidSqlStatementName, "EXECUTE after DEALLOCATE"):
                conn.execute("EXECUTE drv_q(1)")

    threads(CLIENTS, client)


@check
def session_withhold_cursor():
    """A WITH HOLD cursor outlives the transaction that declared it."""

    def client(w):
        with connect(w) as conn:
            with conn.cursor(name="held", withhold=True) as cur:
                with conn.transaction():
                    cur.execute("SELECT g + %s FROM generate_series(1, 50) g", (w,))
                got = []
                for _ in range(5):
                    got += cur.fetchmany(10)
                    eq(conn.execute("SELECT %s::int", (w,)).fetchone(), (w,), "query between fetches")
                    time.sleep(0.002)
                eq(got, [(g + w,) for g in range(1, 51)], "held cursor rows")

    threads(CLIENTS, client)


def in_thread(fn, timeout):
    """Runs fn() in a daemon thread; re-raises its exception, or raises
    TimeoutError if it is still running after `timeout` seconds (sync
    psycopg has no client-side query timeout)."""
    outcome = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    thread = threading.Thread(target=target, name=fn.__name__, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{fn.__name__} still running after {timeout}s (hung query?)")
    if "error" in outcome:
        raise outcome["error"]


def smoke():
    with connect() as conn:
        print(f"server: {conn.execute('SELECT version()').fetchone()[0]}", flush=True)


def main():
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}, {psycopg.pq.__impl__}); "
          f"{len(CHECKS)} checks against {URL}", flush=True)
    try:
        in_thread(smoke, 60)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL first query (SELECT version()): {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(file=sys.stdout)
        print("=== psycopg: not even the first query works; no check run", flush=True)
        sys.stdout.flush()
        os._exit(1)
    failures = []
    for fn in CHECKS:
        print(f"--- {fn.__name__}: {' '.join(fn.__doc__.split())}", flush=True)
        started = time.monotonic()
        try:
            in_thread(fn, CHECK_TIMEOUT + 30)
        except Exception as e:  # noqa: BLE001 - report everything
            failures.append(fn.__name__)
            print(f"FAIL {fn.__name__} ({time.monotonic() - started:.1f}s): {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {fn.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
    print(f"=== psycopg: {len(CHECKS) - len(failures)}/{len(CHECKS)} checks passed", flush=True)
    if failures:
        print(f"=== FAILED: {', '.join(failures)}", flush=True)
    sys.stdout.flush()
    # os._exit: do not wait for client threads a failed check left hanging.
    os._exit(1 if failures else 0)


if __name__ == "__main__":
    main()
