#!/usr/bin/env python3
"""Routing of pipelined and batched requests through pgrouter, with real
drivers (psycopg 3 pipelines, asyncpg COPY).

Usage: python3 test_request_routing.py ROUTER_URL PRIMARY_URL {psycopg|asyncpg}

ROUTER_URL is pgrouter (transaction mode, routing on: a primary and
streaming replicas behind it); PRIMARY_URL a direct connection to the
primary as a superuser (it creates the tables, grants them to the router's
user, waits until the replicas have replayed them, and afterwards checks
that the rows written through pgrouter are on the primary).

A driver may send several statements before reading any reply, or before
a Sync: a psycopg pipeline sends Parse/Bind/Describe/Execute for each
statement and one Sync at its end (one implicit transaction; its
`pipeline.sync()` waits for the replies, so requests are not sent back to
back); asyncpg's copy_records_to_table prepares its introspection query
`SELECT cols FROM table LIMIT 0` with Parse/Describe/Flush (no Sync) and
then sends `COPY table(cols) FROM STDIN (FORMAT binary)` as a simple Query.
Each request must be routed on its own merits, and a batch with a write in
it must run on the primary: no "cannot execute ... in a read-only
transaction" / "during recovery" (SQLSTATE 25006) error, and every row
written is on the primary.

Every query that reports where it ran selects inet_server_port() (and no
volatile function such as pg_is_in_recovery(), which pgrouter sends to the
primary): any port but the primary's is a replica's.

All checks of the group run; a summary is printed at the end and the exit
status is 1 if any check failed.
"""

import asyncio
import concurrent.futures
import faulthandler
import os
import sys
import time
import traceback

if len(sys.argv) != 4 or sys.argv[3] not in ("psycopg", "asyncpg"):
    print(__doc__, file=sys.stderr)
    sys.exit(2)

ROUTER_URL, PRIMARY_URL, GROUP = sys.argv[1:]

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if GROUP == "asyncpg":
        import asyncpg
except ImportError as e:
    print(
        f'MISSING PYTHON MODULE: {e.name} is not installed; run: pip install asyncpg "psycopg[binary]"',
        file=sys.stderr,
    )
    sys.exit(3)

CHECK_TIMEOUT = 60  # seconds per check
faulthandler.dump_traceback_later(10 * 60, exit=True)

CHECKS = []
WHERE = "SELECT inet_server_port()"


def check(group):
    def register(fn):
        if group == GROUP:
            CHECKS.append(fn)
        return fn

    return register


def describe(exc):
    """An exception with its SQLSTATE, as the report shows it."""
    code = getattr(exc, "sqlstate", None)
    code = f" [SQLSTATE {code}]" if code else ""
    return f"{type(exc).__name__}{code}: {str(exc).strip()}"


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


# ------------------------------------------------- the primary, directly ---


def primary():
    return psycopg.connect(PRIMARY_URL, autocommit=True, connect_timeout=30)


def create_tables(*ddl):
    """Creates the tables on the primary, grants them to the router's user
    and waits (30 s) until every replica has replayed them, so that a write
    sent to a replica fails with 25006 (read-only), not 42P01."""
    user = conninfo_to_dict(ROUTER_URL).get("user", "app")
    with primary() as conn:
        for sql in ddl:
            conn.execute(sql)
            table = sql.split()[2]
            conn.execute(f'GRANT ALL ON {table} TO "{user}"')
        conn.execute("SET synchronous_commit = on")
        conn.execute("SELECT txid_current()")  # flushes the WAL before it
        target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        deadline = time.monotonic() + 30
        while True:
            total, done = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE replay_lsn >= %s) FROM pg_stat_replication",
                (target,),
            ).fetchone()
            if done == total:  # none: a plain PostgreSQL, no replica to wait for
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas did not replay {target} in 30 s: {done}/{total}")
            time.sleep(0.02)


def primary_ids(table):
    """The ids in `table` on the primary."""
    with primary() as conn:
        return sorted(r[0] for r in conn.execute(f"SELECT id FROM {table}"))


def primary_port():
    with primary() as conn:
        return conn.execute("SELECT inet_server_port()").fetchone()[0]


def on_primary(port, what):
    """The port that served a read must be the primary's."""
    if port != primary_port():
        raise AssertionError(f"{what}: expected the primary (port {primary_port()}), got a replica's port {port}")


def on_replica(port, what):
    """The port that served a read must be a replica's."""
    if port == primary_port():
        raise AssertionError(f"{what}: expected a replica, got the primary's port {port}")


# --------------------------------------------------- psycopg 3 pipelines ---


def router(**kwargs):
    # prepare_threshold=None: unnamed statements only, so the checks see
    # the routing of the batch, not of psycopg's prepared statements.
    kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(ROUTER_URL, connect_timeout=30, **kwargs)


@check("psycopg")
def pipeline_autocommit_read_then_write():
    """autocommit, one pipeline (one Sync): SELECT inet_server_port(), then
    INSERT INTO pipe_ac VALUES (1). The batch starts with a read; its write
    must run on the primary (today: 25006 cannot execute INSERT in a
    read-only transaction)."""
    create_tables("CREATE TABLE pipe_ac (id int PRIMARY KEY)")
    with router(autocommit=True) as conn:
        with conn.pipeline():
            read = conn.execute(WHERE)
            conn.execute("INSERT INTO pipe_ac VALUES (1)")
        (port,) = read.fetchone()
        print(f"    read reported port {port}")
        # One Sync: one implicit transaction, which the write takes to the
        # primary.
        on_primary(port, "the read in the write's implicit transaction")
    eq(primary_ids("pipe_ac"), [1], "rows of pipe_ac on the primary")


@check("psycopg")
def pipeline_transaction_read_then_write():
    """autocommit off (psycopg's BEGIN goes in the pipeline), SELECT
    inet_server_port() then INSERT INTO pipe_tx VALUES (1), commit."""
    create_tables("CREATE TABLE pipe_tx (id int PRIMARY KEY)")
    with router(autocommit=False) as conn:
        with conn.pipeline():
            read = conn.execute(WHERE)
            conn.execute("INSERT INTO pipe_tx VALUES (1)")
        (port,) = read.fetchone()
        conn.commit()
        print(f"    read reported port {port}")
        on_primary(port, "the read of a transaction that writes")
    eq(primary_ids("pipe_tx"), [1], "rows of pipe_tx on the primary")


@check("psycopg")
def pipeline_read_write_read():
    """autocommit, one pipeline (one Sync): a read, an INSERT, then a read
    of the row just inserted, which the implicit transaction sees."""
    create_tables("CREATE TABLE pipe_rwr (id int PRIMARY KEY)")
    with router(autocommit=True) as conn:
        with conn.pipeline():
            first = conn.execute(WHERE)
            conn.execute("INSERT INTO pipe_rwr VALUES (7)")
            after = conn.execute("SELECT count(*), inet_server_port() FROM pipe_rwr WHERE id = 7")
        count, port = after.fetchone()
        print(f"    first read: port {first.fetchone()[0]}, read after the write: port {port}")
        eq(count, 1, "the read after the INSERT, in the same implicit transaction, sees its row")
        on_primary(port, "the read after the write")
    eq(primary_ids("pipe_rwr"), [7], "rows of pipe_rwr on the primary")


@check("psycopg")
def pipeline_write_then_read():
    """autocommit, one pipeline (one Sync): INSERT first, then a read of
    that row (the batch starts with its write)."""
    create_tables("CREATE TABLE pipe_wr (id int PRIMARY KEY)")
    with router(autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("INSERT INTO pipe_wr VALUES (3)")
            after = conn.execute("SELECT count(*) FROM pipe_wr WHERE id = 3")
        eq(after.fetchone(), (1,), "the read after the INSERT sees its row")
    eq(primary_ids("pipe_wr"), [3], "rows of pipe_wr on the primary")


@check("psycopg")
def executemany_after_a_read_in_one_pipeline():
    """autocommit, one pipeline: a read, then cursor.executemany of 50
    INSERTs (no Sync in between: one batch that starts with a read)."""
    create_tables("CREATE TABLE pipe_many (id int PRIMARY KEY)")
    with router(autocommit=True) as conn:
        with conn.pipeline():
            conn.execute(WHERE)
            conn.cursor().executemany("INSERT INTO pipe_many VALUES (%s)", [(i,) for i in range(50)])
    eq(primary_ids("pipe_many"), list(range(50)), "rows of pipe_many on the primary")


# --------------------------------------------------------- asyncpg COPY ---


async def copy_fresh(table, records, **kwargs):
    conn = await asyncpg.connect(ROUTER_URL, command_timeout=30, **kwargs)
    try:
        return await conn.copy_records_to_table(table, records=records, columns=["id", "v"])
    finally:
        await conn.close(timeout=10)


@check("asyncpg")
def copy_records_to_table_on_a_fresh_connection():
    """asyncpg.connect(url), then at once copy_records_to_table('cp_fresh',
    records=[(i, 'a') ...] (3000), columns=['id', 'v']): the COPY FROM
    STDIN, sent after the introspection's Parse/Describe/Flush, must run on
    the primary (today: 25006 cannot execute COPY during recovery)."""
    create_tables("CREATE TABLE cp_fresh (id int, v text)")
    records = [(i, "a") for i in range(3000)]
    status = asyncio.run(copy_fresh("cp_fresh", records))
    eq(status, "COPY 3000", "copy_records_to_table status")
    eq(primary_ids("cp_fresh"), list(range(3000)), "rows of cp_fresh on the primary")


@check("asyncpg")
def copy_records_to_table_ten_fresh_connections():
    """Ten fresh connections at once, each copying 300 rows."""
    create_tables("CREATE TABLE cp_many (id int, v text)")

    async def all_of_them():
        return await asyncio.gather(
            *(copy_fresh("cp_many", [(c * 300 + i, f"c{c}") for i in range(300)]) for c in range(10)),
            return_exceptions=True,
        )

    results = asyncio.run(all_of_them())
    failed = [describe(r) for r in results if isinstance(r, BaseException)]
    if failed:
        raise AssertionError(f"{len(failed)}/10 copies failed; first: {failed[0]}")
    eq(primary_ids("cp_many"), list(range(3000)), "rows of cp_many on the primary")


@check("asyncpg")
def copy_records_to_table_after_a_read():
    """One connection: a read (a replica serves it), then
    copy_records_to_table of 3000 rows."""
    create_tables("CREATE TABLE cp_after (id int, v text)")

    async def run():
        conn = await asyncpg.connect(ROUTER_URL, command_timeout=30)
        try:
            port = await conn.fetchval(WHERE)
            print(f"    read reported port {port}")
            on_replica(port, "a read before any write")
            return await conn.copy_records_to_table(
                "cp_after", records=[(i, "b") for i in range(3000)], columns=["id", "v"]
            )
        finally:
            await conn.close(timeout=10)

    eq(asyncio.run(run()), "COPY 3000", "copy_records_to_table status")
    eq(primary_ids("cp_after"), list(range(3000)), "rows of cp_after on the primary")


# ---------------------------------------------------------------- main ---


def run_with_timeout(fn):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=CHECK_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{fn.__name__} still running after {CHECK_TIMEOUT}s (hung request?)") from None
    finally:
        pool.shutdown(wait=False)


def main():
    print(f"psycopg {psycopg.__version__}" + (f", asyncpg {asyncpg.__version__}" if GROUP == "asyncpg" else "")
          + f"; {len(CHECKS)} {GROUP} checks through {ROUTER_URL}", flush=True)
    failures = []
    for fn in CHECKS:
        print(f"--- {fn.__name__}: {' '.join(fn.__doc__.split())}", flush=True)
        started = time.monotonic()
        try:
            run_with_timeout(fn)
        except Exception as e:  # noqa: BLE001 - report everything
            failures.append(fn.__name__)
            print(f"FAIL {fn.__name__} ({time.monotonic() - started:.1f}s): {describe(e)}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {fn.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
    print(f"=== {GROUP}: {len(CHECKS) - len(failures)}/{len(CHECKS)} checks passed", flush=True)
    if failures:
        print(f"=== FAILED: {', '.join(failures)}", flush=True)
    sys.stdout.flush()
    # os._exit: do not wait for a check left hanging in its thread.
    os._exit(1 if failures else 0)


if __name__ == "__main__":
    main()
