//! `pgrouter demo` run as a user runs it: it starts its own primary and two
//! replicas, serves a write from the primary and a read from a replica, and
//! on Ctrl-C (SIGINT) leaves no process and no directory behind.
//!
//! Each run gets its own TMPDIR, so everything the demo creates is in one
//! known place.

use crate::common::cluster::LIBPQ_ENV;
use crate::common::console::first_row;
use crate::common::{connect_str, eventually};
use crate::routing::first_value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

const BIN: &str = env!("CARGO_BIN_EXE_pgrouter");
const READY_DEADLINE: Duration = Duration::from_secs(120);
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

type Lines = Arc<Mutex<Vec<String>>>;

/// A running `pgrouter demo`. Dropped while the demo still runs (a failed
/// test), it kills it, waits for the demo's cleanup process to stop the
/// servers and remove their directory, and removes TMPDIR.
struct DemoRun {
    child: Child,
    tmpdir: PathBuf,
    stdout: Lines,
    stderr: Lines,
}

impl DemoRun {
    fn spawn(args: &[&str], env: &[(&str, &Path)]) -> DemoRun {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let tmpdir = std::env::temp_dir().join(format!(
            "pgrouter-it-demo-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir(&tmpdir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", tmpdir.display()));
        // The servers run as postgres when the tests run as root: they must
        // be able to reach their directory inside this one.
        std::fs::set_permissions(&tmpdir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmpdir.display()));

        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("TMPDIR", &tmpdir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("PGROUTER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir(&tmpdir);
                panic!("spawning {BIN}: {e}");
            }
        };
        let stdout = collect(child.stdout.take(), "demo stdout");
        let stderr = collect(child.stderr.take(), "demo");
        DemoRun {
            child,
            tmpdir,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        let lines = |l: &Lines| l.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            lines(&self.stdout),
            lines(&self.stderr)
        )
    }

    /// The first stdout line holding `needle`; panics if the demo exits or
    /// `deadline` passes first.
    fn wait_for_stdout(&mut self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let exited = self.child.try_wait().ok().flatten();
            let found = self
                .stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = exited {
                panic!(
                    "the demo exited ({status}) before printing {needle:?}\n{}",
                    self.output()
                );
            }
            if Instant::now() >= end {
                panic!(
                    "the demo printed no {needle:?} within {deadline:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader threads get the last lines once the pipes close.
                let drained = Instant::now() + Duration::from_secs(5);
                while Arc::strong_count(&self.stdout) + Arc::strong_count(&self.stderr) > 2
                    && Instant::now() < drained
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return status;
            }
            if Instant::now() >= end {
                panic!(
                    "the demo did not exit within {deadline:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// What the demo left in its TMPDIR.
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tmpdir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // A killed demo's cleanup process goes on without it: wait until it
        // and the servers are gone.
        let tmpdir = self.tmpdir.display().to_string();
        let end = Instant::now() + EXIT_DEADLINE;
        while !processes_mentioning(&tmpdir).is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in postmaster_pids(&self.tmpdir) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.tmpdir);
    }
}

fn collect(pipe: Option<impl Read + Send + 'static>, prefix: &'static str) -> Lines {
    let lines: Lines = Arc::default();
    let sink = Arc::clone(&lines);
    if let Some(pipe) = pipe {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{prefix}] {line}");
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
    lines
}

/// Servers still running from data directories under `dir`.
fn postmaster_pids(dir: &Path) -> Vec<String> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for sub in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(text) = std::fs::read_to_string(sub.path().join("postmaster.pid")) {
                pids.extend(text.lines().next().map(str::to_owned));
            }
        }
    }
    pids
}

/// Processes whose command line mentions `needle`, as "pid: command line".
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// node name -> port, from the banner's node table.
fn node_ports(stdout: &str, dir: &Path) -> HashMap<String, u16> {
    let dir = dir.display().to_string();
    stdout
        .lines()
        .filter(|line| line.contains(&dir))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            let port = words.next()?.parse().ok()?;
            Some((name, port))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_splits_reads_and_writes_and_cleans_up_on_ctrl_c() {
    let mut demo = DemoRun::spawn(&["demo", "--listen", "127.0.0.1:0"], &[]);
    let ready = tokio::task::block_in_place(|| {
        demo.wait_for_stdout("pgrouter demo ready: ", READY_DEADLINE)
    });
    let url = ready
        .split("ready: ")
        .nth(1)
        .map(str::trim)
        .expect("a URL after ready:")
        .to_owned();
    assert!(url.starts_with("postgres://app:app@127.0.0.1:"), "{url}");
    assert!(url.ends_with("/app"), "{url}");

    let leftovers = demo.leftovers();
    assert_eq!(leftovers.len(), 1, "one demo directory: {leftovers:?}");
    let dir = leftovers[0].clone();
    let banner = demo.output();
    assert!(
        banner.contains(&format!("removes {}", dir.display())),
        "{banner}"
    );
    let ports = node_ports(&banner, &dir);
    let primary = *ports.get("primary").unwrap_or_else(|| panic!("{banner}"));
    let replicas: Vec<u16> = ["replica1", "replica2"]
        .iter()
        .map(|name| {
            *ports
                .get(*name)
                .unwrap_or_else(|| panic!("{name}: {banner}"))
        })
        .collect();

    // The banner's first psql line: a write, served by the primary.
    let client = connect_str(&url).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text)")
        .await
        .expect("CREATE TABLE through the demo");
    let written = first_row(
        &client,
        "INSERT INTO demo (note) VALUES ('hello') RETURNING inet_server_port(), pg_is_in_recovery()",
    )
    .await;
    assert_eq!(written, [primary.to_string(), "f".to_owned()]);
    drop(client);

    // The second, in a new session: a read, served by a replica. A new
    // session has no write to wait for, so the replica may not have
    // replayed the table yet (42P01) or the row.
    let seen = Arc::new(Mutex::new(Vec::new()));
    eventually(Duration::from_secs(30), "a replica serves the read", || {
        let (url, seen) = (url.clone(), Arc::clone(&seen));
        async move {
            let client = connect_str(&url).await;
            let sql = "SELECT inet_server_port(), pg_is_in_recovery(), count(*) FROM demo";
            let read = match client.simple_query(sql).await {
                Ok(messages) => messages.into_iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(
                        (0..3)
                            .map(|i| row.get(i).unwrap_or("").to_owned())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                }),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
                Err(e) => panic!("{sql}: {e}"),
            };
            let Some(read) = read else { return false };
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(read.clone());
            read[1] == "t" && read[2] == "1"
        }
    })
    .await;
    for read in seen.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let port: u16 = read[0].parse().expect("a port");
        assert!(
            replicas.contains(&port),
            "a read ran on {port}, not a replica {replicas:?}"
        );
    }
    let client = connect_str(&url).await;
    assert_eq!(
        first_value(&client, "SELECT current_database()").await,
        "app"
    );
    drop(client);

    demo.signal("INT");
    let status = tokio::task::block_in_place(|| demo.wait_exit(EXIT_DEADLINE));
    assert!(status.success(), "exit status {status}\n{}", demo.output());
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(demo.leftovers(), Vec::<PathBuf>::new());
    let running = processes_mentioning(&dir.display().to_string());
    assert!(running.is_empty(), "still running: {running:#?}");
    assert!(demo.output().contains("stopping the demo's servers"));
}

#[test]
fn demo_without_postgres_says_what_to_install() {
    let empty = std::env::temp_dir().join(format!("pgrouter-it-no-pg-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("an empty directory");
    let mut demo = DemoRun::spawn(
        &["demo", "--listen", "127.0.0.1:0"],
        &[("PGROUTER_PG_BINDIR", &empty)],
    );
    let status = demo.wait_exit(EXIT_DEADLINE);
    let _ = std::fs::remove_dir(&empty);
    let output = demo.output();
    assert!(!status.success(), "{output}");
    for needle in [
        "initdb",
        "apt-get install postgresql",
        "brew install",
        "PGROUTER_PG_BINDIR",
    ] {
        assert!(output.contains(needle), "no {needle:?} in\n{output}");
    }
    assert_eq!(demo.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn demo_refuses_a_taken_port_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("its address").to_string();
    let mut demo = DemoRun::spawn(&["demo", "--listen", &address], &[]);
    let status = demo.wait_exit(EXIT_DEADLINE);
    let output = demo.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("cannot listen on {address}")),
        "{output}"
    );
    assert!(output.contains("--listen"), "{output}");
    assert_eq!(demo.leftovers(), Vec::<PathBuf>::new());
}
