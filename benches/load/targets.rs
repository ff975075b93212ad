//! What the benchmark drives: PostgreSQL directly, pgrouter (release
//! build) in a few set-ups, and PgBouncer when it is installed.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Target {
    pub name: String,
    pub url: String,
    /// The pooler's process, for its CPU time and memory.
    pub pid: Option<u32>,
    _keep: Keep,
}

#[allow(dead_code)]
enum Keep {
    Nothing,
    Router(Pgrouter),
    Bouncer(Bouncer),
}

pub fn direct(cluster: &Cluster) -> Target {
    let p = cluster.primary();
    Target {
        name: "direct".into(),
        url: format!("postgres://app:{APP_PASSWORD}@{}:{}/app", p.host, p.port),
        pid: None,
        _keep: Keep::Nothing,
    }
}

/// pgrouter in transaction mode with a pool of `pool`; `routing` adds the
/// replicas and read-your-writes mode, or `None` for the primary alone.
pub fn pgrouter(cluster: &Cluster, name: &str, pool: usize, routing: Option<&str>) -> Target {
    pgrouter_binary(cluster, name, pool, routing, env!("CARGO_BIN_EXE_pgrouter"))
}

/// `pgrouter` with `workers` runtime threads (0: work-stealing, one per
/// core) instead of the default single thread.
pub fn pgrouter_workers(cluster: &Cluster, name: &str, pool: usize, workers: usize) -> Target {
    let config = base_config(cluster, pool)
        .server(&format!("workers = {workers}"))
        .routing("read_write_split = false");
    start(name, env!("CARGO_BIN_EXE_pgrouter"), &config.build())
}

/// Transaction mode, a pool of `pool` opened before the run.
fn base_config(cluster: &Cluster, pool: usize) -> RouterConfig {
    RouterConfig::new(cluster.primary(), "app")
        .server("max_client_connections = 10000")
        .pool(&format!("max_connections = {pool}"))
        .pool(&format!("min_connections = {pool}"))
        .pool("checkout_timeout = \"60s\"")
}

fn start(name: &str, binary: &str, config: &str) -> Target {
    std::env::set_var("PGROUTER_TEST_LOG", "warn,pgrouter::app=info");
    let router = Pgrouter::try_start_binary(binary, config)
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    Target {
        name: name.into(),
        url: router.url("app", APP_PASSWORD, "app"),
        pid: Some(router.pid()),
        _keep: Keep::Router(router),
    }
}

/// `pgrouter` with the binary at `binary` (PGROUTER_BASELINE_BIN).
pub fn pgrouter_binary(
    cluster: &Cluster,
    name: &str,
    pool: usize,
    routing: Option<&str>,
    binary: &str,
) -> Target {
    let config = base_config(cluster, pool);
    let config = match routing {
        Some(ryw) => config
            .replicas(cluster.replicas())
            .routing(&format!("read_your_writes = \"{ryw}\"")),
        None => config.routing("read_write_split = false"),
    };
    start(name, binary, &config.build())
}

pub struct Bouncer {
    child: Child,
    dir: PathBuf,
    /// runuser's child, which killing runuser leaves running.
    pid: Option<u32>,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PgBouncer with the same pool in transaction mode, if installed.
pub fn pgbouncer(cluster: &Cluster, pool: usize) -> Option<Target> {
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = crate::common::cluster::free_port();
    let dir = std::env::temp_dir().join(format!("pgrouter-bench-bouncer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let p = cluster.primary();
    let ini = format!(
        "[databases]\napp = host={} port={} dbname=app\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         auth_type = plain\nauth_file = {dir}/users.txt\npool_mode = transaction\ndefault_pool_size = {pool}\n\
         min_pool_size = {pool}\nmax_client_conn = 10000\nlogfile = {dir}/pgbouncer.log\nunix_socket_dir =\n",
        p.host,
        p.port,
        dir = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).ok()?;
    std::fs::write(
        dir.join("users.txt"),
        format!("\"app\" \"{APP_PASSWORD}\"\n"),
    )
    .ok()?;
    // PgBouncer refuses to run as root.
    let _ = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(&dir)
        .status();
    let mut command = if crate::common::cluster::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", binary]);
        c
    } else {
        Command::new(binary)
    };
    let child = command
        .arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("postgres://app:{APP_PASSWORD}@127.0.0.1:{port}/app");
    // Wait until it accepts connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = bouncer_pid(&dir);
    Some(Target {
        name: "pgbouncer".into(),
        url,
        pid,
        _keep: Keep::Bouncer(Bouncer { child, dir, pid }),
    })
}

/// runuser forks: the pooler is runuser's child.
fn bouncer_pid(dir: &std::path::Path) -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-f", &format!("{}/pgbouncer.ini", dir.display())])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "pgbouncer")
                .unwrap_or(false)
        })
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
