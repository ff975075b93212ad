//! Starting a request: the statements pgrouter answers itself (`SET
//! pgrouter.route`, a deferred BEGIN and the COMMIT or ROLLBACK of an empty
//! one), routing, and checking out a server connection on the chosen node.

use super::login::checkout_sqlstate;
use super::serve::{End, Request, Session};
use crate::client::ClientError;
use crate::config::{PoolMode, Route};
use crate::pool::CheckoutError;
use crate::protocol::backend::{self, sqlstate, Severity, STATUS_IDLE, STATUS_IN_TRANSACTION};
use crate::protocol::frontend::{self, Frame};
use crate::router::classify::{Classification, Kind, RouteSetting};
use crate::router::{Decision, RouteError, Target};
use bytes::{Buf, BytesMut};
use std::sync::Arc;

impl Session {
    /// Routes the request that starts with `first` and checks out a server
    /// connection for it, or answers it without one.
    pub(super) async fn acquire(&mut self, first: Frame) -> Result<(), End> {
        // Without a split nothing depends on the SQL: it is not even looked at.
        let sql = match self.router().splits() {
            true => frontend::query_text(&self.in_buf[..first.len]),
            false => None,
        };
        let class = sql.map(|sql| self.router().classify(sql));
        if first.tag == frontend::QUERY {
            if let Some(class) = &class {
                if self.answer_locally(first, class).await? {
                    return Ok(());
                }
            }
        }
        let deferred = self.deferred_begin.is_some();
        let decision = match self.mode {
            PoolMode::Session => self.router().session_node(&self.route, self.peer.ip()),
            PoolMode::Transaction if deferred => {
                // The transaction's first statement decides where it runs.
                let read_only = class
                    .as_ref()
                    .is_some_and(|c| c.kind == Kind::SetTransactionReadOnly);
                let begin = Classification {
                    kind: Kind::Begin { read_only },
                    functions: Vec::new(),
                    hint: class.as_ref().and_then(|c| c.hint),
                    statements: 1,
                };
                let router = self.shared.router.clone();
                router
                    .decide(Some(&begin), &mut self.route, self.peer.ip())
                    .await
            }
            PoolMode::Transaction => {
                let router = self.shared.router.clone();
                router
                    .decide(class.as_deref(), &mut self.route, self.peer.ip())
                    .await
            }
        };
        let decision = match decision {
            Ok(decision) => decision,
            Err(error) => {
                let code = match error {
                    RouteError::NoPrimary => sqlstate::CONNECTION_FAILURE,
                    RouteError::NoReplica => sqlstate::CANNOT_CONNECT_NOW,
                };
                return self.reject_request(first, code, &error.to_string()).await;
            }
        };
        self.check_out(first, decision, class).await
    }

    async fn check_out(
        &mut self,
        first: Frame,
        mut decision: Decision,
        class: Option<Arc<Classification>>,
    ) -> Result<(), End> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let pool = self.pools.nodes[decision.node].clone();
            match pool.checkout().await {
                Ok(server) => {
                    self.cancel.slot.set(Some(server.cancel_target().clone()));
                    self.server = Some(server);
                    let started = self.router().started(decision.node);
                    self.request = Some(Request { decision, started });
                    if let Some(begin) = self.deferred_begin.take() {
                        let mut joined = BytesMut::with_capacity(begin.len() + self.in_buf.len());
                        joined.extend_from_slice(&begin);
                        joined.extend_from_slice(&self.in_buf);
                        self.in_buf = joined;
                        self.swallow = 1;
                    }
                    return Ok(());
                }
                Err(error) => {
                    if let CheckoutError::Server { .. } = error {
                        self.shared
                            .topology
                            .ban(decision.node, "cannot open a server connection");
                        // A read may go to another replica (or the primary).
                        if decision.target == Target::Replica && attempts == 1 {
                            let router = self.shared.router.clone();
                            let rerouted = router
                                .decide(class.as_deref(), &mut self.route, self.peer.ip())
                                .await;
                            if let Ok(next) = rerouted {
                                decision = next;
                                continue;
                            }
                        }
                    }
                    tracing::warn!(peer = %self.peer, %error, "no server connection for client");
                    let code = checkout_sqlstate(&error);
                    return self.reject_request(first, code, &error.to_string()).await;
                }
            }
        }
    }

    /// Answers what needs no server: `SET pgrouter.route`, a plain BEGIN
    /// (deferred until the transaction's first statement), and the COMMIT
    /// or ROLLBACK of a transaction that never got one. Returns whether it
    /// answered.
    async fn answer_locally(&mut self, first: Frame, class: &Classification) -> Result<bool, End> {
        let in_transaction = self.deferred_begin.is_some();
        let mut out = BytesMut::new();
        match class.kind {
            Kind::SetRoute(setting) => {
                self.route.setting = match setting {
                    RouteSetting::Primary => Route::Primary,
                    RouteSetting::Replica => Route::Replica,
                    RouteSetting::Auto => Route::Auto,
                };
                self.in_buf.advance(first.len);
                backend::command_complete(&mut out, "SET");
                let status = if in_transaction {
                    STATUS_IN_TRANSACTION
                } else {
                    STATUS_IDLE
                };
                backend::ready_for_query(&mut out, status);
            }
            Kind::Begin { read_only: false }
                if !in_transaction && class.statements == 1 && self.defers_begin(class) =>
            {
                self.deferred_begin = Some(self.in_buf.split_to(first.len).freeze());
                backend::command_complete(&mut out, "BEGIN");
                backend::ready_for_query(&mut out, STATUS_IN_TRANSACTION);
            }
            Kind::TransactionControl if in_transaction && class.statements == 1 => {
                let sql = frontend::query_text(&self.in_buf[..first.len]).unwrap_or("");
                let Some(tag) = ending_tag(sql) else {
                    return Ok(false);
                };
                self.in_buf.advance(first.len);
                self.deferred_begin = None;
                backend::command_complete(&mut out, tag);
                backend::ready_for_query(&mut out, STATUS_IDLE);
            }
            _ => return Ok(false),
        }
        self.write(&out).await?;
        Ok(true)
    }

    /// A plain BEGIN is held back only where its first statement can still
    /// change where the transaction runs.
    fn defers_begin(&self, class: &Classification) -> bool {
        self.mode == PoolMode::Transaction
            && self.router().splits()
            && self.route.setting == Route::Auto
            && !self.route.read_only_default
            && class.hint.is_none()
    }

    /// Answers a request that cannot be served as PostgreSQL answers a
    /// failed one: ErrorResponse, the rest of an extended-protocol batch
    /// discarded up to its Sync, then ReadyForQuery.
    pub(super) async fn reject_request(
        &mut self,
        first: Frame,
        code: &str,
        message: &str,
    ) -> Result<(), End> {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Error, code, message);
        let mut frame = first;
        loop {
            self.in_buf.advance(frame.len);
            if frame.tag == frontend::QUERY || frame.tag == frontend::SYNC {
                break;
            }
            if frame.tag == frontend::FLUSH {
                // The client may wait for replies before it sends Sync.
                self.write(&out).await?;
                out.clear();
            }
            frame = match self.next_request().await {
                Ok(frame) if frame.tag == frontend::TERMINATE => return Err(End::Terminated),
                Ok(frame) => frame,
                Err(ClientError::Protocol(error)) => return Err(End::Protocol(error.to_string())),
                Err(_) => return Err(End::Gone),
            };
        }
        // A failed statement inside a deferred transaction leaves it
        // failed, as PostgreSQL would; the client's ROLLBACK ends it.
        let status = if self.deferred_begin.is_some() {
            backend::STATUS_FAILED
        } else {
            STATUS_IDLE
        };
        backend::ready_for_query(&mut out, status);
        self.write(&out).await
    }
}

/// The command tag PostgreSQL gives a plain transaction-ending statement
/// (`COMMIT`, `END`, `ROLLBACK`, `ABORT`, with an optional `WORK` or
/// `TRANSACTION`); `None` for anything more (savepoints, AND CHAIN).
fn ending_tag(sql: &str) -> Option<&'static str> {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let tag = match words.first()?.as_str() {
        "commit" | "end" => "COMMIT",
        "rollback" | "abort" => "ROLLBACK",
        _ => return None,
    };
    match words.get(1).map(String::as_str) {
        None => Some(tag),
        Some("work" | "transaction") if words.len() == 2 => Some(tag),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ending_tag;

    #[test]
    fn ending_tags_are_postgres_tags() {
        assert_eq!(ending_tag("COMMIT"), Some("COMMIT"));
        assert_eq!(ending_tag("  end;"), Some("COMMIT"));
        assert_eq!(ending_tag("rollback"), Some("ROLLBACK"));
        assert_eq!(ending_tag("ABORT"), Some("ROLLBACK"));
        assert_eq!(ending_tag("SAVEPOINT a"), None);
        assert_eq!(ending_tag("ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(ending_tag("commit work;"), Some("COMMIT"));
        assert_eq!(ending_tag("COMMIT AND CHAIN"), None);
    }
}
