//! Statement classification: may a query text run on a replica, or must it
//! go to the primary?
//!
//! The classifier FAILS CLOSED: whatever it does not positively recognise as
//! read-only (a statement kind it does not know, SQL it cannot parse) is sent
//! to the primary.
//!
//! How a text is read:
//!
//! 1. One lexical pass ([`scan`]) splits the text into statements where
//!    PostgreSQL would (top-level `;`, not inside strings, dollar quotes,
//!    quoted identifiers or comments) and collects the `pgrouter: primary` /
//!    `pgrouter: replica` hints from comments, so hints work even in SQL that
//!    does not parse.
//! 2. Each statement is parsed on its own with sqlparser's PostgreSQL
//!    dialect and classified from its AST ([`statement`]); every query that
//!    executes is walked at any depth ([`walk`]) for locking clauses,
//!    `SELECT INTO`, data-modifying statements and function calls
//!    ([`functions`]).
//! 3. A statement the parser rejects is recognised from its tokens where
//!    that is safe ([`fallback`]), else it is `Unparsable`.
//! 4. The statements' verdicts are combined (see [`combine`]).
//!
//! Untrusted SQL must not exhaust the stack: see [`piece`] for the limits
//! (nesting, length) past which a statement is `Unparsable`, and for when a
//! statement is parsed on a helper thread with a larger stack.

mod fallback;
mod functions;
mod head;
mod piece;
mod scan;
mod statement;
mod walk;

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod tests;

pub use functions::{
    READ_ONLY_BUILTIN_PREFIXES, READ_ONLY_VOLATILE_BUILTINS, SQL_SYNTAX_FUNCTIONS,
};
pub use head::{NOT_PARSED_YET, TOO_LONG};
pub use piece::{MAX_BRACKET_DEPTH, MAX_EXPR_DEPTH, MAX_PARSE_LEN, PARSER_RECURSION_LIMIT};

/// A routing hint from a `/* pgrouter: primary */` (or `-- pgrouter: replica`)
/// comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// The value of `SET pgrouter.route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSetting {
    Primary,
    Replica,
    Auto,
}

/// What a text does, as far as routing is concerned. The `&'static str`
/// reasons are short labels for logs, metrics and EXPLAIN ROUTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Reads only (may still call functions: see `Classification::functions`).
    Read,
    /// Must run on the primary: "insert", "update", "delete", "merge",
    /// "copy from", "ddl", "grant", "vacuum", "analyze", "call", "do",
    /// "lock", "locking clause", "select into", "data-modifying cte",
    /// "serializable", "explain analyze write", "txid", "notify", "nextval",
    /// "other" (a statement not recognised as read-only)...
    Write(&'static str),
    /// BEGIN / START TRANSACTION; `read_only` only with READ ONLY and without
    /// ISOLATION LEVEL SERIALIZABLE (which must run on the primary).
    Begin { read_only: bool },
    /// `SET TRANSACTION READ ONLY` on its own.
    SetTransactionReadOnly,
    /// COMMIT / ROLLBACK / END / ABORT / SAVEPOINT / RELEASE / ROLLBACK TO,
    /// SET LOCAL, CLOSE: transaction control that neither reads nor writes.
    TransactionControl,
    /// Changes session state: "set", "reset", "set role",
    /// "set session authorization", "listen", "unlisten", "prepare",
    /// "execute", "deallocate", "declare with hold", "create temp table",
    /// "discard", "load", "advisory lock", "set_config"...
    SessionState(&'static str),
    /// `SET [SESSION] pgrouter.route = primary | replica | auto`, as the only
    /// statement of the text: pgrouter answers it itself.
    SetRoute(RouteSetting),
    /// The parser could not read it (→ primary, counted).
    Unparsable,
}

/// The verdict on one query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub kind: Kind,
    /// The functions called by the queries the text executes (in subqueries,
    /// CTEs, WHERE, ORDER BY, FROM-clause table functions...), named as
    /// PostgreSQL folds them (lower case unless quoted, with the schema if
    /// one was written: "public.f", "f"), sorted and deduplicated, without
    /// the built-ins known to be safe on a replica
    /// ([`READ_ONLY_VOLATILE_BUILTINS`] & co). The router looks these up in
    /// pg_proc: a volatile one makes a read a write. Meaningful for `Read`
    /// and `Begin`; may be partial for the other kinds.
    pub functions: Vec<Box<str>>,
    /// A `pgrouter: primary` / `pgrouter: replica` comment anywhere in the
    /// text; primary wins if both appear.
    pub hint: Option<Hint>,
    /// Number of statements in the text (0 for an empty query).
    pub statements: usize,
    /// What the first statement that changes session state does, when
    /// `kind` says something else (a write wins the routing, but a `SET`
    /// beside an `INSERT` still changes the session).
    pub session: Option<&'static str>,
}

impl Classification {
    /// What the text does to the session, whatever else it does.
    pub fn session_state(&self) -> Option<&'static str> {
        match self.kind {
            Kind::SessionState(what) => Some(what),
            _ => self.session,
        }
    }
}

/// The first statement that changes session state, among `kinds`.
fn session_state(kinds: &[Kind]) -> Option<&'static str> {
    kinds.iter().find_map(|kind| match kind {
        Kind::SessionState(what) => Some(*what),
        Kind::SetRoute(_) => Some("set"),
        _ => None,
    })
}

/// Classifies a query text (one Query message, or the text of a Parse).
pub fn classify(sql: &str) -> Classification {
    let scan = scan::scan(sql);
    let mut kinds = Vec::with_capacity(scan.pieces.len());
    let mut functions = Vec::new();
    for piece in scan.pieces {
        let outcome = piece::classify_piece(&piece);
        kinds.extend(outcome.kinds);
        functions.extend(outcome.functions);
    }
    functions.sort_unstable();
    functions.dedup();
    Classification {
        kind: combine(&kinds),
        functions,
        hint: scan.hint,
        statements: kinds.len(),
        session: session_state(&kinds),
    }
}

/// The verdict on a long text while its parse is pending: each statement
/// the lexical pass finds, judged by its leading words (see [`head`]),
/// hints honoured. Linear in the text and never a read.
pub fn classify_unparsed(sql: &str) -> Classification {
    let scan = scan::scan(sql);
    let kinds: Vec<Kind> = scan
        .pieces
        .iter()
        .map(|piece| head::verdict(piece.text, true, NOT_PARSED_YET))
        .collect();
    Classification {
        kind: combine(&kinds),
        functions: Vec::new(),
        hint: scan.hint,
        statements: kinds.len(),
        session: session_state(&kinds),
    }
}

/// The verdict on a text too long to read at all: its first keyword
/// only (see [`head`]), no hint. It counts as two statements, since it may
/// hold several: nothing done for a lone statement only (replaying a SET,
/// answering a BEGIN) applies to it.
pub fn classify_too_long(sql: &str) -> Classification {
    Classification {
        kind: head::verdict(sql, false, TOO_LONG),
        functions: Vec::new(),
        hint: None,
        statements: 2,
        session: None,
    }
}

impl Classification {
    /// The verdict on several texts run as one request (the statements of
    /// an extended-protocol batch up to its Sync), combined as the
    /// statements of one text are (see [`combine`]).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a Classification>) -> Classification {
        let mut kinds = Vec::new();
        let mut functions = Vec::new();
        let mut hint = None;
        let mut statements = 0;
        for part in parts {
            kinds.push(part.kind.clone());
            functions.extend(part.functions.iter().cloned());
            hint = match (hint, part.hint) {
                (Some(Hint::Primary), _) | (_, Some(Hint::Primary)) => Some(Hint::Primary),
                (hint, None) => hint,
                (_, other) => other,
            };
            statements += part.statements;
        }
        functions.sort_unstable();
        functions.dedup();
        let session = session_state(&kinds);
        Classification {
            kind: combine(&kinds),
            functions,
            hint,
            statements,
            session,
        }
    }
}

/// Combines the verdicts of a text's statements, in this order:
///
/// 1. no statement: `Read` (an empty query); one statement: its verdict;
/// 2. any `Unparsable`: `Unparsable` (the text may do anything);
/// 3. else the first `Write`;
/// 4. else the first `SessionState`, a `SetRoute` among other statements
///    counting as `SessionState("set")` (it then goes to the server, which
///    takes it as a placeholder setting);
/// 5. else (only reads, transaction control, BEGIN and SET TRANSACTION READ
///    ONLY are left): a read-write `Begin` if any (an explicit transaction
///    goes to the primary), else a read-only `Begin` if any, else `Read` if
///    any statement reads, else `SetTransactionReadOnly` if any, else
///    `TransactionControl`.
fn combine(kinds: &[Kind]) -> Kind {
    match kinds {
        [] => return Kind::Read,
        [only] => return only.clone(),
        _ => {}
    }
    if kinds.contains(&Kind::Unparsable) {
        return Kind::Unparsable;
    }
    if let Some(write) = kinds.iter().find(|k| matches!(k, Kind::Write(_))) {
        return write.clone();
    }
    let session = kinds.iter().find_map(|k| match k {
        Kind::SessionState(reason) => Some(Kind::SessionState(reason)),
        Kind::SetRoute(_) => Some(Kind::SessionState("set")),
        _ => None,
    });
    if let Some(session) = session {
        return session;
    }
    [
        Kind::Begin { read_only: false },
        Kind::Begin { read_only: true },
        Kind::Read,
        Kind::SetTransactionReadOnly,
    ]
    .into_iter()
    .find(|k| kinds.contains(k))
    .unwrap_or(Kind::TransactionControl)
}
