//! Giving a server connection the prepared statements a client's requests
//! need, and taking back the least recently used ones, in round trips the
//! client never sees.

use super::{connect::rejected, ServerConn, ServerError};
use crate::protocol::extended;
use crate::protocol::scan::Reply;
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Prepares the statement `name` with `parse` (a whole Parse message
/// under that name) on the connection, closing the least recently used
/// statements first so that at most `max` remain. The connection must
/// have no reply outstanding.
pub async fn prepare(
    conn: &mut ServerConn,
    name: &Arc<str>,
    parse: &[u8],
    max: usize,
) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    let victims = conn.statements.over(max.saturating_sub(1));
    for victim in &victims {
        extended::close_statement(&mut out, victim);
        conn.statements.forget(victim);
    }
    out.extend_from_slice(parse);
    // Inside a client's open batch a Sync would end its implicit
    // transaction: ask with Flush, and Sync only to recover from an error.
    let flush = !conn.state.at_rest();
    out.put_u8(if flush { b'H' } else { b'S' });
    out.put_i32(4);
    conn.stream.write_all(&out).await?;
    let mut closes = victims.len();
    loop {
        match next(conn).await? {
            Message::CloseComplete if closes > 0 => closes -= 1,
            Message::ParseComplete if flush => break,
            Message::ParseComplete => {}
            Message::ReadyForQuery(_) => break,
            Message::ErrorResponse(body) => {
                let error = rejected(&body);
                if flush {
                    conn.stream.write_all(&[b'S', 0, 0, 0, 4]).await?;
                }
                let status = expect_ready(conn).await?;
                // An error inside a transaction block failed it.
                conn.state.on_reply(Reply::ReadyForQuery(status));
                return Err(error);
            }
            _ => {}
        }
    }
    conn.statements.touch(name);
    Ok(())
}

/// Closes the least recently used statements beyond `max`; the connection
/// must be idle.
pub async fn evict(conn: &mut ServerConn, max: usize) -> Result<(), ServerError> {
    let victims = conn.statements.over(max);
    if victims.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    for victim in &victims {
        extended::close_statement(&mut out, victim);
        conn.statements.forget(victim);
    }
    out.put_u8(b'S');
    out.put_i32(4);
    conn.stream.write_all(&out).await?;
    expect_ready(conn).await.map(|_| ())
}

/// Reads up to ReadyForQuery and returns its transaction status.
async fn expect_ready(conn: &mut ServerConn) -> Result<u8, ServerError> {
    loop {
        if let Message::ReadyForQuery(body) = next(conn).await? {
            return Ok(body.status());
        }
    }
}

async fn next(conn: &mut ServerConn) -> Result<Message, ServerError> {
    loop {
        if let Some(message) = Message::parse(&mut conn.read_buf)? {
            return Ok(message);
        }
        if conn.stream.read_buf(&mut conn.read_buf).await? == 0 {
            return Err(ServerError::Protocol("server closed the connection".into()));
        }
    }
}
