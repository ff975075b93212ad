//! Making a server connection fit for its next client after its client has
//! gone: roll back what it left open and run the pool's reset query. What
//! cannot be cleaned safely (a request still running, a half-read reply) is
//! reported so that the caller closes the connection instead.

use super::{simple, ServerConn, ServerError};
use crate::protocol::backend::STATUS_IDLE;
use crate::protocol::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Brings a connection whose client left mid-request to rest: a batch
/// the client left open gets the Sync it never sent, and every reply
/// still owed is read and dropped. The caller bounds the time this takes.
async fn settle(conn: &mut ServerConn) -> Result<(), ServerError> {
    // What is buffered was scanned already; the client is not there to
    // read it.
    conn.read_buf.clear();
    if conn.state.in_batch() {
        let mut sync = bytes::BytesMut::new();
        frontend::sync_message(&mut sync);
        conn.stream.write_all(&sync).await?;
        conn.state.on_client_message(frontend::SYNC);
    }
    while !(conn.state.at_rest() && conn.scanner.at_boundary()) {
        if conn.stream.read_buf(&mut conn.read_buf).await? == 0 {
            return Err(ServerError::Protocol("server closed the connection".into()));
        }
        let state = &mut conn.state;
        conn.scanner
            .scan(&conn.read_buf, |reply| state.on_reply(reply))
            .map_err(|error| ServerError::Protocol(error.to_string()))?;
        conn.read_buf.clear();
    }
    Ok(())
}

pub async fn clean(conn: &mut ServerConn, reset_query: Option<&str>) -> Result<(), ServerError> {
    if conn.broken || conn.state.in_copy_in() {
        return Err(ServerError::Protocol(
            "the client left in the middle of a request".into(),
        ));
    }
    settle(conn).await?;
    if conn.state.transaction_status() != STATUS_IDLE {
        simple::query(conn, "ROLLBACK", true).await?;
    }
    if let Some(sql) = reset_query.filter(|sql| !sql.trim().is_empty()) {
        simple::query(conn, sql, true).await?;
        // DISCARD ALL and DEALLOCATE drop prepared statements.
        conn.statements.clear();
        conn.settings = super::AppliedSettings::Default;
    }
    conn.state = Default::default();
    Ok(())
}
