//! Starting a request: the statements pgrouter answers itself (`SET
//! pgrouter.route`, a deferred BEGIN and the COMMIT or ROLLBACK of an empty
//! one), routing, and checking out a server connection on the chosen node.

use super::pin::{self, SessionEffect};
use super::serve::{End, Session};
use super::settings;
use super::stage::{PendingSetting, Request, Serving, Stage};
use super::transaction::LocalTransaction;
use crate::client::ClientError;
use crate::clients::ClientState;
use crate::config::{Pinning, PoolMode, Route};
use crate::pool::CheckoutError;
use crate::protocol::backend::{self, sqlstate, Severity, STATUS_IDLE, STATUS_IN_TRANSACTION};
use crate::protocol::extended;
use crate::protocol::frontend::{self, Frame};
use crate::router::classify::{Classification, Kind, RouteSetting};
use crate::router::{Decision, RouteError, Target};
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tokio::time::Instant;

/// See `Session::look_at`.
struct Look {
    explain: bool,
    class: Option<Arc<Classification>>,
    effect: SessionEffect,
    pending_setting: Option<PendingSetting>,
}

impl Session {
    /// Routes the request that starts with `first` and checks out a server
    /// connection for it, or answers it without one.
    pub(super) async fn acquire(&mut self, first: Frame) -> Result<(), End> {
        if self.stage.transaction().is_failed() && first.tag == frontend::QUERY {
            return self.answer_failed_transaction(first).await;
        }
        if first.tag != frontend::QUERY
            && self.mode == PoolMode::Transaction
            && self.router().splits()
        {
            // Every statement of the request decides where it runs.
            match self.read_request().await {
                Ok(()) => {}
                Err(ClientError::Protocol(error)) => return Err(End::Protocol(error.to_string())),
                Err(_) => return Err(End::Gone),
            }
        }
        self.classify_long_texts(first).await;
        let Look {
            explain,
            class,
            mut effect,
            pending_setting,
        } = self.look_at(first);
        if explain && first.tag == frontend::QUERY && self.explain_locally(first).await? {
            return Ok(());
        }
        if first.tag == frontend::QUERY {
            if let Some(class) = &class {
                if self.answer_locally(first, class).await? {
                    return Ok(());
                }
            }
        }
        if first.tag == frontend::PARSE {
            if explain && self.explain_batch(first).await? {
                return Ok(());
            }
            let named = self
                .in_buf
                .get(crate::protocol::HEADER_LEN)
                .is_some_and(|&b| b != 0);
            if named && self.mode == PoolMode::Transaction && self.prepare_locally(first).await? {
                return Ok(());
            }
        }
        if matches!(pending_setting, Some(PendingSetting::Set(..))) {
            effect = SessionEffect::None;
        }
        if let Some(reason) = self.identity.startup_pin {
            effect = SessionEffect::Pin(reason);
        }
        match effect {
            SessionEffect::Pin(reason)
                if self.pools.nodes[0].settings.pinning == Pinning::Error =>
            {
                let message = format!(
                    "{reason} is not allowed here: it would tie this session to one server \
                     connection, and pinning = \"error\" for database \"{}\"",
                    self.identity.database
                );
                return self
                    .reject_request(first, sqlstate::FEATURE_NOT_SUPPORTED, &message)
                    .await;
            }
            SessionEffect::Deallocate
                if first.tag == frontend::QUERY && self.deallocate_locally(first).await? =>
            {
                return Ok(());
            }
            SessionEffect::Discard => {
                // DISCARD ALL takes the session back to its startup state.
                self.statements.clear();
                self.settings.reset(None);
            }
            _ => {}
        }
        let deferred = self.stage.transaction().is_open();
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
                    session: None,
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
                    RouteError::NoPrimary | RouteError::Contested => sqlstate::CONNECTION_FAILURE,
                    RouteError::NoReplica => sqlstate::CANNOT_CONNECT_NOW,
                };
                return self.reject_request(first, code, &error.to_string()).await;
            }
        };
        self.pools.stats.count_decision(decision.reason);
        self.check_out(first, decision, class, pending_setting)
            .await?;
        let transaction_mode = self.mode == PoolMode::Transaction;
        let Some(serving) = self.stage.serving() else {
            // Answered without a server (no connection could be had).
            return Ok(());
        };
        // Nothing for the relay to do about the routed statement: it need
        // not scan it again (a deferred BEGIN now comes first, though).
        serving.first_checked =
            transaction_mode && serving.swallow == 0 && matches!(effect, SessionEffect::None);
        match effect {
            SessionEffect::Pin(reason) => {
                tracing::debug!(peer = %self.peer, reason, "client pinned to its server connection");
                serving.pinned = Some(reason);
                self.cancel.slot.set_pinned(reason);
            }
            SessionEffect::Discard => {
                serving.server.statements.clear();
                serving.server.settings = crate::server::AppliedSettings::Unknown;
            }
            SessionEffect::Reset if serving.pending_setting.is_none() => {
                serving.server.settings = crate::server::AppliedSettings::Unknown;
            }
            _ => {}
        }
        Ok(())
    }

    /// What the request's first message says, from one reading of its
    /// SQL text: whether it is an EXPLAIN ROUTE, its class when routing
    /// needs it, and what it does to the session.
    fn look_at(&self, first: Frame) -> Look {
        let mut look = Look {
            explain: false,
            class: None,
            effect: SessionEffect::None,
            pending_setting: None,
        };
        let message = &self.in_buf[..first.len];
        let splits = self.router().splits();
        let transaction_mode = self.mode == PoolMode::Transaction;
        let Some(text) = frontend::query_bytes(message) else {
            // A Bind, Describe or Close of a named statement: its class was
            // made when the client parsed it, and a Bind does what its
            // text says.
            let class = extended::statement_name(message)
                .and_then(|name| self.statements.get(name))
                .and_then(|statement| statement.class.as_ref());
            if transaction_mode {
                look.effect = class.map_or(SessionEffect::None, |class| pin::effect(class, None));
            }
            if splits {
                look.class = self.request_class(first, class.cloned());
            }
            return look;
        };
        // Bytes first: most texts need no UTF-8 check when routing is off.
        let may_explain = crate::router::explain::may_explain(text);
        let may_change = transaction_mode && !splits && pin::may_change_session(text);
        if !(splits || may_explain || may_change) {
            return look;
        }
        let Ok(sql) = std::str::from_utf8(text) else {
            return look;
        };
        if may_explain && crate::router::explain::explained(sql).is_some() {
            look.explain = true;
            return look;
        }
        if splits {
            look.class = Some(self.router().classify(sql));
        }
        if !transaction_mode {
            return look;
        }
        look.effect = match &look.class {
            Some(class) => pin::effect(class, Some(sql)),
            None if may_change => pin::effect(&self.router().classify(sql), Some(sql)),
            None => SessionEffect::None,
        };
        if splits && first.tag != frontend::QUERY {
            look.class = self.request_class(first, look.class.take());
        }
        // A plain SET or RESET sent alone outside a transaction is
        // replayed on later connections instead of pinning.
        if first.tag == frontend::QUERY && !self.stage.transaction().is_open() {
            let single = look.class.as_ref().is_none_or(|c| c.statements == 1);
            look.pending_setting = match look.effect {
                SessionEffect::Pin(_) if single => settings::replayable_set(sql)
                    .map(|setting| PendingSetting::Set(sql.to_owned(), setting)),
                SessionEffect::Reset if single => {
                    settings::reset_parameter(sql).map(PendingSetting::Reset)
                }
                _ => None,
            };
        }
        look
    }

    /// Has the long SQL texts of the request classified off the runtime
    /// thread before they are looked at (the look then finds them in the
    /// cache): a long statement waits for its own parse, not every client.
    async fn classify_long_texts(&self, first: Frame) {
        let router = self.shared.router.clone();
        let transaction_mode = self.mode == PoolMode::Transaction;
        let mut rest = &self.in_buf[..];
        let mut frame = Some(first);
        while let Some(f) = frame {
            // The message's length bounds its text's: short requests (nearly
            // all) cost no look at their bytes here.
            let long = router.parses_off_thread(f.len);
            if long && matches!(f.tag, frontend::QUERY | frontend::PARSE) {
                let text = frontend::query_bytes(&rest[..f.len]).filter(|text| {
                    router.parses_off_thread(text.len())
                        && (router.splits() || transaction_mode && pin::may_change_session(text))
                });
                if let Some(text) = text {
                    router.classify_bytes_async(text).await;
                }
            }
            if matches!(f.tag, frontend::QUERY | frontend::SYNC) {
                break;
            }
            rest = &rest[f.len..];
            frame = frontend::session_frame(rest, self.max_message)
                .ok()
                .flatten();
        }
    }

    /// The class of the whole extended-protocol request that starts with
    /// `first` (whose own class is `first_class`): every statement through
    /// its Sync, as far as it has arrived, decides where it runs, so that
    /// a batch that reads and then writes goes to the primary in one
    /// implicit transaction. What arrives later is checked by the relay.
    /// `None` (the primary) when a statement cannot be classified.
    fn request_class(
        &self,
        first: Frame,
        first_class: Option<Arc<Classification>>,
    ) -> Option<Arc<Classification>> {
        let first_class = first_class?;
        let mut others: Vec<Arc<Classification>> = Vec::new();
        let mut rest = &self.in_buf[first.len..];
        while let Ok(Some(frame)) = frontend::session_frame(rest, self.max_message) {
            let message = &rest[..frame.len];
            let class = match frame.tag {
                frontend::SYNC | frontend::QUERY => break,
                frontend::PARSE => Some(
                    self.router()
                        .classify_bytes(frontend::query_bytes(message)?)?,
                ),
                frontend::BIND => match extended::statement_name(message)? {
                    // The unnamed statement is parsed in the request.
                    "" => None,
                    name => Some(self.statements.get(name)?.class.clone()?),
                },
                frontend::FUNCTION_CALL => return None,
                _ => None,
            };
            if let Some(class) = class.filter(|class| !Arc::ptr_eq(class, &first_class)) {
                others.push(class);
            }
            rest = &rest[frame.len..];
        }
        if others.is_empty() {
            return Some(first_class);
        }
        let parts = std::iter::once(&*first_class).chain(others.iter().map(|class| &**class));
        Some(Arc::new(Classification::merged(parts)))
    }

    async fn check_out(
        &mut self,
        first: Frame,
        mut decision: Decision,
        class: Option<Arc<Classification>>,
        pending_setting: Option<PendingSetting>,
    ) -> Result<(), End> {
        let slot = &self.cancel.slot;
        slot.set_state(ClientState::Waiting);
        if self.control.is_paused(&self.identity.database) {
            slot.set_state(ClientState::Paused);
            self.control.wait_unpaused(&self.identity.database).await;
            slot.set_state(ClientState::Waiting);
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let pool = self.pools.nodes[decision.node].clone();
            let (checked_out, waited) = pool.checkout_timed().await;
            // Also when the request starts, for balancing by response time.
            let started = Instant::now();
            self.pools.stats.record_wait(waited);
            match checked_out {
                Ok(mut server) => {
                    if let Err(error) = apply_settings(&mut server, self.settings.query()).await {
                        tracing::warn!(%error, "cannot apply the client's settings");
                        let (code, message) = match error {
                            // The server refused a value and stayed fine:
                            // the connection goes back (reset before reuse).
                            crate::server::ServerError::Rejected { code, message } => {
                                (code, message)
                            }
                            error => {
                                server.mark_broken();
                                (sqlstate::CONNECTION_FAILURE.to_owned(), error.to_string())
                            }
                        };
                        crate::pool::Pool::release(server);
                        return self.reject_request(first, &code, &message).await;
                    }
                    let slot = &self.cancel.slot;
                    slot.set(Some(server.cancel_target().clone()), Some(decision.node));
                    slot.set_state(ClientState::Active);
                    self.router().started(decision.node);
                    self.retry_buf.clear();
                    let (prelude, retry) = match &mut self.stage {
                        Stage::Waiting(waiting) => {
                            (waiting.transaction.take_prelude(), waiting.retry)
                        }
                        Stage::Serving(_) => (None, false),
                    };
                    let swallow = match prelude {
                        Some(prelude) => {
                            let mut joined =
                                BytesMut::with_capacity(prelude.len() + self.in_buf.len());
                            joined.extend_from_slice(&prelude);
                            joined.extend_from_slice(&self.in_buf);
                            self.in_buf = joined;
                            1
                        }
                        None => 0,
                    };
                    let request = Request {
                        decision,
                        started,
                        guarded: decision.retryable && !retry,
                        errors_before: server.state.errors(),
                        unrelayed: Some(started),
                    };
                    self.stage = Stage::Serving(Serving {
                        server,
                        request,
                        swallow,
                        pending_setting,
                        first_checked: false,
                        pinned: None,
                        wrote: decision.may_write,
                    });
                    return Ok(());
                }
                Err(error) => {
                    self.cancel.slot.set_state(ClientState::Idle);
                    if let CheckoutError::Timeout { .. } = error {
                        self.pools
                            .stats
                            .checkout_timeouts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let CheckoutError::Server { .. } = error {
                        self.shared
                            .topology
                            .connection_failed(decision.node, "cannot open a server connection");
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
                    let code = error.sqlstate();
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
        let defers_begin = self.defers_begin(class);
        let Some(transaction) = self.stage.transaction_mut() else {
            return Ok(false);
        };
        let in_transaction = transaction.is_open();
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
                if !in_transaction && class.statements == 1 && defers_begin =>
            {
                *transaction = LocalTransaction::Deferred(self.in_buf.split_to(first.len).freeze());
                backend::command_complete(&mut out, "BEGIN");
                backend::ready_for_query(&mut out, STATUS_IN_TRANSACTION);
            }
            Kind::TransactionControl if in_transaction && class.statements == 1 => {
                let sql = frontend::query_text(&self.in_buf[..first.len]).unwrap_or("");
                let Some(tag) = ending_tag(sql) else {
                    return Ok(false);
                };
                self.in_buf.advance(first.len);
                transaction.end();
                backend::command_complete(&mut out, tag);
                backend::ready_for_query(&mut out, STATUS_IDLE);
            }
            _ => return Ok(false),
        }
        self.write(&out).await?;
        Ok(true)
    }

    /// A simple Query inside a failed transaction that no server holds:
    /// COMMIT and ROLLBACK end it (both as ROLLBACK), anything else is
    /// refused as PostgreSQL refuses it.
    async fn answer_failed_transaction(&mut self, first: Frame) -> Result<(), End> {
        let sql = frontend::query_text(&self.in_buf[..first.len]).unwrap_or("");
        let ends = ending_tag(sql).is_some();
        self.in_buf.advance(first.len);
        let mut out = BytesMut::new();
        if let (true, Some(transaction)) = (ends, self.stage.transaction_mut()) {
            transaction.end();
            backend::command_complete(&mut out, "ROLLBACK");
        } else {
            crate::stats::count_error(sqlstate::IN_FAILED_SQL_TRANSACTION.as_bytes());
            backend::error_response(
                &mut out,
                Severity::Error,
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
        }
        backend::ready_for_query(&mut out, self.stage.transaction().status());
        self.write(&out).await
    }

    /// A lone Parse of a named statement followed by Sync needs no server:
    /// the statement is recorded and prepared on a server connection when
    /// the client first uses it. (A client that prepares synchronously
    /// while its neighbours in the same thread hold every connection, as
    /// pgbench -M prepared does, would otherwise wait for ever.)
    async fn prepare_locally(&mut self, first: Frame) -> Result<bool, End> {
        let Ok(parse) = extended::parse(&self.in_buf[..first.len]) else {
            return Ok(false);
        };
        // Only a well-formed Sync: one declaring another length gets the
        // server's 08P01, and must not be mistaken for five bytes here.
        let next = frontend::frame(&self.in_buf[first.len..], usize::MAX);
        let synced =
            matches!(next, Ok(Some(f)) if f.tag == frontend::SYNC && frontend::has_fixed_len(f));
        if parse.name.is_empty() || !synced || self.stage.transaction().is_failed() {
            return Ok(false);
        }
        let router = self.shared.router.clone();
        let interned = self.shared.registry.intern(parse.query, parse.types, || {
            router.classify_bytes(parse.query)
        });
        let statement = match interned {
            Ok(statement) => statement,
            Err(full) => {
                let code = sqlstate::CONFIGURATION_LIMIT_EXCEEDED;
                self.reject_request(first, code, &full.to_string()).await?;
                return Ok(true);
            }
        };
        self.statements.insert(parse.name, statement);
        self.in_buf.advance(first.len + 5);
        let status = self.stage.transaction().status();
        let mut out = BytesMut::with_capacity(16);
        backend::parse_complete(&mut out);
        backend::ready_for_query(&mut out, status);
        self.write(&out).await?;
        Ok(true)
    }

    /// DEALLOCATE of statements the client prepared through the protocol
    /// is answered here: the server-side statements are shared. Returns
    /// false for a name the client did not prepare that way (a SQL-level
    /// PREPARE, on its pinned connection, or an unknown one the server
    /// refuses).
    async fn deallocate_locally(&mut self, first: Frame) -> Result<bool, End> {
        let sql = frontend::query_text(&self.in_buf[..first.len]).unwrap_or("");
        let tag = if let Some(name) = pin::deallocated(sql) {
            if !self.statements.remove(&name) {
                // Not one of the client's: with no SQL PREPARE (which pins)
                // its session has no such statement, and the server's
                // statements belong to everyone.
                let message = format!("prepared statement \"{name}\" does not exist");
                self.reject_request(first, INVALID_SQL_STATEMENT_NAME, &message)
                    .await?;
                return Ok(true);
            }
            "DEALLOCATE"
        } else if pin::deallocates_all(sql) {
            self.statements.clear();
            "DEALLOCATE ALL"
        } else {
            return Ok(false);
        };
        self.in_buf.advance(first.len);
        let status = self.stage.transaction().status();
        let mut out = BytesMut::new();
        backend::command_complete(&mut out, tag);
        backend::ready_for_query(&mut out, status);
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
        crate::stats::count_error(code.as_bytes());
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Error, code, message);
        let mut out = self.skip_batch(Some(first), out).await?;
        // A failed statement inside a deferred transaction leaves it
        // failed, as PostgreSQL would; the client's ROLLBACK ends it.
        if let Some(transaction) = self.stage.transaction_mut() {
            transaction.fail();
        }
        backend::ready_for_query(&mut out, self.stage.transaction().status());
        self.write(&out).await
    }
}

/// SQLSTATE invalid_sql_statement_name.
const INVALID_SQL_STATEMENT_NAME: &str = "26000";

/// Gives the connection the client's settings, unless it has them already
/// (clients with the same settings share connections at no cost); a
/// connection that carries anything else is reset first.
pub(super) async fn apply_settings(
    server: &mut crate::server::ServerConn,
    settings: &Option<Arc<str>>,
) -> Result<(), crate::server::ServerError> {
    use crate::server::AppliedSettings;
    match (&server.settings, settings) {
        (AppliedSettings::Default, None) => return Ok(()),
        (AppliedSettings::Client(have), Some(want)) if have == want => return Ok(()),
        _ => {}
    }
    if server.settings != AppliedSettings::Default {
        // Until RESET ALL has run, what it carries is unknown.
        server.settings = AppliedSettings::Unknown;
        crate::server::simple::query(server, "RESET ALL", true).await?;
        server.settings = AppliedSettings::Default;
    }
    if let Some(sql) = settings {
        server.settings = AppliedSettings::Unknown;
        crate::server::simple::query(server, sql, true).await?;
        server.settings = AppliedSettings::Client(sql.clone());
    }
    Ok(())
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
