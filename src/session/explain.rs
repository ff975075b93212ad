//! `EXPLAIN ROUTE <statement>`: where a statement would run and why,
//! answered by pgrouter without running it, so that developers can see
//! how their application's queries are routed.

use super::serve::{End, Session};
use crate::config::PoolMode;
use crate::protocol::backend;
use crate::protocol::extended;
use crate::protocol::frontend::{self, Frame};
use crate::router::classify::{Classification, Kind};
use crate::router::{Decision, Reason, Router, SessionRoute, Target};
use bytes::{Buf, BytesMut};
use std::net::IpAddr;

pub const COLUMNS: [&str; 4] = ["node", "route", "reason", "detail"];

/// Whether a SQL text may be an `EXPLAIN ROUTE`, from its first byte
/// after ASCII whitespace: the hot path's price for the feature.
pub fn may_explain(sql: &[u8]) -> bool {
    sql.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| b.eq_ignore_ascii_case(&b'e'))
}

/// The statement after `EXPLAIN ROUTE`, when `sql` is one.
pub fn explained(sql: &str) -> Option<&str> {
    let sql = sql.trim_start();
    // The hot path's price: one byte compared for every other query.
    if !sql.starts_with(['e', 'E']) {
        return None;
    }
    let rest = strip_word(sql, "explain")?;
    let rest = strip_word(rest.trim_start(), "route")?;
    Some(rest.trim().trim_end_matches(';').trim())
}

fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    let ends = rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace());
    (head.eq_ignore_ascii_case(word) && ends).then_some(rest)
}

/// The row EXPLAIN ROUTE answers: node, route, reason, detail.
pub async fn explain_route(
    router: &Router,
    statement: &str,
    session: &SessionRoute,
    client: IpAddr,
    mode: PoolMode,
) -> [String; 4] {
    // A copy: explaining must not change what the session will do.
    let mut session = session.clone();
    let class = router.classify(statement);
    let decision = match mode {
        PoolMode::Session => router.session_node(&session, client),
        PoolMode::Transaction => router.decide(Some(&class), &mut session, client).await,
    };
    match decision {
        Ok(decision) => {
            let node = router.topology().node(decision.node);
            [
                node.name.to_string(),
                decision.target.label().to_owned(),
                decision.reason.label().to_owned(),
                detail(router, &decision, &class, &session, mode),
            ]
        }
        Err(error) => [
            String::new(),
            String::new(),
            "error".to_owned(),
            error.to_string(),
        ],
    }
}

fn detail(
    router: &Router,
    decision: &Decision,
    class: &Classification,
    session: &SessionRoute,
    mode: PoolMode,
) -> String {
    let node = router.topology().node(decision.node);
    match decision.reason {
        Reason::Write(what) => format!("{what} writes"),
        Reason::WriteFunction => "calls a function that is not immutable or stable".into(),
        Reason::SessionState(what) => format!("{what} changes session state"),
        Reason::Transaction => "a read-write transaction runs on the primary".into(),
        Reason::ReadOnlyTransaction | Reason::Read if decision.target == Target::Replica => {
            format!(
                "replica lag {} ms, {} bytes",
                node.lag().as_millis(),
                node.lag_bytes()
            )
        }
        Reason::ReadOnlyTransaction | Reason::Read => {
            "primary_reads is on and balancing chose the primary".into()
        }
        Reason::ReadYourWrites => match session.writes.last().and_then(|w| w.lsn) {
            Some((lsn, _)) => {
                format!("this session wrote up to {lsn}; no replica in service has replayed it yet")
            }
            None => "this session has just written; no replica is known to have it yet".into(),
        },
        Reason::Hint => "a /* pgrouter:... */ hint in the statement".into(),
        Reason::Pinned => format!(
            "route = {:?} (user, database or SET pgrouter.route)",
            session.setting
        )
        .to_lowercase(),
        Reason::ParseFailure => "the statement could not be parsed: the primary is safe".into(),
        Reason::Fallback => {
            "no replica may serve it (down, banned or lagging past max_replica_lag)".into()
        }
        Reason::NoSplit if mode == PoolMode::Session => "session mode: one node per session".into(),
        Reason::NoSplit => "read_write_split is off".into(),
        Reason::Unclassified => match class.kind {
            Kind::Unparsable => "the statement could not be parsed".into(),
            _ => "nothing to classify".into(),
        },
    }
}

impl Session {
    /// Answers `EXPLAIN ROUTE` sent through the extended protocol on the
    /// unnamed statement (Parse, Bind, Describe, Execute, Sync in one
    /// batch, as JDBC, psycopg and tokio-postgres' `query_typed` send a
    /// one-off query); returns whether the request was one. A named
    /// statement goes to the server like any other.
    pub(super) async fn explain_batch(&mut self, first: Frame) -> Result<bool, End> {
        let statement = match extended::parse(&self.in_buf[..first.len]) {
            Ok(parse) if parse.name.is_empty() => {
                match std::str::from_utf8(parse.query).ok().and_then(explained) {
                    Some(statement) => statement.to_owned(),
                    None => return Ok(false),
                }
            }
            _ => return Ok(false),
        };
        let row = explain_route(
            &self.shared.router,
            &statement,
            &self.route,
            self.peer.ip(),
            self.mode,
        )
        .await;
        self.in_buf.advance(first.len);
        let mut out = BytesMut::new();
        backend::parse_complete(&mut out);
        loop {
            let frame = match self.next_request().await {
                Ok(frame) => frame,
                Err(crate::client::ClientError::Protocol(error)) => {
                    return Err(End::Protocol(error.to_string()))
                }
                Err(_) => return Err(End::Gone),
            };
            let message = self.in_buf.split_to(frame.len);
            match frame.tag {
                frontend::BIND => backend::bind_complete(&mut out),
                frontend::DESCRIBE => {
                    if frontend::body(&message).first() == Some(&b'S') {
                        backend::no_parameters(&mut out);
                    }
                    backend::row_description(&mut out, &COLUMNS);
                }
                frontend::EXECUTE => {
                    backend::data_row(&mut out, &row.clone().map(Some));
                    backend::command_complete(&mut out, "EXPLAIN");
                }
                frontend::CLOSE => backend::close_complete(&mut out),
                frontend::FLUSH => {
                    self.write(&out).await?;
                    out.clear();
                }
                frontend::SYNC => break,
                frontend::TERMINATE => return Err(End::Terminated),
                _ => {}
            }
        }
        let status = self.transaction.status();
        backend::ready_for_query(&mut out, status);
        self.write(&out).await?;
        Ok(true)
    }

    /// Answers `EXPLAIN ROUTE`; returns whether the request was one.
    pub(super) async fn explain_locally(&mut self, first: Frame) -> Result<bool, End> {
        let message = &self.in_buf[..first.len];
        let Some(statement) = frontend::query_text(message).and_then(explained) else {
            return Ok(false);
        };
        let row = explain_route(
            &self.shared.router,
            statement,
            &self.route,
            self.peer.ip(),
            self.mode,
        )
        .await;
        self.in_buf.advance(first.len);
        let status = self.transaction.status();
        let mut out = BytesMut::new();
        backend::row_description(&mut out, &COLUMNS);
        backend::data_row(&mut out, &row.map(Some));
        backend::command_complete(&mut out, "EXPLAIN");
        backend::ready_for_query(&mut out, status);
        self.write(&out).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::{explained, may_explain};

    #[test]
    fn only_texts_starting_with_e_are_looked_at_further() {
        assert!(may_explain(b"  \n\tEXPLAIN ROUTE SELECT 1"));
        assert!(may_explain(b"explain select 1"));
        assert!(!may_explain(b"SELECT 1"));
        assert!(!may_explain(b"   "));
        assert!(!may_explain(b""));
    }

    #[test]
    fn explain_route_is_recognized_in_any_case() {
        assert_eq!(explained("EXPLAIN ROUTE SELECT 1"), Some("SELECT 1"));
        assert_eq!(explained("  explain   route\n select 1;"), Some("select 1"));
        assert_eq!(explained("EXPLAIN SELECT 1"), None);
        assert_eq!(explained("EXPLAIN ROUTER"), None);
        assert_eq!(explained("SELECT 1"), None);
        assert_eq!(explained("EXPLAIN ROUTE"), Some(""));
    }
}
