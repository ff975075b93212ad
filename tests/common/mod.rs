//! Integration-test support: a throw-away PostgreSQL primary/replica cluster
//! (`cluster`), a guard around the `pgrouter` binary (`pgrouter`) and polling
//! helpers (`wait`). Not every test uses every helper.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod config;
pub mod console;
pub mod pgrouter;
pub mod rng;
pub mod wait;
pub mod wire;

pub use cluster::{Cluster, NodeInfo};
pub use config::RouterConfig;
pub use pgrouter::Pgrouter;
pub use wait::{eventually, eventually_blocking};

/// Loopback host used for every server in the tests.
pub const HOST: &str = "127.0.0.1";

/// Builds a libpq-style key/value connection string accepted by
/// `tokio_postgres::connect`. An empty `password` is omitted entirely.
pub fn conn_string(host: &str, port: u16, user: &str, password: &str, db: &str) -> String {
    let mut s = format!(
        "host={} port={} user={}",
        kv_quote(host),
        port,
        kv_quote(user)
    );
    if !password.is_empty() {
        s.push_str(" password=");
        s.push_str(&kv_quote(password));
    }
    s.push_str(" dbname=");
    s.push_str(&kv_quote(db));
    s
}

/// Quotes a value for a key/value connection string only when necessary.
fn kv_quote(v: &str) -> String {
    let plain = !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if plain {
        v.to_string()
    } else {
        let mut out = String::with_capacity(v.len() + 2);
        out.push('\'');
        for c in v.chars() {
            if c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
        out
    }
}

/// Percent-encodes a URL component (userinfo / path segment).
pub fn url_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connects with tokio-postgres (NoTls) and spawns the connection task on the
/// current tokio runtime.
pub async fn try_connect_str(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Errors here are normal when a test deliberately kills a server.
        let _ = connection.await;
    });
    Ok(client)
}

/// Like [`try_connect_str`] but panics with the connection string on error.
pub async fn connect_str(conn: &str) -> tokio_postgres::Client {
    match try_connect_str(conn).await {
        Ok(c) => c,
        Err(e) => panic!("connect to `{conn}` failed: {e} ({e:?})"),
    }
}

/// A number from the environment, for test knobs (seeds, counts);
/// `None` when unset, a panic naming it when it is not a number.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?}: {e}")),
    )
}

/// A read of about `len` bytes (one row); `seed` makes its text distinct
/// even with the literals taken out (the classification cache's key).
pub fn long_read(len: usize, seed: usize) -> String {
    let mut sql = format!("SELECT 1 AS c{seed} WHERE 1 IN (1");
    let mut i = 2;
    while sql.len() < len {
        sql.push_str(&format!(", {i}"));
        i += 1;
    }
    sql.push(')');
    sql
}
