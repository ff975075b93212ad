//! One task per client: log in, then serve its requests over server
//! connections checked out of its pools, then leave nothing behind.
//!
//! The session is the only orchestrator: it calls the client side for
//! startup and authentication, the router for a node, the pool for a
//! connection, and relays between the two sockets itself.

mod acquire;
mod login;
mod pin;
mod relay;
mod serve;
mod settings;

pub use login::Shared;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Serves one client connection from accept to close.
pub async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let Some(session) = login::login(&shared, stream, peer).await else {
        return;
    };
    session.serve().await;
}
