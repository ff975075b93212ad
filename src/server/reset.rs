//! Making a server connection fit for its next client after its client has
//! gone: roll back what it left open and run the pool's reset query. What
//! cannot be cleaned safely (a request still running, a half-read reply) is
//! reported so that the caller closes the connection instead.

use super::{connect::rejected, ServerConn, ServerError};
use crate::protocol::backend::STATUS_IDLE;
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn clean(conn: &mut ServerConn, reset_query: Option<&str>) -> Result<(), ServerError> {
    if conn.broken
        || !conn.state.at_rest()
        || !conn.scanner.at_boundary()
        || !conn.read_buf.is_empty()
    {
        return Err(ServerError::Protocol(
            "the client left in the middle of a request".into(),
        ));
    }
    if conn.state.transaction_status() != STATUS_IDLE {
        run(conn, "ROLLBACK").await?;
    }
    if let Some(sql) = reset_query.filter(|sql| !sql.trim().is_empty()) {
        run(conn, sql).await?;
    }
    Ok(())
}

/// Runs one simple query to completion, discarding its rows; fails on an
/// ErrorResponse or when the connection is not idle afterwards.
async fn run(conn: &mut ServerConn, sql: &str) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    conn.stream.write_all(&out).await?;
    let mut failure = None;
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
            Message::ErrorResponse(body) => failure = Some(rejected(&body)),
            Message::ReadyForQuery(body) => {
                if let Some(error) = failure {
                    return Err(error);
                }
                if body.status() != STATUS_IDLE {
                    return Err(ServerError::Protocol(format!(
                        "still in a transaction after {sql:?}"
                    )));
                }
                conn.state = Default::default();
                return Ok(());
            }
            _ => {}
        }
    }
}
