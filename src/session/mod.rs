//! One task per client: log in, then serve its requests over server
//! connections checked out of its pools, then leave nothing behind.
//!
//! The session is the only orchestrator: it calls the client side for
//! startup and authentication, the router for a node, the pool for a
//! connection, and relays between the two sockets itself.

mod acquire;
mod client_io;
mod explain;
mod inline_parse;
mod login;
mod pin;
mod relay;
mod release;
mod serve;
mod settings;
mod stage;
mod transaction;

use crate::control::Control;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Serves one client connection from accept to close.
///
/// The task's future is kept small, because an idle client holds it: the
/// login's state and the console's are boxed and freed when done, and a
/// session boxes its busy part (see `Session::serve`).
pub async fn run(control: Arc<Control>, stream: TcpStream, peer: SocketAddr) {
    let logged_in = Box::pin(login::login(&control, stream, peer)).await;
    match logged_in {
        Some(login::LoggedIn::Session(session)) => session.serve().await,
        Some(login::LoggedIn::Console(stream, identity)) => {
            Box::pin(crate::admin::serve(control, stream, peer, identity)).await
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    /// Every idle client holds its task's future: it must not grow back
    /// to the several kilobytes of the login and busy states.
    #[tokio::test]
    async fn a_client_task_is_small() {
        let config = crate::config::Config::parse(
            "[[nodes]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n[[users]]\nname = \"a\"\npassword = \"x\"\n[[databases]]\nname = \"a\"\n",
        )
        .expect("a valid config");
        let control = std::sync::Arc::new(crate::control::Control::new(config, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let run = super::run(control.clone(), stream, addr);
        let size = std::mem::size_of_val(&run);
        assert!(size <= 1024, "session::run's future is {size} bytes");
    }
}
