//! A throw-away PostgreSQL cluster (primary + streaming replicas) for tests.
//!
//! Layout of the temp dir (`$TMPDIR/pgrouter-it-<pid>-<n>`):
//! `primary/`, `replica1/`, ... (data dirs), `primary.log`, `replica1.log`, ...
//! (server logs), `sockets/` (unix socket dir).
//!
//! Cleanup: a "guardian" shell process is spawned before anything else. It
//! blocks in `read` on a pipe whose write end only this process holds. When
//! the pipe closes — `Cluster` dropped, or the test process exiting for any
//! reason, including panics, `process::exit` and SIGKILL — the guardian stops
//! every node with `pg_ctl stop -m immediate` and removes the temp dir. It
//! lives in its own process group, so a terminal Ctrl-C does not kill it
//! before it has cleaned up. Set `PGROUTER_TEST_KEEP=1` to keep the temp dir
//! (servers are still stopped) for post-mortem debugging.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::HOST;

/// How long to wait for a server to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How many free-port attempts to make when a server fails to bind.
const PORT_ATTEMPTS: usize = 5;

/// Password of role `app` (SCRAM-SHA-256).
pub const APP_PASSWORD: &str = "secret";
/// Password of role `md5user` (stored as md5).
pub const MD5_PASSWORD: &str = "md5secret";

#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Always "127.0.0.1".
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Server log (`pg_ctl -l`).
    pub log_file: PathBuf,
}

impl NodeInfo {
    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Key/value connection string for this node.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        super::conn_string(&self.host, self.port, user, password, db)
    }

    /// Last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_file, n)
    }
}

pub struct Cluster {
    dir: PathBuf,
    primary: NodeInfo,
    replicas: Vec<NodeInfo>,
    guardian: Guardian,
}

impl Drop for Cluster {
    /// Closes the guardian pipe and waits for the guardian, i.e. for all
    /// servers to be stopped and the temp dir to be removed.
    fn drop(&mut self) {
        self.guardian.shutdown();
    }
}

impl Cluster {
    /// Starts a primary + `replicas` streaming replicas (initdb,
    /// pg_basebackup -R) in a fresh temp dir on free loopback ports.
    /// Blocking (std only). Panics with a helpful message (including the
    /// server log tail) on failure; whatever was started is cleaned up.
    pub fn start(replicas: usize) -> Cluster {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "pgrouter-it-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("removing stale {}: {e}", dir.display()));
        }
        std::fs::create_dir_all(dir.join("sockets"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // From here on the guardian cleans up, even if we panic below (the
        // local `guardian` is dropped while unwinding).
        let guardian = Guardian::spawn(&dir);
        chown_to_postgres(&dir);

        let mut primary = node_info(&dir, "primary");
        run_checked(
            pg_cmd("initdb", &dir)
                .arg("-D")
                .arg(&primary.data_dir)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions"]),
            "initdb",
            None,
        );
        write_primary_config(&dir, &primary.data_dir);
        chown_to_postgres(&dir);
        start_with_port_retry(&dir, &mut primary);
        create_roles(&primary);

        let mut replica_nodes = Vec::with_capacity(replicas);
        for i in 1..=replicas {
            let mut node = node_info(&dir, &format!("replica{i}"));
            run_checked(
                pg_cmd("pg_basebackup", &dir)
                    .args([
                        "-h",
                        HOST,
                        "-p",
                        &primary.port.to_string(),
                        "-U",
                        "postgres",
                    ])
                    .arg("-D")
                    .arg(&node.data_dir)
                    .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
                &format!("pg_basebackup for replica{i}"),
                Some(&primary),
            );
            start_with_port_retry(&dir, &mut node);
            replica_nodes.push(node);
        }

        if std::env::var_os("PGROUTER_TEST_VERBOSE").is_some() {
            eprintln!(
                "[cluster] started primary {} + {} replica(s) in {} ({:.1?})",
                primary.port,
                replicas,
                dir.display(),
                started.elapsed()
            );
        }
        Cluster {
            dir,
            primary,
            replicas: replica_nodes,
            guardian,
        }
    }

    /// One cluster per test binary with 2 replicas, started lazily on first
    /// use. Never dropped: the guardian cleans up when the process exits.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(2))
    }

    pub fn primary(&self) -> &NodeInfo {
        &self.primary
    }

    pub fn replicas(&self) -> &[NodeInfo] {
        &self.replicas
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// tokio-postgres client connected as superuser `postgres` (trust) to
    /// `node`, database `db` (`""` means `postgres`). Spawns the connection
    /// task on the current runtime.
    pub async fn superuser(&self, node: &NodeInfo, db: &str) -> tokio_postgres::Client {
        let db = if db.is_empty() { "postgres" } else { db };
        super::connect_str(&node.conn_str("postgres", "", db)).await
    }

    /// Direct connection to a node as any user (no pgrouter in between).
    pub async fn try_connect(
        &self,
        node: &NodeInfo,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        super::try_connect_str(&node.conn_str(user, password, db)).await
    }

    /// Creates a fresh database (unique name `<prefix>_<counter>_<pid>`,
    /// prefix lowercased/sanitized) on the primary, owned by role `app`, with ALL privileges (on the
    /// database, its `public` schema and — via default privileges — on
    /// tables/sequences created by any of the three roles) for `app`,
    /// `md5user` and `trustuser`; returns its name. Waits until the replicas
    /// have replayed it, so it can be used on them right away.
    pub async fn create_database(&self, prefix: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let mut clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
            clean.insert_str(0, "db_");
        }
        let name = format!(
            "{clean}_{}_{}",
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::process::id()
        );

        let admin = self.superuser(&self.primary, "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER app"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        admin
            .batch_execute(&format!(
                "GRANT ALL PRIVILEGES ON DATABASE \"{name}\" TO app, md5user, trustuser"
            ))
            .await
            .unwrap_or_else(|e| panic!("GRANT on {name}: {e}"));
        let db = self.superuser(&self.primary, &name).await;
        db.batch_execute(
            "GRANT ALL ON SCHEMA public TO app, md5user, trustuser;
             ALTER DEFAULT PRIVILEGES FOR ROLE app, md5user, trustuser IN SCHEMA public
                 GRANT ALL ON TABLES TO app, md5user, trustuser;
             ALTER DEFAULT PRIVILEGES FOR ROLE app, md5user, trustuser IN SCHEMA public
                 GRANT ALL ON SEQUENCES TO app, md5user, trustuser;",
        )
        .await
        .unwrap_or_else(|e| panic!("granting schema privileges in {name}: {e}"));
        self.wait_replicas_caught_up().await;
        name
    }

    /// Polls until every replica's `pg_last_wal_replay_lsn()` >= the
    /// primary's `pg_current_wal_lsn()`, deadline 30 s.
    ///
    /// The primary runs with `synchronous_commit=off`, so recent commits may
    /// not have been written yet; this first commits a transaction with
    /// `synchronous_commit=on` (which flushes all WAL inserted before it)
    /// so the target LSN covers everything committed before the call.
    pub async fn wait_replicas_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let primary = self.superuser(&self.primary, "postgres").await;
        primary
            .batch_execute("SET synchronous_commit = on; SELECT txid_current();")
            .await
            .unwrap_or_else(|e| panic!("flushing WAL on primary: {e}"));
        let target: String = primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap_or_else(|e| panic!("pg_current_wal_lsn(): {e}"))
            .get(0);
        for replica in &self.replicas {
            let client = self.superuser(replica, "postgres").await;
            loop {
                let row = client
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn, \
                                pg_last_wal_replay_lsn()::text",
                        &[&target],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("polling replica {}: {e}", replica.port));
                if row.get::<_, Option<bool>>(0) == Some(true) {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "replica {} did not catch up within 30s: replay lsn {:?}, primary {}\n\
                         --- replica log tail ---\n{}",
                        replica.port,
                        row.get::<_, Option<String>>(1),
                        target,
                        replica.log_tail(40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops a node (`pg_ctl stop -m fast`). Only for private clusters from
    /// [`Cluster::start`] — never stop nodes of [`Cluster::shared`].
    pub fn stop_node(&self, node: &NodeInfo) {
        run_checked(
            pg_cmd("pg_ctl", &self.dir)
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
            Some(node),
        );
    }

    /// Stops a node at once, as a crash would (`pg_ctl stop -m immediate`).
    /// Only for private clusters.
    pub fn kill_node(&self, node: &NodeInfo) {
        run_checked(
            pg_cmd("pg_ctl", &self.dir)
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-m", "immediate", "-w", "-t", "60", "stop"]),
            "pg_ctl stop -m immediate",
            Some(node),
        );
    }

    /// Promotes a replica to primary (`pg_ctl promote`, waiting for it).
    /// Only for private clusters.
    pub fn promote_node(&self, node: &NodeInfo) {
        run_checked(
            pg_cmd("pg_ctl", &self.dir)
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
            Some(node),
        );
    }

    /// (Re)starts a node stopped with [`Cluster::stop_node`] on its port and
    /// waits until it accepts connections.
    pub fn start_node(&self, node: &NodeInfo) {
        if let Err(msg) = try_start_node(&self.dir, node) {
            panic!("{msg}");
        }
    }
}

/// Closes the pipe the guardian is reading on drop; see module docs.
struct Guardian {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    fn spawn(dir: &Path) -> Guardian {
        let d = sh_quote(&dir.to_string_lossy());
        let pg_ctl = sh_quote(&bindir().join("pg_ctl").to_string_lossy());
        let as_pg = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let keep = std::env::var_os("PGROUTER_TEST_KEEP").is_some();
        let script = format!(
            "trap '' HUP INT\n\
             read _ignored\n\
             cd /\n\
             for d in {d}/replica* {d}/primary; do\n\
             \x20 if [ -f \"$d/postmaster.pid\" ]; then\n\
             \x20   {as_pg}{pg_ctl} -D \"$d\" -m immediate -w -t 30 stop >/dev/null 2>&1\n\
             \x20   if [ -f \"$d/postmaster.pid\" ]; then kill -9 \"$(head -n 1 \"$d/postmaster.pid\")\" 2>/dev/null; fi\n\
             \x20 fi\n\
             done\n\
             {rm}\n",
            rm = if keep {
                ":".to_string()
            } else {
                format!("rm -rf {d}")
            },
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: not killed by a terminal ^C aimed at the
            // test process before it has cleaned up.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning cluster guardian: {e}"));
        let stdin = child.stdin.take();
        Guardian {
            child: Some(child),
            stdin,
        }
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn node_info(dir: &Path, name: &str) -> NodeInfo {
    NodeInfo {
        host: HOST.to_string(),
        port: 0,
        data_dir: dir.join(name),
        log_file: dir.join(format!("{name}.log")),
    }
}

fn write_primary_config(dir: &Path, data_dir: &Path) {
    let sockets = dir.join("sockets");
    // The port is passed with `pg_ctl -o "-p PORT"` per node, so replicas can
    // share this file (they copy it via pg_basebackup).
    // The load benchmark's direct runs need one connection per client.
    let max_connections = std::env::var("PGROUTER_PG_MAX_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(300);
    let conf = format!(
        "\n# --- pgrouter integration tests ---\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\n\
         max_connections = {max_connections}\n\
         shared_buffers = 32MB\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         wal_keep_size = 256MB\n\
         hot_standby = on\n\
         logging_collector = off\n",
        sockets.display()
    );
    let conf_path = data_dir.join("postgresql.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", conf_path.display()));
    f.write_all(conf.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", conf_path.display()));

    let hba = "local all all trust\n\
               host all postgres 127.0.0.1/32 trust\n\
               host replication all 127.0.0.1/32 trust\n\
               host all trustuser 127.0.0.1/32 trust\n\
               host all md5user 127.0.0.1/32 md5\n\
               host all all 127.0.0.1/32 scram-sha-256\n";
    let hba_path = data_dir.join("pg_hba.conf");
    std::fs::write(&hba_path, hba)
        .unwrap_or_else(|e| panic!("writing {}: {e}", hba_path.display()));
}

fn create_roles(primary: &NodeInfo) {
    let mut cmd = Command::new(bindir().join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", HOST, "-p", &primary.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"]);
    for sql in [
        format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
        format!(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '{MD5_PASSWORD}'"
        ),
        "CREATE ROLE trustuser LOGIN".to_string(),
        "CREATE DATABASE app OWNER app".to_string(),
    ] {
        cmd.arg("-c").arg(sql);
    }
    clean_env(&mut cmd);
    run_checked(&mut cmd, "creating roles with psql", Some(primary));
}

/// Picks a free port and starts the node, retrying with another port if the
/// server could not bind.
fn start_with_port_retry(dir: &Path, node: &mut NodeInfo) {
    let mut last_err = String::new();
    for _ in 0..PORT_ATTEMPTS {
        node.port = free_port();
        // `pg_ctl -l` appends: only look at what this attempt logged.
        let log_start = std::fs::metadata(&node.log_file)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        match try_start_node(dir, node) {
            Ok(()) => return,
            Err(msg) => {
                let log = std::fs::read(&node.log_file).unwrap_or_default();
                let log = String::from_utf8_lossy(log.get(log_start..).unwrap_or_default());
                let bind_error = log.contains("could not bind")
                    || log.contains("Address already in use")
                    || log.contains("could not create any TCP/IP sockets");
                if !bind_error {
                    panic!("{msg}");
                }
                last_err = msg;
            }
        }
    }
    panic!("giving up after {PORT_ATTEMPTS} port attempts: {last_err}");
}

fn try_start_node(dir: &Path, node: &NodeInfo) -> Result<(), String> {
    let out = run(
        pg_cmd("pg_ctl", dir)
            .arg("-D")
            .arg(&node.data_dir)
            .arg("-l")
            .arg(&node.log_file)
            .args(["-o", &format!("-p {}", node.port)])
            .args(["-w", "-t", "60", "start"]),
        "pg_ctl start",
    );
    if !out.status.success() {
        return Err(format!(
            "pg_ctl start of {} on port {} failed ({}):\n{}{}\n--- {} (tail) ---\n{}",
            node.data_dir.display(),
            node.port,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node.log_file.display(),
            node.log_tail(40)
        ));
    }
    wait_ready(node)
}

/// Polls `pg_isready` until the node accepts connections.
fn wait_ready(node: &NodeInfo) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let mut cmd = Command::new(bindir().join("pg_isready"));
        cmd.args(["-q", "-h", HOST, "-p", &node.port.to_string(), "-t", "2"]);
        clean_env(&mut cmd);
        let ok = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "server {} on port {} not ready after {READY_DEADLINE:?}\n--- {} (tail) ---\n{}",
                node.data_dir.display(),
                node.port,
                node.log_file.display(),
                node.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((HOST, 0)).expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Directory of the PostgreSQL server binaries: `$PGROUTER_PG_BINDIR`, else
/// `pg_config --bindir`, else `/usr/lib/postgresql/15/bin`.
pub fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("PGROUTER_PG_BINDIR") {
            return PathBuf::from(d);
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !s.is_empty() && Path::new(&s).join("initdb").exists() {
                return PathBuf::from(s);
            }
        }
        PathBuf::from("/usr/lib/postgresql/15/bin")
    })
}

/// Whether the effective uid is 0 (server binaries then run as `postgres`).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// Command for a server-side binary; wrapped in `runuser -u postgres --`
/// when running as root. Runs in `cwd` (which `postgres` can access).
fn pg_cmd(bin: &str, cwd: &Path) -> Command {
    let path = bindir().join(bin);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    cmd.current_dir(cwd).stdin(Stdio::null());
    clean_env(&mut cmd);
    cmd
}

/// libpq variables that could change where or how a client connects.
pub const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGAPPNAME",
    "PGTZ",
    "PGDATESTYLE",
    "PGCLIENTENCODING",
];

/// Removes libpq environment variables that could redirect our commands.
pub fn clean_env(cmd: &mut Command) {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
}

fn chown_to_postgres(dir: &Path) {
    if is_root() {
        run_checked(
            Command::new("chown").args(["-R", "postgres:"]).arg(dir),
            "chown -R postgres",
            None,
        );
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"))
}

fn run_checked(cmd: &mut Command, what: &str, log_of: Option<&NodeInfo>) -> Output {
    let out = run(cmd, what);
    if !out.status.success() {
        let log = log_of
            .map(|n| {
                format!(
                    "\n--- {} (tail) ---\n{}",
                    n.log_file.display(),
                    n.log_tail(40)
                )
            })
            .unwrap_or_default();
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}--- stderr ---\n{}{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    out
}

fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
