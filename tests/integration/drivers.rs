//! Real client drivers through pgrouter in transaction mode: the Python
//! scripts in tests/drivers/ (asyncpg, psycopg 3) run ~20 concurrent
//! clients over a pool of 3 server connections per node, with named
//! prepared statements, statement caches, executemany, cursors, COPY,
//! transactions, errors and session state, and check every result.
//!
//! They need `python3` with the drivers installed:
//! `pip install asyncpg "psycopg[binary]"` (.ci/run does it). A missing
//! driver fails the test, it is not skipped.

use crate::common::cluster::APP_PASSWORD;
use crate::common::{Cluster, Pgrouter, RouterConfig};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const PIP_HINT: &str = "pip install asyncpg \"psycopg[binary]\"";

fn python(args: &[&str]) -> std::io::Result<Output> {
    let mut cmd = Command::new("python3");
    cmd.args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    for var in crate::common::cluster::LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.output()
}

/// Panics (test failure, not a skip) unless `python3` can import `module`.
pub(crate) fn require_module(module: &str) {
    match python(&["-c", &format!("import {module}")]) {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python module `{module}` is missing; install the drivers with: {PIP_HINT}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("could not run python3 ({e}); install Python 3 and the drivers with: {PIP_HINT}")
        }
    }
}

/// Starts pgrouter (transaction mode, the default) in front of the shared
/// cluster's primary and replicas with 3 server connections per pool, and
/// runs `tests/drivers/<script> <url>`; fails with the script's output
/// unless it exits 0.
async fn run_driver_script(module: &str, script: &str) {
    require_module(module);
    let cluster = Cluster::shared();
    let db = cluster.create_database(&format!("drv_{module}")).await;
    let config = RouterConfig::new(cluster.primary(), &db)
        .replicas(cluster.replicas())
        .pool("max_connections = 3")
        .pool("checkout_timeout = \"30s\"")
        .build();
    let router = Pgrouter::start(&config);
    let url = router.url("app", APP_PASSWORD, &db);
    run_python_script(script, vec![url], &router).await;
}

/// The path of `tests/drivers/<file>`.
pub(crate) fn driver_path(file: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "drivers", file]
        .iter()
        .collect();
    path.to_string_lossy().into_owned()
}

/// Runs `python3 tests/drivers/<script> <args...>` (on a blocking thread)
/// and fails with the script's output unless it exits 0; `router` is the
/// pgrouter it talks to, named in the failure.
pub(crate) async fn run_python_script(script: &str, args: Vec<String>, router: &Pgrouter) {
    let path = driver_path(script);
    let out = tokio::task::spawn_blocking(move || {
        let mut argv = vec![path.as_str()];
        argv.extend(args.iter().map(String::as_str));
        python(&argv).unwrap_or_else(|e| panic!("running python3 {path}: {e}"))
    })
    .await
    .expect("driver script thread panicked");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("MISSING PYTHON MODULE") {
        panic!("{script}: a Python driver is missing; install with: {PIP_HINT}\n{stderr}");
    }
    assert!(
        out.status.success(),
        "{script} through pgrouter (pid {}) exited with {}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        router.pid(),
        out.status,
    );
    // Shown with --nocapture: what the script checked.
    println!("{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_named_statements_cursors_and_transactions() {
    run_driver_script("asyncpg", "test_asyncpg.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_queries_copy_and_transactions() {
    run_driver_script("psycopg", "test_psycopg.py").await;
}
