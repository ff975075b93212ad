//! The admin console: the virtual database `pgrouter`, for users with
//! `admin = true`, over the same port and protocol as applications. It
//! speaks the simple query protocol (what psql and tokio-postgres'
//! `simple_query` use) and answers with ordinary result sets.

mod caches;
mod commands;
mod show;

pub use show::client_counts;

use crate::client::{send_welcome, Identity};
use crate::clients::ClientInfo;
use crate::control::Control;
use crate::protocol::backend::{self, sqlstate, Severity, STATUS_IDLE};
use crate::protocol::frontend;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Commands are short: a bigger message is not one.
const MAX_COMMAND: usize = 1 << 20;

/// A result set of text columns, or a command's completion.
pub struct Answer {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
    pub notice: Option<String>,
}

impl Answer {
    pub fn rows(columns: &[&'static str], rows: Vec<Vec<Option<String>>>) -> Answer {
        Answer {
            tag: format!("SHOW {}", rows.len()),
            columns: columns.to_vec(),
            rows,
            notice: None,
        }
    }

    pub fn done(tag: &str) -> Answer {
        Answer {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: tag.to_owned(),
            notice: None,
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        if let Some(notice) = &self.notice {
            backend::notice_response(out, notice);
        }
        if !self.columns.is_empty() {
            backend::row_description(out, &self.columns);
            for row in &self.rows {
                backend::data_row(out, row);
            }
        }
        backend::command_complete(out, &self.tag);
    }
}

/// An error the console answers a command with.
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// Serves one admin until it leaves (or pgrouter shuts down).
pub async fn serve(
    control: Arc<Control>,
    mut stream: TcpStream,
    peer: SocketAddr,
    identity: Identity,
) {
    let registration = control.clients.register(ClientInfo {
        peer,
        user: identity.user.clone(),
        database: identity.database.clone(),
        application_name: identity.application_name.clone(),
    });
    let params = [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    if send_welcome(&mut stream, &params, &identity, registration.key)
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(%peer, user = %identity.user, "admin console connected");
    let mut in_buf = BytesMut::new();
    let slot = &registration.slot;
    loop {
        let frame = match frontend::frame(&in_buf, MAX_COMMAND) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let read = tokio::select! {
                    read = stream.read_buf(&mut in_buf) => read,
                    () = slot.closing() => break,
                };
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            Err(error) => {
                let mut out = BytesMut::new();
                backend::error_response(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &error.to_string(),
                );
                let _ = stream.write_all(&out).await;
                break;
            }
        };
        let message = in_buf.split_to(frame.len);
        let mut out = BytesMut::new();
        match frame.tag {
            frontend::TERMINATE => break,
            frontend::QUERY => {
                let text = frontend::query_text(&message).unwrap_or("");
                match commands::run(&control, text).await {
                    Ok(answer) => answer.encode(&mut out),
                    Err(refusal) => backend::error_response(
                        &mut out,
                        Severity::Error,
                        refusal.code,
                        &refusal.message,
                    ),
                }
                backend::ready_for_query(&mut out, STATUS_IDLE);
            }
            // The extended protocol: refused, and its batch skipped up to
            // the Sync, as a server skips a failed batch.
            frontend::SYNC => backend::ready_for_query(&mut out, STATUS_IDLE),
            frontend::PARSE => backend::error_response(
                &mut out,
                Severity::Error,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "the admin console speaks the simple query protocol only",
            ),
            frontend::FUNCTION_CALL => {
                backend::error_response(
                    &mut out,
                    Severity::Error,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the admin console has no functions to call",
                );
                backend::ready_for_query(&mut out, STATUS_IDLE);
            }
            // The rest of a refused batch, or stray COPY data: skipped.
            _ => {}
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            break;
        }
    }
    tracing::info!(%peer, user = %identity.user, "admin console disconnected");
}
