// Routing of JDBC batches through pgrouter, with the PostgreSQL JDBC driver
// (pgjdbc).
//
// Usage: java -cp DIR:/usr/share/java/postgresql.jar BatchRouting \
//            ROUTER_JDBC_URL USER PASSWORD PRIMARY_JDBC_URL
//
// ROUTER_JDBC_URL is pgrouter (transaction mode, routing on: a primary and
// streaming replicas behind it), USER/PASSWORD its user; PRIMARY_JDBC_URL a
// direct connection to the primary as a superuser, with its user in the URL
// (it creates the tables, grants them to USER, waits until the replicas have
// replayed them, and afterwards checks that the rows written through
// pgrouter are on the primary).
//
// pgjdbc sends a multi-statement string, and a Statement or
// PreparedStatement batch, as one Parse/Bind/Execute per statement and a
// single Sync: one batch, one implicit transaction. A batch with a write in
// it must run on the primary, wherever its first statement would go alone:
// no "cannot execute INSERT in a read-only transaction" (SQLSTATE 25006).
//
// Every check runs; each failure is printed as "FAIL <check>: <error>", and
// the exit status is 1 if any check failed (2 for bad arguments).
//
// Run by tests/integration/request_drivers.rs, which compiles this file
// with javac into a temporary directory.

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class BatchRouting {
    static String routerUrl;
    static String user;
    static String password;
    static String primaryUrl;

    interface Check {
        void run() throws Exception;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println(
                    "usage: BatchRouting ROUTER_JDBC_URL USER PASSWORD PRIMARY_JDBC_URL");
            System.exit(2);
        }
        routerUrl = args[0];
        user = args[1];
        password = args[2];
        primaryUrl = args[3];
        Class.forName("org.postgresql.Driver");
        System.out.println("pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION
                + ", Java " + System.getProperty("java.version") + "; through " + routerUrl);

        String[] names = {
            "multi_statement_read_then_write",
            "multi_statement_read_write_read",
            "statement_batch_read_then_writes",
            "prepared_insert_batch_after_a_read",
            "transaction_read_then_write",
        };
        Check[] checks = {
            BatchRouting::multiStatementReadThenWrite,
            BatchRouting::multiStatementReadWriteRead,
            BatchRouting::statementBatchReadThenWrites,
            BatchRouting::preparedInsertBatchAfterARead,
            BatchRouting::transactionReadThenWrite,
        };
        List<String> failed = new ArrayList<>();
        for (int i = 0; i < checks.length; i++) {
            long started = System.nanoTime();
            String took;
            try {
                checks[i].run();
                took = String.format("%.1fs", (System.nanoTime() - started) / 1e9);
                System.out.println("ok   " + names[i] + " (" + took + ")");
            } catch (Throwable e) {
                took = String.format("%.1fs", (System.nanoTime() - started) / 1e9);
                failed.add(names[i]);
                System.out.println("FAIL " + names[i] + " (" + took + "): " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.flush();
        }
        System.out.println("=== pgjdbc: " + (checks.length - failed.size()) + "/" + checks.length
                + " checks passed");
        if (!failed.isEmpty()) {
            System.out.println("=== FAILED: " + String.join(", ", failed));
            System.out.flush();
            System.exit(1);
        }
    }

    /** An exception with its SQLSTATE (and the batch's cause). */
    static String describe(Throwable e) {
        StringBuilder out = new StringBuilder(e.getClass().getSimpleName());
        if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
            out.append(" [SQLSTATE ").append(((SQLException) e).getSQLState()).append("]");
        }
        out.append(": ").append(String.valueOf(e.getMessage()).trim());
        if (e instanceof SQLException && ((SQLException) e).getNextException() != null) {
            out.append(" / next: ").append(describe(((SQLException) e).getNextException()));
        }
        return out.toString();
    }

    static Connection router() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("connectTimeout", "30");
        props.setProperty("socketTimeout", "60");
        // Unnamed statements only (no server-side prepare after 5 runs):
        // what is checked is how a batch is routed.
        props.setProperty("prepareThreshold", "0");
        // Startup parameters rather than `SET extra_float_digits = 3` and
        // `SET application_name` statements after login: a SET through the
        // extended protocol pins the client to the primary's connection for
        // good, and nothing would be routed any more.
        props.setProperty("assumeMinServerVersion", "10");
        return DriverManager.getConnection(routerUrl, props);
    }

    static Connection primary() throws SQLException {
        Properties props = new Properties();
        props.setProperty("connectTimeout", "30");
        props.setProperty("socketTimeout", "60");
        return DriverManager.getConnection(primaryUrl, props);
    }

    /**
     * Creates the table on the primary, grants it to the router's user and
     * waits (30 s) until every replica has replayed it, so that a write sent
     * to a replica fails with 25006 (read-only), not 42P01.
     */
    static void createTable(String table) throws Exception {
        try (Connection conn = primary(); Statement st = conn.createStatement()) {
            st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY)");
            st.execute("GRANT ALL ON " + table + " TO \"" + user + "\"");
            st.execute("SET synchronous_commit = on");
            st.execute("SELECT txid_current()"); // flushes the WAL before it
            String target;
            try (ResultSet rs = st.executeQuery("SELECT pg_current_wal_insert_lsn()::text")) {
                rs.next();
                target = rs.getString(1);
            }
            long deadline = System.nanoTime() + 30_000_000_000L;
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT count(*), count(*) FILTER (WHERE replay_lsn >= ?::pg_lsn)"
                            + " FROM pg_stat_replication")) {
                ps.setString(1, target);
                while (true) {
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        long total = rs.getLong(1);
                        long done = rs.getLong(2);
                        if (done == total) { // none: no replica to wait for
                            return;
                        }
                        if (System.nanoTime() > deadline) {
                            throw new AssertionError("replicas did not replay " + target
                                    + " in 30 s: " + done + "/" + total);
                        }
                    }
                    Thread.sleep(20);
                }
            }
        }
    }

    /** The ids in `table` on the primary, in order. */
    static List<Integer> primaryIds(String table) throws SQLException {
        List<Integer> ids = new ArrayList<>();
        try (Connection conn = primary();
                Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT id FROM " + table + " ORDER BY id")) {
            while (rs.next()) {
                ids.add(rs.getInt(1));
            }
        }
        return ids;
    }

    static int primaryPort() throws SQLException {
        try (Connection conn = primary();
                Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT inet_server_port()")) {
            rs.next();
            return rs.getInt(1);
        }
    }

    static List<Integer> range(int from, int to) {
        List<Integer> out = new ArrayList<>();
        for (int i = from; i < to; i++) {
            out.add(i);
        }
        return out;
    }

    static void expectIds(String table, List<Integer> expected) throws SQLException {
        List<Integer> ids = primaryIds(table);
        if (!ids.equals(expected)) {
            throw new AssertionError("rows of " + table + " on the primary: expected " + expected
                    + ", got " + ids);
        }
    }

    static void expectEq(Object actual, Object expected, String what) {
        if (!expected.equals(actual)) {
            throw new AssertionError(what + ": expected " + expected + ", got " + actual);
        }
    }

    /**
     * The port that served the current row (its first column is
     * inet_server_port(); no volatile function such as pg_is_in_recovery(),
     * which pgrouter sends to the primary: any port but the primary's is a
     * replica's).
     */
    static String where(ResultSet rs) throws SQLException {
        return "port " + rs.getInt(1);
    }

    static void expectPrimary(ResultSet rs, String what) throws SQLException {
        int port = primaryPort();
        if (rs.getInt(1) != port) {
            throw new AssertionError(what + ": expected the primary (port " + port
                    + "), got a replica's " + where(rs));
        }
    }

    static void expectReplica(ResultSet rs, String what) throws SQLException {
        if (rs.getInt(1) == primaryPort()) {
            throw new AssertionError(what + ": expected a replica, got the primary's "
                    + where(rs));
        }
    }

    // ------------------------------------------------------------ checks ---

    /**
     * stmt.execute("SELECT inet_server_port(), ...; INSERT INTO jdbc_multi
     * VALUES (1)"): pgjdbc splits it into two Parse/Bind/Execute and one
     * Sync, a batch that starts with a read.
     */
    static void multiStatementReadThenWrite() throws Exception {
        createTable("jdbc_multi");
        try (Connection conn = router(); Statement st = conn.createStatement()) {
            boolean isResultSet = st.execute(
                    "SELECT inet_server_port(); INSERT INTO jdbc_multi VALUES (1)");
            expectEq(isResultSet, true, "first result is the SELECT's");
            try (ResultSet rs = st.getResultSet()) {
                rs.next();
                System.out.println("    read reported " + where(rs));
                // One Sync: one implicit transaction, on the primary.
                expectPrimary(rs, "the read in the write's implicit transaction");
            }
            expectEq(st.getMoreResults(), false, "second result is an update count");
            expectEq(st.getUpdateCount(), 1, "INSERT update count");
        }
        expectIds("jdbc_multi", range(1, 2));
    }

    /** A read, an INSERT and a read of the inserted row in one string. */
    static void multiStatementReadWriteRead() throws Exception {
        createTable("jdbc_rwr");
        try (Connection conn = router(); Statement st = conn.createStatement()) {
            st.execute("SELECT inet_server_port(); INSERT INTO jdbc_rwr VALUES (5);"
                    + " SELECT count(*) FROM jdbc_rwr WHERE id = 5");
            expectEq(st.getMoreResults(), false, "second result is an update count");
            expectEq(st.getUpdateCount(), 1, "INSERT update count");
            expectEq(st.getMoreResults(), true, "third result is the count");
            try (ResultSet rs = st.getResultSet()) {
                rs.next();
                expectEq(rs.getLong(1), 1L, "the read after the INSERT, in its implicit"
                        + " transaction, sees its row");
            }
        }
        expectIds("jdbc_rwr", range(5, 6));
    }

    /**
     * Statement.executeBatch of `SELECT inet_server_port()` followed by ten
     * INSERTs: one Parse/Bind/Execute each and one Sync, a batch that starts
     * with a read. pgjdbc (42.5) accepts the SELECT in a batch: it reads its
     * rows and throws them away (its count in the result is 0).
     */
    static void statementBatchReadThenWrites() throws Exception {
        createTable("jdbc_batch");
        try (Connection conn = router(); Statement st = conn.createStatement()) {
            st.addBatch("SELECT inet_server_port()");
            for (int i = 0; i < 10; i++) {
                st.addBatch("INSERT INTO jdbc_batch VALUES (" + i + ")");
            }
            int[] counts = st.executeBatch();
            System.out.println("    executeBatch returned " + java.util.Arrays.toString(counts));
            expectEq(counts.length, 11, "executeBatch results");
            for (int i = 1; i < counts.length; i++) {
                expectEq(counts[i], 1, "update count of INSERT " + (i - 1));
            }
        } catch (BatchUpdateException e) {
            throw e.getNextException() != null ? e.getNextException() : e;
        }
        expectIds("jdbc_batch", range(0, 10));
    }

    /**
     * A read on the connection (a replica serves it), then a
     * PreparedStatement batch of 100 INSERTs.
     */
    static void preparedInsertBatchAfterARead() throws Exception {
        createTable("jdbc_prepared");
        try (Connection conn = router()) {
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT inet_server_port()")) {
                rs.next();
                System.out.println("    read reported " + where(rs));
                expectReplica(rs, "a read before any write");
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO jdbc_prepared VALUES (?)")) {
                for (int i = 0; i < 100; i++) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expectEq(counts.length, 100, "executeBatch results");
            } catch (BatchUpdateException e) {
                throw e.getNextException() != null ? e.getNextException() : e;
            }
        }
        expectIds("jdbc_prepared", range(0, 100));
    }

    /**
     * autocommit off: pgjdbc sends BEGIN in the same batch as the first
     * statement, a read; then an INSERT; commit.
     */
    static void transactionReadThenWrite() throws Exception {
        createTable("jdbc_tx");
        try (Connection conn = router()) {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT inet_server_port()")) {
                rs.next();
                System.out.println("    read reported " + where(rs));
                expectPrimary(rs, "the read of a transaction that writes");
            }
            try (Statement st = conn.createStatement()) {
                expectEq(st.executeUpdate("INSERT INTO jdbc_tx VALUES (1)"), 1, "INSERT");
            }
            conn.commit();
        }
        expectIds("jdbc_tx", range(1, 2));
    }
}
