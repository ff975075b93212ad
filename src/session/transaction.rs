//! A transaction that pgrouter answered BEGIN for without a server, and
//! what becomes of it: where PostgreSQL keeps a transaction's status, a
//! deferred transaction keeps it here until a server connection takes
//! over.

use crate::protocol::backend::{STATUS_FAILED, STATUS_IDLE, STATUS_IN_TRANSACTION};
use crate::protocol::frontend::QUERY;
use bytes::{BufMut, Bytes, BytesMut};

/// Put ahead of a failed transaction's next request on a server: the
/// server then holds the failed transaction itself and answers the
/// request exactly as PostgreSQL would (25P02, or ROLLBACK for COMMIT).
const FAIL_A_TRANSACTION: &str = "BEGIN; SELECT 1/0";

#[derive(Debug, Default)]
pub(super) enum LocalTransaction {
    /// pgrouter answered no BEGIN: the server connection's own status rules.
    #[default]
    None,
    /// A plain BEGIN answered by pgrouter: the transaction's first real
    /// statement decides where it runs, and the BEGIN goes with it.
    Deferred(Bytes),
    /// A deferred transaction whose statement failed before any server
    /// saw it (no connection could be had, no node may serve it). As on
    /// PostgreSQL, everything but its end answers 25P02 and COMMIT rolls
    /// back; nothing the client sent in it may ever run.
    Failed,
}

impl LocalTransaction {
    pub fn is_open(&self) -> bool {
        !matches!(self, LocalTransaction::None)
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, LocalTransaction::Failed)
    }

    /// The status a locally answered ReadyForQuery carries.
    pub fn status(&self) -> u8 {
        match self {
            LocalTransaction::None => STATUS_IDLE,
            LocalTransaction::Deferred(_) => STATUS_IN_TRANSACTION,
            LocalTransaction::Failed => STATUS_FAILED,
        }
    }

    /// A statement of the transaction failed without a server.
    pub fn fail(&mut self) {
        if self.is_open() {
            *self = LocalTransaction::Failed;
        }
    }

    /// The transaction ended (COMMIT, ROLLBACK) without a server.
    pub fn end(&mut self) {
        *self = LocalTransaction::None;
    }

    /// What goes to the server ahead of the client's request when a
    /// server connection takes the transaction over: one Query, whose
    /// replies the client must not see.
    pub fn take_prelude(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            LocalTransaction::None => None,
            LocalTransaction::Deferred(begin) => Some(begin),
            LocalTransaction::Failed => {
                let mut query = BytesMut::with_capacity(FAIL_A_TRANSACTION.len() + 6);
                query.put_u8(QUERY);
                query.put_i32((4 + FAIL_A_TRANSACTION.len() + 1) as i32);
                query.put_slice(FAIL_A_TRANSACTION.as_bytes());
                query.put_u8(0);
                Some(query.freeze())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend;

    #[test]
    fn a_failed_transaction_stays_failed_until_it_ends() {
        let mut txn = LocalTransaction::None;
        txn.fail();
        assert!(!txn.is_open(), "no transaction, nothing to fail");
        txn = LocalTransaction::Deferred(Bytes::from_static(b"Q\0\0\0\x0aBEGIN\0"));
        assert_eq!(txn.status(), STATUS_IN_TRANSACTION);
        txn.fail();
        assert!(txn.is_failed());
        assert_eq!(txn.status(), STATUS_FAILED);
        let prelude = txn
            .take_prelude()
            .expect("a failed transaction has a prelude");
        let frame = frontend::frame(&prelude, usize::MAX).unwrap().unwrap();
        assert_eq!(frame.len, prelude.len());
        assert_eq!(frontend::query_text(&prelude), Some(FAIL_A_TRANSACTION));
        assert!(!txn.is_open(), "the server holds it now");
        txn = LocalTransaction::Failed;
        txn.end();
        assert_eq!(txn.status(), STATUS_IDLE);
    }
}
