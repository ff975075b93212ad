//! From accept to the first ReadyForQuery: startup packet, database and
//! user lookup, authentication, and the server's ParameterStatus set.

use super::serve::Session;
use crate::client::auth::authenticate;
use crate::client::startup::{read_opening, Opening};
use crate::client::{send_fatal, ClientError, Identity};
use crate::config::{Route, ADMIN_DATABASE};
use crate::control::{Control, Shared};
use crate::protocol::backend::sqlstate;
use crate::protocol::startup::StartupPacket;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A logged-in client: an application's, or an admin's on the console.
pub enum LoggedIn {
    Session(Box<Session>),
    Console(TcpStream, Identity),
}

/// Logs the client in; `None` when the connection ended instead (a
/// CancelRequest, a failed login), already reported and logged.
pub async fn login(
    control: &Arc<Control>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<LoggedIn> {
    let shared = control.current();
    let timeout = shared.config.server.client_login_timeout.0;
    let outcome = tokio::time::timeout(timeout, handshake(&shared, &mut stream)).await;
    let error = match outcome {
        Ok(Ok(Handshake::Cancel(key))) => {
            control.clients.cancel(key).await;
            return None;
        }
        Ok(Ok(Handshake::Ready(identity))) if &*identity.database == ADMIN_DATABASE => {
            return Some(LoggedIn::Console(stream, identity));
        }
        Ok(Ok(Handshake::Ready(identity))) => {
            return match Session::start(control.clone(), shared, stream, peer, identity).await {
                Ok(session) => Some(LoggedIn::Session(Box::new(session))),
                Err((mut stream, error)) => {
                    fail(&mut stream, peer, error).await;
                    None
                }
            };
        }
        Ok(Err(error)) => error,
        Err(_) => {
            tracing::warn!(%peer, "client did not log in within client_login_timeout");
            ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, "login timed out")
        }
    };
    fail(&mut stream, peer, error).await;
    None
}

async fn fail(stream: &mut TcpStream, peer: SocketAddr, error: ClientError) {
    match &error {
        ClientError::Fatal { code, message } => {
            tracing::warn!(%peer, code = &**code, %message, "client login failed");
            send_fatal(stream, code, message).await;
        }
        ClientError::Closed => tracing::debug!(%peer, "client left during login"),
        other => tracing::warn!(%peer, error = %other, "client login failed"),
    }
}

enum Handshake {
    Cancel((i32, i32)),
    Ready(Identity),
}

async fn handshake(shared: &Shared, stream: &mut TcpStream) -> Result<Handshake, ClientError> {
    let params = match read_opening(stream).await? {
        Opening::Cancel { key } => return Ok(Handshake::Cancel(key)),
        Opening::Startup { params } => params,
    };
    let user = StartupPacket::param(&params, "user")
        .filter(|user| !user.is_empty())
        .ok_or_else(|| {
            ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_owned();
    let database = StartupPacket::param(&params, "database")
        .filter(|db| !db.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let console = database == ADMIN_DATABASE;
    if !console && shared.config.database(&database).is_none() {
        return Err(ClientError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    let Some(check) = shared.checks.get(&user) else {
        return Err(ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("role \"{user}\" does not exist"),
        ));
    };
    if let Err(error) = authenticate(stream, check, &user).await {
        if let ClientError::Fatal { .. } = error {
            tracing::warn!(user, database, "client authentication failed");
        }
        return Err(error);
    }
    if console && !shared.config.user(&user).is_some_and(|u| u.admin) {
        return Err(ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("user \"{user}\" may not use the admin console (admin = true is not set)"),
        ));
    }
    let application_name = StartupPacket::param(&params, "application_name")
        .unwrap_or_default()
        .to_owned();
    let route = match shared.config.user(&user).map(|u| u.route) {
        Some(Route::Auto) | None => shared
            .config
            .database(&database)
            .map_or(Route::Auto, |db| db.route),
        Some(pinned) => pinned,
    };
    let (settings, reported) = startup_settings(&params);
    // Who the session is, chosen at startup, lives on the server
    // connection: the client keeps one (see `pin::changes_identity`).
    let startup_pin = reported
        .iter()
        .any(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name == "role" || name == "session_authorization"
        })
        .then_some("startup role");
    Ok(Handshake::Ready(Identity {
        settings,
        startup_pin,
        reported,
        read_only_default: read_only_default(&params),
        user: user.into(),
        database: database.into(),
        application_name: application_name.into(),
        route,
    }))
}

/// The startup parameters a server connection must be given for this
/// client (all but the connection's own: user, database, replication),
/// with `options` taken apart, as one `set_config` query.
fn startup_settings(params: &[(String, String)]) -> (Option<Arc<str>>, Vec<(String, String)>) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                let words: Vec<&str> = value.split_whitespace().collect();
                let mut i = 0;
                while i < words.len() {
                    let setting = match words[i] {
                        "-c" => {
                            i += 1;
                            words.get(i).copied()
                        }
                        word => word.strip_prefix("-c").or_else(|| word.strip_prefix("--")),
                    };
                    if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
                        pairs.push((name.replace('-', "_"), value.to_owned()));
                    }
                    i += 1;
                }
            }
            "client_encoding"
                if value.eq_ignore_ascii_case("utf8") || value.eq_ignore_ascii_case("unicode") => {}
            _ => pairs.push((name.clone(), value.clone())),
        }
    }
    if pairs.is_empty() {
        return (None, Vec::new());
    }
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let calls: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("set_config({}, {}, false)", quote(name), quote(value)))
        .collect();
    (Some(format!("SELECT {}", calls.join(", ")).into()), pairs)
}

/// Whether the startup parameters make every transaction read-only, given
/// directly or as `options=-c default_transaction_read_only=on`.
fn read_only_default(params: &[(String, String)]) -> bool {
    const NAME: &str = "default_transaction_read_only";
    let truthy = |v: &str| {
        matches!(
            v.trim().to_lowercase().as_str(),
            "on" | "true" | "1" | "yes"
        )
    };
    if StartupPacket::param(params, NAME).is_some_and(truthy) {
        return true;
    }
    StartupPacket::param(params, "options").is_some_and(|options| {
        options
            .split_whitespace()
            .filter_map(|word| word.trim_start_matches("-c").split_once('='))
            .any(|(name, value)| {
                name.trim_start_matches("--").replace('-', "_") == NAME && truthy(value)
            })
    })
}
