//! The startup phase: answer SSLRequest and GSSENCRequest with 'N' (no TLS
//! yet), take a CancelRequest, and read the StartupMessage.

use super::ClientError;
use crate::protocol::backend::{self, sqlstate};
use crate::protocol::startup::{self, StartupPacket, PROTOCOL_3_0};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub enum Opening {
    /// A client that wants a session, with its startup parameters.
    Startup { params: Vec<(String, String)> },
    /// A CancelRequest: the connection carries nothing else.
    Cancel { key: (i32, i32) },
}

pub async fn read_opening(stream: &mut TcpStream) -> Result<Opening, ClientError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let packet = read_packet(stream, &mut buf).await?;
        match startup::decode(&packet)? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                // Anything sent before our answer would be a confused client.
                if !buf.is_empty() {
                    return Err(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "data received before the encryption negotiation answer",
                    ));
                }
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Opening::Cancel {
                    key: (process_id, secret_key),
                })
            }
            StartupPacket::Startup { version, params } => {
                return accept_version(stream, version, params).await
            }
        }
    }
}

async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<BytesMut, ClientError> {
    loop {
        if let Some(len) = startup::packet_len(buf)? {
            if buf.len() >= len {
                return Ok(buf.split_to(len));
            }
            buf.reserve(len - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(if buf.has_remaining() {
                ClientError::Protocol(crate::protocol::ProtocolError::Malformed {
                    what: "truncated startup packet",
                })
            } else {
                ClientError::Closed
            });
        }
    }
}

/// Protocol 3.0 is what we speak. A newer 3.x minor or `_pq_.` options get
/// NegotiateProtocolVersion, as PostgreSQL answers them; another major
/// version is refused.
async fn accept_version(
    stream: &mut TcpStream,
    version: i32,
    params: Vec<(String, String)>,
) -> Result<Opening, ClientError> {
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != 3 {
        return Err(ClientError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
        ));
    }
    let (options, params): (Vec<_>, Vec<_>) = params
        .into_iter()
        .partition(|(name, _)| name.starts_with("_pq_."));
    if version != PROTOCOL_3_0 || !options.is_empty() {
        let names: Vec<&str> = options.iter().map(|(name, _)| name.as_str()).collect();
        let mut out = BytesMut::new();
        backend::negotiate_protocol_version(&mut out, &names);
        stream.write_all(&out).await?;
    }
    Ok(Opening::Startup { params })
}
