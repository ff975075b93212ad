//! Authenticating a client over the wire: trust, md5 or SCRAM-SHA-256.

use super::{read_message, ClientError};
use crate::auth::scram::{ScramError, ScramExchange, MECHANISM};
use crate::auth::{md5_response, ClientCheck};
use crate::protocol::backend::{self, sqlstate};
use crate::protocol::frontend;
use bytes::BytesMut;
use rand::RngExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Authentication messages are short; a client sending more is refused.
const MAX_AUTH_MESSAGE: usize = 8192;

/// Runs the exchange `check` asks for. On success the caller sends
/// AuthenticationOk; on failure the error is the FATAL to report.
pub async fn authenticate(
    stream: &mut TcpStream,
    check: &ClientCheck,
    user: &str,
) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    let mut buf = BytesMut::new();
    match check {
        ClientCheck::Trust => Ok(()),
        ClientCheck::Md5 { stored } => {
            let mut salt = [0u8; 4];
            rand::rng().fill(&mut salt);
            backend::authentication_md5(&mut out, salt);
            stream.write_all(&out).await?;
            let answer = read_password_message(stream, &mut buf).await?;
            let answer = frontend::password(frontend::body(&answer))?;
            match md5_response(stored, salt) {
                Some(expected) if expected == answer => Ok(()),
                _ => Err(password_failed(user)),
            }
        }
        ClientCheck::Scram(verifier) => {
            backend::authentication_sasl(&mut out, MECHANISM);
            stream.write_all(&out).await?;
            let first = read_password_message(stream, &mut buf).await?;
            let initial = frontend::sasl_initial_response(frontend::body(&first))?;
            if initial.mechanism != MECHANISM {
                return Err(ClientError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("unsupported SASL mechanism {:?}", initial.mechanism),
                ));
            }
            let (exchange, server_first) = ScramExchange::start(verifier.clone(), initial.data)
                .map_err(|e| ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
            out.clear();
            backend::authentication_sasl_continue(&mut out, server_first.as_bytes());
            stream.write_all(&out).await?;
            let last = read_password_message(stream, &mut buf).await?;
            let server_final = exchange
                .finish(frontend::body(&last))
                .map_err(|e| match e {
                    ScramError::WrongProof => password_failed(user),
                    malformed => {
                        ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, malformed.to_string())
                    }
                })?;
            out.clear();
            backend::authentication_sasl_final(&mut out, server_final.as_bytes());
            stream.write_all(&out).await?;
            Ok(())
        }
    }
}

async fn read_password_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, ClientError> {
    let frame = read_message(stream, buf, MAX_AUTH_MESSAGE).await?;
    if frame.tag != frontend::PASSWORD {
        return Err(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected a password message, got message type {:?}",
                char::from(frame.tag)
            ),
        ));
    }
    Ok(buf.split_to(frame.len))
}

fn password_failed(user: &str) -> ClientError {
    ClientError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}
