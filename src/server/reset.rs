//! Making a server connection fit for its next client after its client has
//! gone: roll back what it left open and run the pool's reset query. What
//! cannot be cleaned safely (a request still running, a half-read reply) is
//! reported so that the caller closes the connection instead.

use super::{simple, ServerConn, ServerError};
use crate::protocol::backend::STATUS_IDLE;

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
        simple::query(conn, "ROLLBACK", true).await?;
    }
    if let Some(sql) = reset_query.filter(|sql| !sql.trim().is_empty()) {
        simple::query(conn, sql, true).await?;
        // DISCARD ALL and DEALLOCATE drop prepared statements.
        conn.statements.clear();
        conn.settings = None;
    }
    conn.state = Default::default();
    Ok(())
}
