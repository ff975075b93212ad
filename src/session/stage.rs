//! Where one client stands with the servers, as one value: waiting (no
//! server connection, perhaps inside a transaction pgrouter answered BEGIN
//! for) or serving (a server connection and the request it runs, with
//! everything that request needs). What belongs to a request lives and
//! dies with it, so that no field can outlive or contradict it: a deferred
//! BEGIN cannot coexist with a server connection, a pending SET cannot
//! survive a request that never got one, a pin cannot exist without the
//! connection it pins to.

use super::settings::Setting;
use super::transaction::LocalTransaction;
use crate::pool::PooledServer;
use crate::router::Decision;
use tokio::time::Instant;

pub(super) enum Stage {
    /// No server connection held.
    Waiting(Waiting),
    /// A server connection serves the client: for a request (transaction
    /// mode), for the session (session mode), or for good (pinned).
    Serving(Serving),
}

#[derive(Default)]
pub(super) struct Waiting {
    pub transaction: LocalTransaction,
    /// The request at the front of the client's buffer already ran once
    /// and failed before answering: it is not guarded for a retry again.
    pub retry: bool,
}

pub(super) struct Serving {
    pub server: PooledServer,
    pub request: Request,
    /// Replies to cut before the client's: one per request pgrouter put in
    /// front of the client's bytes (a deferred BEGIN, see `Relay::swallow`).
    pub swallow: u32,
    /// A SET or RESET of the request, recorded if it succeeds.
    pub pending_setting: Option<PendingSetting>,
    /// The request's first message was routed and its effect on the
    /// session looked at: the relay need not look again.
    pub first_checked: bool,
    /// Why the client keeps this connection until it disconnects.
    pub pinned: Option<&'static str>,
    /// What ran may have written: read-your-writes starts from its end.
    /// The decision's word, or a statement pipelined behind it that may.
    pub wrote: bool,
}

pub(super) struct Request {
    pub decision: Decision,
    pub started: Instant,
    /// The server's error count when the request started.
    pub errors_before: u32,
    /// Replies are held until judged, so that the request can run
    /// elsewhere (see `Relay::guard`).
    pub guarded: bool,
    /// `started`, until the first relay of the request takes it as the
    /// time its first query went out (one clock read less per request).
    pub unrelayed: Option<Instant>,
}

pub(super) enum PendingSetting {
    /// The SET as the client wrote it (the relay knows it by its text),
    /// and as it is replayed.
    Set(String, Setting),
    /// `None`: RESET ALL.
    Reset(Option<String>),
}

/// What a waiting client's transaction is while it is served: the
/// server's status rules then.
static NO_TRANSACTION: LocalTransaction = LocalTransaction::None;

impl Stage {
    /// The transaction pgrouter answered for (none while serving).
    pub fn transaction(&self) -> &LocalTransaction {
        match self {
            Stage::Waiting(waiting) => &waiting.transaction,
            Stage::Serving(_) => &NO_TRANSACTION,
        }
    }

    /// The transaction pgrouter answers for, when waiting.
    pub fn transaction_mut(&mut self) -> Option<&mut LocalTransaction> {
        match self {
            Stage::Waiting(waiting) => Some(&mut waiting.transaction),
            Stage::Serving(_) => None,
        }
    }

    pub fn serving(&mut self) -> Option<&mut Serving> {
        match self {
            Stage::Serving(serving) => Some(serving),
            Stage::Waiting(_) => None,
        }
    }

    /// Leaves the serving stage: what it held, and a waiting stage that
    /// is not inside any transaction (a connection is given back only
    /// outside one).
    pub fn stop_serving(&mut self, retry: bool) -> Option<Serving> {
        let waiting = Stage::Waiting(Waiting {
            transaction: LocalTransaction::None,
            retry,
        });
        match std::mem::replace(self, waiting) {
            Stage::Serving(serving) => Some(serving),
            Stage::Waiting(waiting) => {
                *self = Stage::Waiting(Waiting { retry, ..waiting });
                None
            }
        }
    }
}
