//! Guard around a running `pgrouter` binary.
//!
//! The process is killed (SIGKILL) and its config file removed on drop. A
//! tiny watchdog shell process also kills it if the test process dies
//! without dropping the guard (e.g. SIGKILL of the test binary).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::HOST;

/// How long `start`/`try_start` wait for the "listening on " line.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

pub struct Pgrouter {
    /// The address parsed from the first "listening on ADDR" log line.
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Pgrouter {
    /// Writes `config_toml` to a temp file and spawns the pgrouter binary
    /// with `--config PATH`; waits (30 s) for a stderr line containing
    /// "listening on " and parses the address following it. Panics with the
    /// collected log if the process exits or the deadline passes first.
    pub fn start(config_toml: &str) -> Pgrouter {
        match Self::try_start(config_toml) {
            Ok(p) => p,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Like [`Pgrouter::start`] but returns `Err(collected stderr)` if the
    /// process exits before listening (for config-error tests). Still
    /// panics if it neither exits nor listens within 30 s.
    pub fn try_start(config_toml: &str) -> Result<Pgrouter, String> {
        Self::try_start_binary(env!("CARGO_BIN_EXE_pgrouter"), config_toml)
    }

    /// Like [`Pgrouter::try_start`], with another build of pgrouter (the
    /// load benchmark compares two).
    pub fn try_start_binary(binary: &str, config_toml: &str) -> Result<Pgrouter, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let config_path = std::env::temp_dir().join(format!(
            "pgrouter-it-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&config_path, config_toml)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));

        let log_filter =
            std::env::var("PGROUTER_TEST_LOG").unwrap_or_else(|_| "info,pgrouter=debug".into());
        let mut child = match Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&config_path);
                panic!("spawning {binary}: {e}");
            }
        };

        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        let pid = child.id();
        std::thread::Builder::new()
            .name(format!("pgrouter-{pid}-stderr"))
            .spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let raw = String::from_utf8_lossy(&buf);
                            let line = strip_ansi(raw.trim_end_matches(['\n', '\r']));
                            eprintln!("[pgrouter] {line}");
                            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                        }
                    }
                }
            })
            .expect("spawning stderr reader thread");

        let watchdog = spawn_watchdog(pid);
        let mut router = Pgrouter {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            logs,
            config_path,
            watchdog,
        };

        let deadline = Instant::now() + LISTEN_DEADLINE;
        let mut scanned = 0;
        loop {
            // Check exit status *before* scanning, so a line logged right
            // before exiting is still seen below.
            let exited = router.child.try_wait().ok().flatten();
            {
                let logs = router.logs();
                for line in &logs[scanned..] {
                    if let Some(addr) = parse_listening(line) {
                        router.addr = addr;
                        return Ok(router);
                    }
                }
                scanned = logs.len();
            }
            if let Some(status) = exited {
                // Give the reader thread a moment to drain the pipe.
                let drain_until = Instant::now() + Duration::from_secs(2);
                let mut n = router.logs().len();
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let m = router.logs().len();
                    if m == n || Instant::now() >= drain_until {
                        break;
                    }
                    n = m;
                }
                return Err(format!(
                    "pgrouter exited with {status} before listening; stderr:\n{}",
                    router.logs().join("\n")
                ));
            }
            if Instant::now() >= deadline {
                let logs = router.logs().join("\n");
                drop(router);
                panic!(
                    "pgrouter did not log \"listening on \" within {LISTEN_DEADLINE:?}; stderr:\n{logs}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the configuration file, for a reload to read.
    pub fn rewrite_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config_path.display()));
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// "host=127.0.0.1 port=P user=U password=W dbname=D" (values quoted
    /// only when needed; an empty password is omitted).
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        super::conn_string(HOST, self.port(), user, password, db)
    }

    /// postgres://U:W@127.0.0.1:P/D (percent-encoded) for psql/pgbench.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        let userinfo = if password.is_empty() {
            super::url_encode(user)
        } else {
            format!(
                "{}:{}",
                super::url_encode(user),
                super::url_encode(password)
            )
        };
        format!(
            "postgres://{userinfo}@{HOST}:{}/{}",
            self.port(),
            super::url_encode(db)
        )
    }

    /// Connects through pgrouter; panics on error.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        super::connect_str(&self.conn_str(user, password, db)).await
    }

    /// Connects through pgrouter, returning the error (e.g. to check its
    /// SQLSTATE).
    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        super::try_connect_str(&self.conn_str(user, password, db)).await
    }

    /// Snapshot of the stderr lines so far (ANSI escapes stripped).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls the logs until a line contains `needle` or `deadline` passes;
    /// returns whether it was found. Blocking (std only); from async code
    /// prefer short deadlines or `tokio::task::spawn_blocking`.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if self
                .logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{sig}: {e}"));
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits up to `deadline` for the process to exit; returns its status if
    /// it did.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pgrouter {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL; harmless if already exited
        let _ = self.child.wait();
        if let Some((mut wd, mut stdin)) = self.watchdog.take() {
            // A line (not EOF) tells the watchdog to exit without killing.
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = wd.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// `sh` process that SIGKILLs `pid` if our end of its stdin closes without a
/// line being written first (i.e. the test process died).
fn spawn_watchdog(pid: u32) -> Option<(Child, ChildStdin)> {
    let script =
        format!("trap '' HUP INT\nif read _line; then exit 0; fi\nkill -9 {pid} 2>/dev/null\n");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// Parses the address after "listening on ", in a text or a JSON log line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|&c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`) from a line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("2024 INFO pgrouter: listening on 127.0.0.1:6432"),
            Some("127.0.0.1:6432".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on 127.0.0.1:42, accepting"),
            Some("127.0.0.1:42".parse().unwrap())
        );
        assert_eq!(
            parse_listening(&strip_ansi(
                "\u{1b}[32m INFO\u{1b}[0m listening on \u{1b}[1m127.0.0.1:7\u{1b}[0m"
            )),
            Some("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(parse_listening("not listening"), None);
    }
}
