//! Finding the PostgreSQL server programs installed on this machine.

use super::DemoError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The programs the demo runs from one installation's bin directory.
const SERVER_PROGRAMS: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];

/// Set to a directory, the demo uses that one and looks nowhere else, so a
/// mistyped path is reported instead of quietly replaced by another version.
/// The integration tests read the same variable.
pub const BINDIR_VARIABLE: &str = "PGROUTER_PG_BINDIR";

#[derive(Debug, Clone)]
pub struct Binaries {
    /// Holds initdb, pg_ctl, pg_basebackup and postgres.
    pub dir: PathBuf,
    /// psql, from `dir` or else from PATH (some packagings split the client
    /// programs from the server's).
    pub psql: PathBuf,
}

impl Binaries {
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The server programs: `$PGROUTER_PG_BINDIR` alone when set; else
/// `pg_config --bindir`, the distributions' versioned directories (highest
/// version first), Homebrew's, /usr/local/pgsql/bin, then PATH.
pub fn find() -> Result<Binaries, DemoError> {
    let candidates = match std::env::var_os(BINDIR_VARIABLE) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => candidate_dirs(),
    };
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for dir in candidates {
        if !has_server_programs(&dir) {
            continue;
        }
        let psql = std::iter::once(dir.clone())
            .chain(path_dirs.iter().cloned())
            .map(|d| d.join("psql"))
            .find(|p| is_executable(p));
        match psql {
            Some(psql) => return Ok(Binaries { dir, psql }),
            None => {
                return Err(DemoError::Setup(format!(
                    "found the PostgreSQL server programs in {} but no psql, there or in PATH.\n\
                     Install the PostgreSQL client: apt-get install postgresql-client (Debian/Ubuntu), \
                     dnf install postgresql (Fedora/RHEL).",
                    dir.display()
                )))
            }
        }
    }
    Err(DemoError::Setup(not_installed_message()))
}

fn not_installed_message() -> String {
    let looked = match std::env::var_os(BINDIR_VARIABLE) {
        Some(dir) => format!("{BINDIR_VARIABLE}={}", Path::new(&dir).display()),
        None => "pg_config --bindir, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, \
                 Homebrew's postgresql@*, /usr/local/pgsql/bin and PATH"
            .to_owned(),
    };
    format!(
        "pgrouter demo runs a PostgreSQL primary and two replicas from the PostgreSQL \
         server programs ({}), and found none.\n\
         Looked in: {looked}.\n\
         Install them:\n\
         \x20 Debian/Ubuntu:  apt-get install postgresql\n\
         \x20 Fedora/RHEL:    dnf install postgresql-server postgresql\n\
         \x20 macOS:          brew install postgresql@17\n\
         or set {BINDIR_VARIABLE} to the directory that holds initdb.\n\
         With Docker instead: docker compose up -d (see README.md).",
        SERVER_PROGRAMS.join(", ")
    )
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = pg_config_bindir() {
        dirs.push(dir);
    }
    dirs.extend(versioned("/usr/lib/postgresql", "", "bin"));
    dirs.extend(versioned("/usr", "pgsql-", "bin"));
    dirs.extend(versioned("/opt/homebrew/opt", "postgresql@", "bin"));
    dirs.extend(versioned("/usr/local/opt", "postgresql@", "bin"));
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `PARENT/PREFIX<version>/SUB` for every version present, highest first.
fn versioned(parent: &str, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = parse_version(name.strip_prefix(prefix)?)?;
            Some((version, entry.path().join(sub)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// "17" -> [17], "9.6" -> [9, 6]; anything else is not a version.
fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_programs(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|p| is_executable(&dir.join(p)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(parse_version("17"), Some(vec![17]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("17beta1"), None);
        assert_eq!(parse_version(""), None);
        let mut versions = [vec![9, 6], vec![17], vec![10]];
        versions.sort_by(|a, b| b.cmp(a));
        assert_eq!(versions, [vec![17], vec![10], vec![9, 6]]);
    }

    #[test]
    fn the_message_says_what_to_install() {
        let message = not_installed_message();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("brew install"), "{message}");
        assert!(message.contains(BINDIR_VARIABLE), "{message}");
    }
}
