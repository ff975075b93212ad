//! The end of a client's login: who it turned out to be, and the welcome
//! that tells it so (what a session and the console both send).

use crate::config::Route;
use crate::protocol::backend::{self, STATUS_IDLE};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Who a logged-in client is.
pub struct Identity {
    /// Shared with the client's slot in the registry.
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub application_name: Arc<str>,
    /// The user's `route`, else the database's.
    pub route: Route,
    /// default_transaction_read_only = on, from the startup parameters.
    pub read_only_default: bool,
    /// The startup parameters to apply to every server connection the
    /// client gets, as one query; `None` when there are none.
    pub settings: Option<Arc<str>>,
    /// A startup parameter that changes who the session is (`role`,
    /// `session_authorization`): the client keeps its server connection.
    pub startup_pin: Option<&'static str>,
    /// The client's startup values of parameters the server reports.
    pub reported: Vec<(String, String)>,
}

/// AuthenticationOk, the server's ParameterStatus set (with the client's
/// own startup values where it gave them), our BackendKeyData and
/// ReadyForQuery, in one write.
pub async fn send_welcome(
    stream: &mut TcpStream,
    server_params: &[(String, String)],
    identity: &Identity,
    key: (i32, i32),
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    backend::authentication_ok(&mut out);
    for (name, value) in server_params {
        let own = identity
            .reported
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let value = match (name.as_str(), own) {
            (_, Some(own)) => own,
            ("application_name", None) => &*identity.application_name,
            _ => value,
        };
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, key.0, key.1);
    backend::ready_for_query(&mut out, STATUS_IDLE);
    stream.write_all(&out).await
}
