//! The client-facing side before a session starts serving: startup packet
//! negotiation and authentication, plus the few reads and writes they need.

pub mod auth;
pub mod startup;
mod welcome;

pub use welcome::{send_welcome, Identity};

use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{self, Frame};
use crate::protocol::ProtocolError;
use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a client connection ends before or outside normal service.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("client sent bad protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("client closed the connection")]
    Closed,
    /// Reported to the client as a FATAL ErrorResponse, then closed.
    #[error("{message}")]
    Fatal {
        code: std::borrow::Cow<'static, str>,
        message: String,
    },
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError::Fatal {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A FATAL with a SQLSTATE a server gave.
    pub fn fatal_owned(code: String, message: String) -> ClientError {
        ClientError::Fatal {
            code: code.into(),
            message,
        }
    }
}

/// Reads until a whole typed message is at the front of `buf`.
pub async fn read_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, ClientError> {
    loop {
        if let Some(frame) = frontend::frame(buf, max)? {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// Sends a FATAL ErrorResponse; the caller closes the connection after it.
pub async fn send_fatal(stream: &mut TcpStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::error_response(&mut out, Severity::Fatal, code, message);
    // The connection is being closed; a client that is gone already
    // cannot be told anything.
    let _ = stream.write_all(&out).await;
}
