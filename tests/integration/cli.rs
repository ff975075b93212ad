//! The command line: --help, --version, and `pgrouter check` on good and
//! bad config files, given with --config or PGROUTER_CONFIG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_pgrouter");

/// A file (or directory) in the temp dir, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn unique(stem: &str, ext: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "pgrouter-cli-{stem}-{}-{}{ext}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ))
    }

    fn file(stem: &str, text: &str) -> TempPath {
        let path = Self::unique(stem, ".toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        TempPath(path)
    }

    fn dir(stem: &str) -> TempPath {
        let path = Self::unique(stem, "");
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempPath(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn display(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The binary with no config-related environment, run from `cwd`.
fn pgrouter(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .env_remove("PGROUTER_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr together: where diagnostics go is not the point.
fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// 1-based line and column of the first `needle` on 1-based `line` of
/// `text`; panics if it is not there (a mistake in the test).
fn position_of(text: &str, line: usize, needle: &str) -> (usize, usize) {
    let content = text
        .lines()
        .nth(line - 1)
        .unwrap_or_else(|| panic!("test config has no line {line}"));
    let column = content
        .find(needle)
        .unwrap_or_else(|| panic!("line {line} {content:?} has no {needle:?}"));
    (line, column + 1)
}

#[test]
fn help_lists_usage_options_and_check() {
    let cwd = manifest_dir();
    let out = run(pgrouter(&cwd).arg("--help"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("Usage:"), "{}", describe(&out));
    assert!(text.contains("--config"), "{}", describe(&out));
    assert!(text.contains("check"), "{}", describe(&out));
    assert!(text.contains("--version"), "{}", describe(&out));
    assert!(text.contains("PGROUTER_CONFIG"), "{}", describe(&out));

    let out = run(pgrouter(&cwd).args(["check", "--help"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("Usage:"), "{}", describe(&out));
}

#[test]
fn version_prints_name_and_version() {
    let out = run(pgrouter(&manifest_dir()).arg("--version"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "pgrouter 0.1.0", "{}", describe(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("pgrouter {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run(pgrouter(&manifest_dir()).arg("--no-such-flag"));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        all_output(&out).contains("--no-such-flag"),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let cwd = manifest_dir();
    let example = cwd.join("config").join("pgrouter.toml");
    assert!(example.exists(), "{} missing", example.display());
    let out = run(pgrouter(&cwd).arg("check").arg("--config").arg(&example));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("{}: ok", example.display()),
        "{}",
        describe(&out)
    );

    // --config before the subcommand works too (it is a global option).
    let out = run(pgrouter(&cwd).arg("--config").arg(&example).arg("check"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), format!("{}: ok", example.display()));

    // As does the default path, relative to the working directory.
    let out = run(pgrouter(&cwd).arg("check"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "config/pgrouter.toml: ok");
}

#[test]
fn check_reports_every_semantic_error_with_its_line() {
    // Line numbers matter: every line below is counted.
    let text = r#"[server]
listen = "127.0.0.1:0"

[pool]
min_connections = 10
max_connections = 5

[[nodes]]
name = "a"
address = "127.0.0.1:5432"
role = "replica"

[[nodes]]
name = "a"
address = "127.0.0.1:5433"
role = "replica"

[[users]]
name = "app"
password = "x"

[[users]]
name = "app"
password = "y"

[[users]]
name = "nopw"
auth = "md5"

[[databases]]
name = "pgrouter"
min_connections = 1
max_connections = 2

[[databases]]
name = "shop"
min_connections = 7
max_connections = 3
"#;
    let file = TempPath::file("semantic", text);
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(file.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let output = all_output(&out);
    assert!(!output.contains(": ok"), "{}", describe(&out));

    // (line, text at the reported column, words the message must contain)
    let expected: &[(usize, &str, &[&str])] = &[
        (5, "10", &["min_connections", "max_connections"]),
        (9, "\"a\"", &["primary"]),
        (14, "\"a\"", &["node", "\"a\"", "twice"]),
        (23, "\"app\"", &["user", "\"app\"", "twice"]),
        (27, "\"nopw\"", &["nopw", "password"]),
        (31, "\"pgrouter\"", &["pgrouter", "reserved"]),
        (37, "7", &["shop", "min_connections"]),
    ];
    let file_name = file.display();
    let lines: Vec<&str> = output.lines().collect();
    for (line, at, words) in expected {
        let (line, column) = position_of(text, *line, at);
        let prefix = format!("{file_name}:{line}:{column}: ");
        let found = lines
            .iter()
            .find(|l| l.starts_with(&prefix) && words.iter().all(|w| l.contains(w)));
        assert!(
            found.is_some(),
            "no error at {line}:{column} mentioning {words:?}\n{}",
            describe(&out)
        );
    }
    // Every line printed is one error in FILE:LINE:COLUMN: form, and none
    // points at a line that has no problem.
    let wanted_lines: Vec<usize> = expected.iter().map(|(l, _, _)| *l).collect();
    for l in &lines {
        let rest = l
            .strip_prefix(&format!("{file_name}:"))
            .unwrap_or_else(|| panic!("line {l:?} does not start with the file name"));
        let line_no: usize = rest
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("line {l:?} has no line number"));
        assert!(
            wanted_lines.contains(&line_no),
            "error reported at unexpected line {line_no}: {l:?}\n{}",
            describe(&out)
        );
    }
}

#[test]
fn check_names_an_unknown_key_and_its_line() {
    let text = r#"[server]
listen = "127.0.0.1:0"

[pool]
max_connections = 5
max_conections = 6

[[nodes]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"
"#;
    let file = TempPath::file("unknown-key", text);
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(file.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let output = all_output(&out);
    let prefix = format!("{}:6:", file.display());
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no error at line 6\n{}", describe(&out)));
    assert!(line.contains("max_conections"), "{line:?}");

    // A syntax error: reported with its line, too.
    let file = TempPath::file(
        "syntax",
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = = 2\n",
    );
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(file.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        all_output(&out).contains(&format!("{}:3:", file.display())),
        "{}",
        describe(&out)
    );

    // A value of the wrong type.
    let file = TempPath::file(
        "type",
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[pool]\nmax_connections = \"many\"\n",
    );
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(file.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        all_output(&out).contains(&format!("{}:5:", file.display())),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_reports_a_missing_file() {
    let missing = TempPath::unique("missing", ".toml");
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(&missing));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        all_output(&out).contains(&missing.display().to_string()),
        "{}",
        describe(&out)
    );
}

#[test]
fn pgrouter_config_env_is_used_without_config_flag() {
    let good = TempPath::file(
        "env-good",
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[nodes]]\nname = \"primary\"\naddress = \"127.0.0.1:5432\"\nrole = \"primary\"\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n\n[[databases]]\nname = \"app\"\n",
    );
    let bad = TempPath::file(
        "env-bad",
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[pool]\nbogus = 1\n",
    );
    // A working directory without config/pgrouter.toml, so the default
    // path cannot be what is read.
    let cwd = TempPath::dir("cwd");

    let out = run(pgrouter(cwd.path()).arg("check"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "no config anywhere: {}",
        describe(&out)
    );

    let out = run(pgrouter(cwd.path())
        .arg("check")
        .env("PGROUTER_CONFIG", good.path()));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), format!("{}: ok", good.display()));

    let out = run(pgrouter(cwd.path())
        .arg("check")
        .env("PGROUTER_CONFIG", bad.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let output = all_output(&out);
    assert!(
        output.contains(&format!("{}:5:", bad.display())) && output.contains("bogus"),
        "{}",
        describe(&out)
    );

    // --config wins over the environment.
    let out = run(pgrouter(cwd.path())
        .arg("check")
        .arg("--config")
        .arg(good.path())
        .env("PGROUTER_CONFIG", bad.path()));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), format!("{}: ok", good.display()));
}

#[test]
fn check_reports_server_limit_errors_with_their_line() {
    let text = r#"[server]
listen = "127.0.0.1:0"
max_client_connections = 0
max_message_size = "1kB"

[[nodes]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"

[[users]]
name = "app"
password = "secret"

[[databases]]
name = "app"
"#;
    let file = TempPath::file("server-limits", text);
    let out = run(pgrouter(&manifest_dir())
        .arg("check")
        .arg("--config")
        .arg(file.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let output = all_output(&out);
    // Both values are in the file, so both errors must point at them.
    for (line, at, word) in [
        (3, "0", "max_client_connections"),
        (4, "\"1kB\"", "max_message_size"),
    ] {
        let (line, column) = position_of(text, line, at);
        let prefix = format!("{}:{line}:{column}: ", file.display());
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(word)),
            "no {word} error at {line}:{column}\n{}",
            describe(&out)
        );
    }
}
