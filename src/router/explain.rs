//! `EXPLAIN ROUTE <statement>`: where a statement would run and why,
//! answered by pgrouter without running it, so that developers can see
//! how their application's queries are routed. The answer is the router's
//! own decision on a copy of the session's routing state; sessions and the
//! console both ask here.

use super::classify::{Classification, Kind};
use super::{Decision, Reason, Router, SessionRoute, Target};
use crate::config::PoolMode;
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
    // Awaited: a long text is explained as it will route once parsed.
    let class = router.classify_async(statement).await;
    let decision = match mode {
        PoolMode::Session => router.session_node(&session, client),
        // What the statement would meet now: explaining never waits out
        // a failover.
        PoolMode::Transaction => router.decide_now(Some(&class), &mut session, client).await,
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
