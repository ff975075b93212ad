//! A throw-away primary and streaming replicas in a temporary directory.
//!
//! Layout: `DIR/primary`, `DIR/replica1`, ... (data directories), `DIR/*.log`
//! (server logs), and the servers' unix sockets in `DIR` itself. DIR is mode
//! 0700 and owned by whoever runs the servers, so the superuser `postgres`
//! may log in without a password through those sockets only; over TCP
//! (127.0.0.1) every role needs its password.
//!
//! Cleanup belongs to a guardian: a `sh` process, started before anything
//! else, that blocks reading a pipe only this process writes to. When the
//! pipe closes (the `Cluster` dropped, an error or a panic on the way up,
//! or this process killed, even with SIGKILL) it stops every server and
//! removes DIR. It has its own process group, so the Ctrl-C that stops
//! pgrouter does not stop it before it has cleaned up.

use super::binaries::Binaries;
use super::DemoError;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Roles and database, as in docker-compose.yml (deploy/postgres/primary-init.sh).
pub const ROLES: [(&str, &str); 2] = [("app", "app"), ("admin", "admin")];
pub const DATABASE: &str = "app";

const HOST: &str = "127.0.0.1";
/// Tries at a free port, for a server that finds its port taken after all.
const PORT_ATTEMPTS: usize = 5;
const STREAMING_DEADLINE: Duration = Duration::from_secs(60);

/// libpq variables that would redirect the commands we run.
const LIBPQ_ENV: &[&str] = &[
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
];

pub struct Node {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    bin: Binaries,
    owner: Option<Owner>,
    guardian: Guardian,
}

/// The account the servers run as when we are root (PostgreSQL refuses
/// to run as root).
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Cluster {
    /// A primary and `replicas` replicas streaming from it, with the demo's
    /// roles and database, on free loopback ports that are not `avoid_port`.
    /// Blocking. On an error, whatever was started is stopped and removed.
    pub fn start(bin: Binaries, replicas: usize, avoid_port: u16) -> Result<Cluster, DemoError> {
        let owner = server_owner()?;
        let dir = create_dir(owner)?;
        let guardian = Guardian::spawn(&dir, &bin, owner)?;
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            bin,
            owner,
            guardian,
        };

        let mut primary = cluster.node("primary");
        cluster.run(
            cluster
                .pg("initdb")
                .arg("-D")
                .arg(&primary.data_dir)
                .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"]),
            "initdb",
            None,
        )?;
        cluster.configure_primary(&primary)?;
        cluster.start_node(&mut primary, avoid_port)?;
        cluster.create_roles(&primary)?;
        let primary_port = primary.port;
        cluster.nodes.push(primary);

        for i in 1..=replicas {
            let mut replica = cluster.node(&format!("replica{i}"));
            let conninfo = format!(
                "host={} port={primary_port} user=postgres application_name={}",
                conninfo_quote(&cluster.dir.to_string_lossy()),
                replica.name
            );
            cluster.run(
                cluster
                    .pg("pg_basebackup")
                    .arg("-d")
                    .arg(conninfo)
                    .arg("-D")
                    .arg(&replica.data_dir)
                    .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
                &format!("pg_basebackup for {}", replica.name),
                cluster.nodes.first(),
            )?;
            cluster.start_node(&mut replica, avoid_port)?;
            cluster.nodes.push(replica);
        }
        cluster.wait_streaming(replicas)?;
        Ok(cluster)
    }

    /// Stops the servers and removes the directory, waiting until done
    /// (dropping the cluster does the same).
    pub fn stop(&mut self) {
        self.guardian.finish();
        // The guardian, running as the servers' owner, cannot remove the
        // directory itself from a parent only root may write to (a TMPDIR
        // other than /tmp): what it leaves, we remove.
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the demo's directory");
            }
            _ => {}
        }
    }

    fn node(&self, name: &str) -> Node {
        Node {
            name: name.to_owned(),
            port: 0,
            data_dir: self.dir.join(name),
            log: self.dir.join(format!("{name}.log")),
        }
    }

    /// A server program, run as the servers' owner, in DIR, with no libpq
    /// variable from our environment.
    fn pg(&self, program: &str) -> Command {
        self.command(self.bin.program(program))
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        if let Some(owner) = self.owner {
            // root's HOME is not readable by the servers' owner.
            cmd.uid(owner.uid).gid(owner.gid).env("HOME", &self.dir);
        }
        cmd
    }

    fn configure_primary(&self, primary: &Node) -> Result<(), DemoError> {
        // The replicas get these files with pg_basebackup; each server's
        // port is given on its command line.
        let settings = format!(
            "\n# pgrouter demo\n\
             listen_addresses = '{HOST}'\n\
             unix_socket_directories = '{}'\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = 32MB\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             hot_standby = on\n\
             # Thrown away at exit: durability buys nothing here.\n\
             fsync = off\n",
            self.dir.to_string_lossy().replace('\'', "''")
        );
        let conf = primary.data_dir.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .map_err(|e| DemoError::io(format!("writing {}", conf.display()), e))?;
        let hba = "local all all trust\n\
                   local replication all trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n\
                   host all all ::1/128 scram-sha-256\n";
        let hba_path = primary.data_dir.join("pg_hba.conf");
        std::fs::write(&hba_path, hba)
            .map_err(|e| DemoError::io(format!("writing {}", hba_path.display()), e))
    }

    fn create_roles(&self, primary: &Node) -> Result<(), DemoError> {
        let mut cmd = self.psql(primary);
        cmd.args(["-q", "-v", "ON_ERROR_STOP=1"]);
        for (role, password) in ROLES {
            cmd.arg("-c")
                .arg(format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
        }
        cmd.arg("-c")
            .arg(format!("CREATE DATABASE {DATABASE} OWNER {}", ROLES[0].0));
        self.run(
            &mut cmd,
            "creating the demo's roles and database",
            Some(primary),
        )
        .map(drop)
    }

    /// psql as the superuser, through the unix socket in DIR.
    fn psql(&self, node: &Node) -> Command {
        let mut cmd = self.command(self.bin.psql.clone());
        cmd.args(["-X", "-h"]).arg(&self.dir).args([
            "-p",
            &node.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
        cmd
    }

    /// Starts a node on a free port, trying another port when the one
    /// picked was taken in the meantime.
    fn start_node(&self, node: &mut Node, avoid_port: u16) -> Result<(), DemoError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            node.port = free_port(avoid_port)?;
            // pg_ctl -l appends: look only at what this attempt logged.
            let log_start = std::fs::metadata(&node.log).map_or(0, |m| m.len());
            let result = self.run(
                self.pg("pg_ctl")
                    .arg("-D")
                    .arg(&node.data_dir)
                    .arg("-l")
                    .arg(&node.log)
                    .args(["-o", &format!("-p {}", node.port)])
                    .args(["-w", "-t", "60", "start"]),
                &format!("starting {}", node.name),
                Some(node),
            );
            match result {
                Ok(_) => return Ok(()),
                Err(error) if port_was_taken(&node.log, log_start) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| DemoError::Setup("no free port".into())))
    }

    /// Waits until the primary reports every replica streaming.
    fn wait_streaming(&self, replicas: usize) -> Result<(), DemoError> {
        let Some(primary) = self.nodes.first() else {
            return Ok(());
        };
        let deadline = Instant::now() + STREAMING_DEADLINE;
        loop {
            let out = self.run(
                self.psql(primary).args([
                    "-At",
                    "-c",
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                ]),
                "asking the primary about its replicas",
                Some(primary),
            )?;
            if String::from_utf8_lossy(&out.stdout).trim() == replicas.to_string() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.nodes.iter().skip(1).map(log_tail).collect();
                return Err(DemoError::Setup(format!(
                    "the replicas were not streaming after {STREAMING_DEADLINE:?}\n{}",
                    logs.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command to its end; a failure carries its output and the tail
    /// of `log_of`'s server log.
    fn run(
        &self,
        cmd: &mut Command,
        what: &str,
        log_of: Option<&Node>,
    ) -> Result<Output, DemoError> {
        let out = cmd
            .output()
            .map_err(|e| DemoError::io(format!("{what}: running {cmd:?}"), e))?;
        if out.status.success() {
            return Ok(out);
        }
        Err(DemoError::Setup(format!(
            "{what} failed ({}):\n{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_of.map(log_tail).unwrap_or_default()
        )))
    }
}

/// root runs the servers as `postgres`; anyone else runs them as themselves.
fn server_owner() -> Result<Option<Owner>, DemoError> {
    if id(&["-u"]).as_deref() != Some("0") {
        return Ok(None);
    }
    let uid = id(&["-u", "postgres"]).and_then(|s| s.parse().ok());
    let gid = id(&["-g", "postgres"]).and_then(|s| s.parse().ok());
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok(Some(Owner { uid, gid })),
        _ => Err(DemoError::Setup(
            "running as root, and PostgreSQL refuses to run as root: the demo runs it as \
             the user postgres, which this machine does not have.\n\
             Run pgrouter demo as a normal user, or create a postgres user."
                .into(),
        )),
    }
}

fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A new directory `$TMPDIR/pgrouter-demo-<pid>[-n]`, 0700, owned by the
/// servers' owner. `create_dir` refuses an existing path, so nothing
/// prepared in a shared /tmp is ever used.
fn create_dir(owner: Option<Owner>) -> Result<PathBuf, DemoError> {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("pgrouter-demo-{}", std::process::id()));
    let mut dir = base.clone();
    for n in 1.. {
        match std::fs::create_dir(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                dir = PathBuf::from(format!("{}-{n}", base.display()));
            }
            Err(e) => return Err(DemoError::io(format!("creating {}", dir.display()), e)),
        }
    }
    let setup = || -> std::io::Result<()> {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))?;
        }
        Ok(())
    };
    setup().map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        DemoError::io(format!("preparing {}", dir.display()), e)
    })?;
    Ok(dir)
}

/// A loopback port that was free a moment ago.
fn free_port(avoid: u16) -> Result<u16, DemoError> {
    loop {
        let port = std::net::TcpListener::bind((HOST, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|e| DemoError::io("looking for a free port".into(), e))?
            .port();
        if port != avoid {
            return Ok(port);
        }
    }
}

fn port_was_taken(log: &Path, from: u64) -> bool {
    let text = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX);
    let new = String::from_utf8_lossy(text.get(start..).unwrap_or_default());
    new.contains("could not bind") || new.contains("Address already in use")
}

fn log_tail(node: &Node) -> String {
    let text = std::fs::read(&node.log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines) ---\n{}\n",
        node.log.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

/// A libpq connection-string value, quoted when it needs to be.
fn conninfo_quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The cleanup process; see the module documentation.
struct Guardian {
    child: Option<Child>,
    pipe: Option<ChildStdin>,
}

impl Guardian {
    fn spawn(dir: &Path, bin: &Binaries, owner: Option<Owner>) -> Result<Guardian, DemoError> {
        let dir_q = sh_quote(&dir.to_string_lossy());
        let pg_ctl = sh_quote(&bin.program("pg_ctl").to_string_lossy());
        // Replicas first: the primary's fast shutdown waits for its
        // walsenders, which wait for connected replicas.
        let script = format!(
            "trap '' HUP INT\n\
             read _ignored\n\
             cd /\n\
             for d in {dir_q}/replica* {dir_q}/primary; do\n\
             \x20 [ -f \"$d/postmaster.pid\" ] || continue\n\
             \x20 {pg_ctl} -D \"$d\" -m fast -w -t 30 stop >/dev/null 2>&1 ||\n\
             \x20   {pg_ctl} -D \"$d\" -m immediate -w -t 30 stop >/dev/null 2>&1\n\
             \x20 [ -f \"$d/postmaster.pid\" ] && kill -9 \"$(head -n 1 \"$d/postmaster.pid\")\" 2>/dev/null\n\
             done\n\
             rm -rf {dir_q} 2>/dev/null\n"
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        if let Some(owner) = owner {
            cmd.uid(owner.uid).gid(owner.gid);
        }
        let mut child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir(dir);
            DemoError::io("starting the cleanup process (sh)".into(), e)
        })?;
        let pipe = child.stdin.take();
        Ok(Guardian {
            child: Some(child),
            pipe,
        })
    }

    fn finish(&mut self) {
        drop(self.pipe.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(
            conninfo_quote("/tmp/pgrouter-demo-1"),
            "/tmp/pgrouter-demo-1"
        );
        assert_eq!(conninfo_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(conninfo_quote("/tmp/it's"), r"'/tmp/it\'s'");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
