//! What a server connection owes its client: the replies still to come and
//! the transaction status. From this the session knows when the connection
//! can go back to the pool without anything of the client left on it.

use crate::protocol::backend::STATUS_IDLE;
use crate::protocol::frontend;
use crate::protocol::scan::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// ReadyForQuery replies still owed: one per Query, Sync and FunctionCall sent.
    ready_owed: u32,
    /// Extended-protocol messages were sent since the last Sync.
    batch_open: bool,
    /// Syncs sent since the last Execute. PostgreSQL ignores a Sync that
    /// reaches it during COPY FROM STDIN, and libpq sends one more after
    /// CopyDone, so these are forgiven when the copy ends.
    syncs_since_execute: u32,
    /// The server said CopyInResponse and the client has not ended the copy.
    copy_in: bool,
    /// The status of the last ReadyForQuery.
    transaction_status: u8,
    /// The server said a cached plan's result type changed: the statement
    /// last bound is stale.
    stale_plan: bool,
    /// ErrorResponses seen so far, to tell whether a request succeeded.
    errors: u32,
    /// An ErrorResponse came since the last ReadyForQuery.
    failing: bool,
    /// Parse messages sent whose ParseComplete has not come yet and still
    /// may (an error makes PostgreSQL skip the rest of the batch).
    parses_owed: u32,
    /// Parse messages sent since the last Sync or Query.
    batch_parses: u32,
    /// The batch the last ReadyForQuery ended had an error: PostgreSQL
    /// skipped the rest of it.
    last_batch_failed: bool,
}

/// See `ServerState::parse_position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsePosition {
    After { readies: u32, parses: u32 },
    Skipped,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            ready_owed: 0,
            batch_open: false,
            syncs_since_execute: 0,
            copy_in: false,
            stale_plan: false,
            errors: 0,
            failing: false,
            parses_owed: 0,
            batch_parses: 0,
            last_batch_failed: false,
            transaction_status: STATUS_IDLE,
        }
    }
}

impl ServerState {
    /// Records a message forwarded from the client to the server.
    pub fn on_client_message(&mut self, tag: u8) {
        match tag {
            frontend::QUERY | frontend::FUNCTION_CALL => {
                self.ready_owed += 1;
                self.batch_parses = 0;
                self.syncs_since_execute = 0;
            }
            frontend::SYNC => {
                self.ready_owed += 1;
                self.batch_parses = 0;
                self.batch_open = false;
                self.syncs_since_execute += 1;
            }
            frontend::EXECUTE => {
                self.batch_open = true;
                self.syncs_since_execute = 0;
            }
            frontend::COPY_DONE | frontend::COPY_FAIL if self.copy_in => {
                self.copy_in = false;
                self.ready_owed = self.ready_owed.saturating_sub(self.syncs_since_execute);
                self.syncs_since_execute = 0;
            }
            frontend::PARSE => {
                self.batch_open = true;
                self.parses_owed += 1;
                self.batch_parses += 1;
            }
            frontend::BIND | frontend::DESCRIBE | frontend::CLOSE | frontend::FLUSH => {
                self.batch_open = true
            }
            _ => {}
        }
    }

    /// Records a reply the server sent.
    pub fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::ReadyForQuery(status) => {
                self.ready_owed = self.ready_owed.saturating_sub(1);
                self.transaction_status = status;
                self.copy_in = false;
                self.last_batch_failed = std::mem::take(&mut self.failing);
                self.parses_owed = 0;
            }
            Reply::CopyIn => self.copy_in = true,
            Reply::ParseComplete => self.parses_owed = self.parses_owed.saturating_sub(1),
            Reply::Error(code) => {
                self.errors = self.errors.wrapping_add(1);
                self.failing = true;
                self.parses_owed = 0;
                self.stale_plan |= &code == b"0A000";
            }
            _ => {}
        }
    }

    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Whether a stale cached plan was reported since the last call.
    pub fn take_stale_plan(&mut self) -> bool {
        std::mem::take(&mut self.stale_plan)
    }

    /// Where a Parse sent now stands in the reply stream: the
    /// ReadyForQuerys still to come before its batch's replies, the
    /// ParseCompletes to come in its batch before its own, and whether
    /// its batch has already failed (then PostgreSQL skips it).
    pub fn parse_position(&self) -> ParsePosition {
        if self.ready_owed > 0 {
            // Nothing of the open batch has been answered yet.
            ParsePosition::After {
                readies: self.ready_owed,
                parses: self.batch_parses,
            }
        } else if self.failing {
            ParsePosition::Skipped
        } else {
            ParsePosition::After {
                readies: 0,
                parses: self.parses_owed,
            }
        }
    }

    /// Whether the batch the last ReadyForQuery ended had an error.
    pub fn last_batch_failed(&self) -> bool {
        self.last_batch_failed
    }

    /// The server waits for the client's COPY data.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// Extended-protocol messages were sent since the last Sync.
    pub fn in_batch(&self) -> bool {
        self.batch_open
    }

    /// Some ReadyForQuery is still to come.
    pub fn awaiting_ready(&self) -> bool {
        self.ready_owed > 0
    }

    /// Nothing is in flight: every request has been answered.
    pub fn at_rest(&self) -> bool {
        self.ready_owed == 0 && !self.batch_open
    }

    /// At rest and outside any transaction: the connection may serve
    /// another client.
    pub fn is_idle(&self) -> bool {
        self.at_rest() && self.transaction_status == STATUS_IDLE
    }

    pub fn transaction_status(&self) -> u8 {
        self.transaction_status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{STATUS_FAILED, STATUS_IN_TRANSACTION};

    fn sent(state: &mut ServerState, tags: &[u8]) {
        for &tag in tags {
            state.on_client_message(tag);
        }
    }

    #[test]
    fn simple_query_is_idle_after_its_ready_for_query() {
        let mut state = ServerState::default();
        sent(&mut state, b"Q");
        assert!(!state.is_idle());
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn transaction_keeps_the_connection_until_it_ends() {
        let mut state = ServerState::default();
        sent(&mut state, b"Q");
        state.on_reply(Reply::ReadyForQuery(STATUS_IN_TRANSACTION));
        assert!(state.at_rest() && !state.is_idle());
        sent(&mut state, b"Q");
        state.on_reply(Reply::ReadyForQuery(STATUS_FAILED));
        assert!(!state.is_idle());
        sent(&mut state, b"Q");
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn extended_batch_stays_until_sync_is_answered() {
        let mut state = ServerState::default();
        sent(&mut state, b"PBDE");
        assert!(!state.at_rest());
        sent(&mut state, b"H");
        assert!(!state.at_rest());
        sent(&mut state, b"S");
        assert!(!state.at_rest());
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn a_batch_with_an_error_is_remembered_as_failed() {
        let mut state = ServerState::default();
        sent(&mut state, b"PBE");
        assert!(state.in_batch());
        sent(&mut state, b"S");
        state.on_reply(Reply::Error(*b"22012"));
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.last_batch_failed() && !state.in_batch());
        sent(&mut state, b"PBES");
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(!state.last_batch_failed());
    }

    #[test]
    fn pipelined_queries_need_every_ready_for_query() {
        let mut state = ServerState::default();
        sent(&mut state, b"PBESPBES");
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(!state.is_idle());
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn sync_swallowed_by_extended_copy_is_forgiven() {
        let mut state = ServerState::default();
        // libpq: Parse/Bind/Describe/Execute/Sync, the data, CopyDone, Sync.
        sent(&mut state, b"PBDES");
        state.on_reply(Reply::CopyIn);
        sent(&mut state, b"ddcS");
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn copy_done_outside_copy_forgives_nothing() {
        let mut state = ServerState::default();
        sent(&mut state, b"PBESc");
        assert!(!state.at_rest());
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }

    #[test]
    fn simple_copy_is_one_round() {
        let mut state = ServerState::default();
        sent(&mut state, b"PBES");
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        sent(&mut state, b"Q");
        state.on_reply(Reply::CopyIn);
        sent(&mut state, b"ddc");
        assert!(!state.is_idle());
        state.on_reply(Reply::ReadyForQuery(STATUS_IDLE));
        assert!(state.is_idle());
    }
}
