//! One task per client: log in, then serve its requests over server
//! connections checked out of its pools, then leave nothing behind.
//!
//! The session is the only orchestrator: it calls the client side for
//! startup and authentication, the router for a node, the pool for a
//! connection, and relays between the two sockets itself.

mod acquire;
mod explain;
mod login;
mod pin;
mod relay;
mod serve;
mod settings;

pub use explain::{explain_route, explained, COLUMNS as EXPLAIN_COLUMNS};
pub use login::{send_welcome, Identity};

use crate::control::Control;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Serves one client connection from accept to close.
pub async fn run(control: Arc<Control>, stream: TcpStream, peer: SocketAddr) {
    match login::login(&control, stream, peer).await {
        Some(login::LoggedIn::Session(session)) => session.serve().await,
        Some(login::LoggedIn::Console(stream, identity)) => {
            crate::admin::serve(control, stream, peer, identity).await
        }
        None => {}
    }
}
