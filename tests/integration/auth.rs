//! Client authentication through pgrouter: SCRAM-SHA-256, md5 and trust;
//! wrong passwords, unknown databases and users; passwords given as the
//! hashes PostgreSQL stores; and a real libpq client (psql).

use std::process::{Command, Output};
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::common::cluster::{bindir, APP_PASSWORD, MD5_PASSWORD};
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("SELECT current_user through pgrouter")
        .get(0)
}

/// The error of a login that must fail.
fn login_error(
    result: Result<tokio_postgres::Client, tokio_postgres::Error>,
    what: &str,
) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("{what}: login succeeded but should have failed"),
        Err(e) => e,
    }
}

async fn wait_log(router: &Pgrouter, needle: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("pgrouter log line containing {needle:?}"),
        || async { router.logs().iter().any(|l| l.contains(needle)) },
    )
    .await;
}

fn count_logs(router: &Pgrouter, needle: &str) -> usize {
    router.logs().iter().filter(|l| l.contains(needle)).count()
}

async fn router_for(prefix: &str) -> (Pgrouter, String) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let router = Pgrouter::start(&RouterConfig::new(cluster.primary(), &db).build());
    (router, db)
}

/// `rolpassword` of `role` as pg_authid stores it on the primary.
async fn stored_password(role: &str) -> String {
    let cluster = Cluster::shared();
    let su = cluster.superuser(cluster.primary(), "postgres").await;
    let stored: Option<String> = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap_or_else(|e| panic!("reading pg_authid for {role}: {e}"))
        .get(0);
    stored.unwrap_or_else(|| panic!("role {role} has no stored password"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_runs_queries_as_app() {
    let (router, db) = router_for("auth_scram").await;
    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "app");
    let row = client
        .query_one("SELECT $1::int + 1, current_database()::text", &[&41i32])
        .await
        .expect("parameterised query");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_login_runs_queries_as_md5user() {
    let (router, db) = router_for("auth_md5").await;
    let client = router.connect("md5user", MD5_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "md5user");
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
        .await
        .expect("md5user writes");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_login_runs_queries_as_trustuser() {
    let (router, db) = router_for("auth_trust").await;
    // No password at all.
    let client = router.connect("trustuser", "", &db).await;
    assert_eq!(current_user(&client).await, "trustuser");
    // Trust ignores whatever password a client has (it is never asked).
    let client = router.connect("trustuser", "whatever", &db).await;
    assert_eq!(current_user(&client).await, "trustuser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_28p01() {
    let (router, db) = router_for("auth_wrong_pw").await;

    let err = login_error(router.try_connect("app", "nope", &db).await, "SCRAM, wrong");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    wait_log(&router, "authentication failed").await;

    let before = count_logs(&router, "authentication failed");
    let err = login_error(
        router.try_connect("md5user", "nope", &db).await,
        "md5, wrong",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    eventually(
        Duration::from_secs(10),
        "a second \"authentication failed\" log line",
        || async { count_logs(&router, "authentication failed") > before },
    )
    .await;

    // The password of another user is no good either.
    let err = login_error(
        router.try_connect("app", MD5_PASSWORD, &db).await,
        "SCRAM, md5user's password",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

    // An empty password: tokio-postgres cannot answer without one.
    assert!(
        router.try_connect("app", "", &db).await.is_err(),
        "login as app without a password succeeded"
    );

    // Failures leave the right password working.
    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_refused_with_3d000() {
    let (router, db) = router_for("auth_unknown_db").await;
    let err = login_error(
        router.try_connect("app", APP_PASSWORD, "no_such_db").await,
        "unknown database",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");
    assert!(
        err.as_db_error()
            .is_some_and(|db| db.message().contains("no_such_db")),
        "error names the database: {err}"
    );

    // The database is checked before the user, as PostgreSQL does.
    let err = login_error(
        router.try_connect("nobody", "x", "no_such_db").await,
        "unknown database and user",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");

    // A database that exists on the server but is not configured in
    // pgrouter is unknown too.
    let err = login_error(
        router.try_connect("app", APP_PASSWORD, "postgres").await,
        "unconfigured database",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");

    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_refused_with_28000() {
    let (router, db) = router_for("auth_unknown_user").await;
    let err = login_error(
        router.try_connect("nobody", "secret", &db).await,
        "unknown user",
    );
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
    // `postgres` exists on the server but not in pgrouter's config.
    let err = login_error(
        router.try_connect("postgres", "", &db).await,
        "unconfigured user",
    );
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_from_pg_authid_as_password() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("auth_scram_verifier").await;
    let verifier = stored_password("app").await;
    assert!(
        verifier.starts_with("SCRAM-SHA-256$"),
        "app's stored password is a SCRAM verifier: {verifier}"
    );
    let users = format!(
        r#"
[[users]]
name = "app"
password = "{verifier}"
server_password = "{APP_PASSWORD}"
"#
    );
    let router = Pgrouter::start(
        &RouterConfig::new(cluster.primary(), &db)
            .users(&users)
            .build(),
    );

    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "app");

    let err = login_error(
        router.try_connect("app", "nope", &db).await,
        "wrong password",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    // The verifier itself is not a password.
    let err = login_error(
        router.try_connect("app", &verifier, &db).await,
        "the verifier as password",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

    // Still fine after the failures.
    let client = router.connect("app", APP_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_hash_from_pg_authid_as_password() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("auth_md5_hash").await;
    let hash = stored_password("md5user").await;
    assert!(
        hash.starts_with("md5") && hash.len() == 35,
        "md5user's stored password is an md5 hash: {hash}"
    );
    let users = format!(
        r#"
[[users]]
name = "md5user"
password = "{hash}"
server_password = "{MD5_PASSWORD}"
auth = "md5"
"#
    );
    let router = Pgrouter::start(
        &RouterConfig::new(cluster.primary(), &db)
            .users(&users)
            .build(),
    );

    let client = router.connect("md5user", MD5_PASSWORD, &db).await;
    assert_eq!(current_user(&client).await, "md5user");

    let err = login_error(
        router.try_connect("md5user", "nope", &db).await,
        "wrong password",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    // Pass-the-hash does not work: the hash is not the password.
    let err = login_error(
        router.try_connect("md5user", &hash, &db).await,
        "the hash as password",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

/// Runs psql against `url` with a clean libpq environment.
pub fn psql(url: &str, sql: &str) -> Output {
    let bin = bindir().join("psql");
    let bin = if bin.exists() { bin } else { "psql".into() };
    let mut cmd = Command::new(&bin);
    cmd.arg(url).args(["-X", "-At", "-c", sql]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

async fn psql_async(url: String, sql: &'static str) -> Output {
    tokio::task::spawn_blocking(move || psql(&url, sql))
        .await
        .expect("psql task")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_through_ssl_negotiation() {
    let (router, db) = router_for("auth_psql").await;

    // libpq defaults to sslmode=prefer: SSLRequest, 'N', then plaintext.
    let out = psql_async(router.url("app", APP_PASSWORD, &db), "select 1").await;
    assert!(out.status.success(), "psql select 1: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let out = psql_async(
        router.url("md5user", MD5_PASSWORD, &db),
        "select current_user",
    )
    .await;
    assert!(out.status.success(), "psql as md5user: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "md5user");

    // sslmode=require proves the SSLRequest really was refused.
    let url = format!("{}?sslmode=require", router.url("app", APP_PASSWORD, &db));
    let out = psql_async(url, "select 1").await;
    assert!(
        !out.status.success(),
        "psql sslmode=require succeeded: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not support SSL"),
        "psql sslmode=require: {}",
        describe(&out)
    );

    // A wrong password is reported to psql as PostgreSQL would.
    let out = psql_async(router.url("app", "nope", &db), "select 1").await;
    assert!(!out.status.success(), "wrong password: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "wrong password: {}",
        describe(&out)
    );
}
