//! Queries pgrouter runs on a server connection for itself (rollback,
//! reset, reading the WAL position), never seen by any client.

use super::{connect::rejected, ServerConn, ServerError};
use crate::protocol::backend::STATUS_IDLE;
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one simple query to completion and returns the first column of
/// its first row, if any. Fails on an ErrorResponse, and when `must_idle`
/// and the connection is in a transaction afterwards.
pub async fn query(
    conn: &mut ServerConn,
    sql: &str,
    must_idle: bool,
) -> Result<Option<String>, ServerError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    conn.stream.write_all(&out).await?;
    let mut failure = None;
    let mut first = None;
    loop {
        let message = match Message::parse(&mut conn.read_buf)? {
            Some(message) => message,
            None => {
                if conn.stream.read_buf(&mut conn.read_buf).await? == 0 {
                    return Err(ServerError::Protocol("server closed the connection".into()));
                }
                continue;
            }
        };
        match message {
            Message::DataRow(row) if first.is_none() => {
                first = Some(first_column(&row)?);
            }
            Message::ErrorResponse(body) => failure = Some(rejected(&body)),
            Message::ReadyForQuery(body) => {
                if let Some(error) = failure {
                    return Err(error);
                }
                if must_idle && body.status() != STATUS_IDLE {
                    return Err(ServerError::Protocol(format!(
                        "still in a transaction after {sql:?}"
                    )));
                }
                return Ok(first.flatten());
            }
            _ => {}
        }
    }
}

fn first_column(
    row: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Option<String>, ServerError> {
    use fallible_iterator::FallibleIterator;
    let buffer = row.buffer();
    let mut ranges = row.ranges();
    match ranges.next()? {
        Some(Some(range)) => Ok(buffer
            .get(range)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())),
        _ => Ok(None),
    }
}
