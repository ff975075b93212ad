//! Opening a server connection: TCP, StartupMessage, authentication with
//! postgres-protocol's md5 and SCRAM-SHA-256, then the ParameterStatus and
//! BackendKeyData the server sends before its first ReadyForQuery.

use super::{CancelTarget, ServerConn, ServerError};
use crate::config::Address;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct ConnectParams<'a> {
    pub address: &'a Address,
    pub node: Arc<str>,
    pub user: &'a str,
    pub database: &'a str,
    pub password: Option<&'a str>,
    pub timeout: Duration,
}

pub async fn connect(params: ConnectParams<'_>) -> Result<ServerConn, ServerError> {
    let address = params.address.to_string();
    match tokio::time::timeout(params.timeout, login(&params, &address)).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::ConnectTimeout { address }),
    }
}

async fn login(params: &ConnectParams<'_>, address: &str) -> Result<ServerConn, ServerError> {
    let mut stream = TcpStream::connect((params.address.host.as_str(), params.address.port))
        .await
        .map_err(|source| ServerError::Connect {
            address: address.to_owned(),
            source,
        })?;
    stream.set_nodelay(true)?;

    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", params.user),
            ("database", params.database),
            ("application_name", "pgrouter"),
            ("client_encoding", "UTF8"),
        ],
        &mut out,
    )?;
    stream.write_all(&out).await?;

    let mut read_buf = BytesMut::with_capacity(16 * 1024);
    let mut scram: Option<ScramSha256> = None;
    let mut server_params = Vec::new();
    let mut key = None;
    loop {
        let message = loop {
            if let Some(message) = Message::parse(&mut read_buf)? {
                break message;
            }
            if stream.read_buf(&mut read_buf).await? == 0 {
                return Err(ServerError::Protocol(
                    "server closed the connection during login".into(),
                ));
            }
        };
        out.clear();
        match message {
            Message::AuthenticationOk => continue,
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password(params)?.as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(
                    params.user.as_bytes(),
                    password(params)?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<&str> = body.mechanisms().collect()?;
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(ServerError::Auth(format!(
                        "server offers only {mechanisms:?}"
                    )));
                }
                let exchange =
                    ScramSha256::new(password(params)?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out)?;
                scram = Some(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram_in_progress(&mut scram)?;
                exchange
                    .update(body.data())
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                frontend::sasl_response(exchange.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                scram_in_progress(&mut scram)?
                    .finish(body.data())
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
            }
            Message::ParameterStatus(body) => {
                server_params.push((body.name()?.to_owned(), body.value()?.to_owned()));
            }
            Message::BackendKeyData(body) => key = Some((body.process_id(), body.secret_key())),
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => return Err(rejected(&body)),
            Message::ReadyForQuery(_) => break,
            _ => {
                return Err(ServerError::Protocol(
                    "unexpected message during login".into(),
                ))
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
    let (process_id, secret_key) =
        key.ok_or_else(|| ServerError::Protocol("server sent no BackendKeyData".into()))?;
    Ok(ServerConn::new(
        stream,
        read_buf,
        params.node.clone(),
        CancelTarget {
            address: address.into(),
            process_id,
            secret_key,
        },
        server_params,
    ))
}

fn password<'a>(params: &ConnectParams<'a>) -> Result<&'a str, ServerError> {
    params.password.ok_or_else(|| {
        ServerError::Auth(format!(
            "the server asks for a password and user {:?} has no server_password",
            params.user
        ))
    })
}

fn scram_in_progress(scram: &mut Option<ScramSha256>) -> Result<&mut ScramSha256, ServerError> {
    scram
        .as_mut()
        .ok_or_else(|| ServerError::Protocol("SASL message before SASL started".into()))
}

/// SQLSTATE and message of an ErrorResponse.
pub(crate) fn rejected(body: &ErrorResponseBody) -> ServerError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    ServerError::Rejected { code, message }
}
