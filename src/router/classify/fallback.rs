//! Statements sqlparser could not parse, recognised from their tokens.
//!
//! Two rewrites that keep the meaning are tried first, and the result parsed
//! again: a leading `TABLE name` becomes `SELECT * FROM name`, and
//! `FOR NO KEY UPDATE` / `FOR KEY SHARE` (which sqlparser lacks) become
//! `FOR UPDATE` / `FOR SHARE`, so that they still count as locking clauses.
//! Then a few simple forms are recognised by their leading keywords; the
//! recognisers accept only what they fully understand (`COMMIT PREPARED` is
//! not a COMMIT). Everything else is `Unparsable`.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::statement::{classify_statement, parse_route};
use super::{Kind, PARSER_RECURSION_LIMIT};

/// The verdicts for an unparsable `piece` (none if it holds no tokens).
pub(super) fn classify_unparsed(piece: &str, functions: &mut Vec<Box<str>>) -> Vec<Kind> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, piece).tokenize() else {
        return vec![Kind::Unparsable];
    };
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    if tokens.is_empty() {
        return Vec::new();
    }
    if let Some(rewritten) = rewrite(&tokens) {
        if let Ok(statements) = Parser::new(&dialect)
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .with_tokens(rewritten)
            .parse_statements()
        {
            if !statements.is_empty() {
                return statements
                    .iter()
                    .map(|s| classify_statement(s, functions))
                    .collect();
            }
        }
    }
    vec![recognise(&tokens).unwrap_or(Kind::Unparsable)]
}

/// The rewritten tokens, if a rewrite applied.
fn rewrite(tokens: &[Token]) -> Option<Vec<Token>> {
    let mut out = Vec::with_capacity(tokens.len() + 2);
    let mut changed = false;
    let mut i = 0;
    if tokens.first().is_some_and(|t| is_kw(t, "TABLE")) {
        out.extend([
            Token::make_keyword("SELECT"),
            Token::Mul,
            Token::make_keyword("FROM"),
        ]);
        changed = true;
        i = 1;
    }
    while let Some(token) = tokens.get(i) {
        let at = |k: usize, kw: &str| tokens.get(i + k).is_some_and(|t| is_kw(t, kw));
        if is_kw(token, "FOR") && at(1, "NO") && at(2, "KEY") && at(3, "UPDATE") {
            out.extend([Token::make_keyword("FOR"), Token::make_keyword("UPDATE")]);
            changed = true;
            i += 4;
        } else if is_kw(token, "FOR") && at(1, "KEY") && at(2, "SHARE") {
            out.extend([Token::make_keyword("FOR"), Token::make_keyword("SHARE")]);
            changed = true;
            i += 3;
        } else {
            out.push(token.clone());
            i += 1;
        }
    }
    changed.then_some(out)
}

/// An unquoted word equal to `kw` (upper case), any case.
fn is_kw(token: &Token, kw: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// A cursor over the tokens of one statement.
struct Words<'t> {
    tokens: &'t [Token],
    pos: usize,
}

impl Words<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, kw: &str) -> bool {
        let found = self.peek().is_some_and(|t| is_kw(t, kw));
        self.pos += usize::from(found);
        found
    }

    fn eat_all(&mut self, kws: &[&str]) -> bool {
        let save = self.pos;
        if kws.iter().all(|kw| self.eat(kw)) {
            return true;
        }
        self.pos = save;
        false
    }

    fn eat_token(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        self.pos += usize::from(found);
        found
    }

    fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    /// Everything left is a word or a `.`.
    fn rest_is_words(&self) -> bool {
        self.tokens.get(self.pos..).is_some_and(|rest| {
            rest.iter()
                .all(|t| matches!(t, Token::Word(_) | Token::Period))
        })
    }
}

fn recognise(tokens: &[Token]) -> Option<Kind> {
    let mut w = Words { tokens, pos: 0 };
    // Two-phase commit and commands sqlparser has no statement for: writes.
    const WRITES: &[(&[&str], &str)] = &[
        (&["PREPARE", "TRANSACTION"], "two-phase commit"),
        (&["COMMIT", "PREPARED"], "two-phase commit"),
        (&["ROLLBACK", "PREPARED"], "two-phase commit"),
        (&["DO"], "do"),
        (&["CHECKPOINT"], "checkpoint"),
        (&["VACUUM"], "vacuum"),
        (&["ANALYZE"], "analyze"),
        (&["ANALYSE"], "analyze"),
        (&["REINDEX"], "ddl"),
        (&["CLUSTER"], "ddl"),
        (&["SECURITY", "LABEL"], "ddl"),
        (&["IMPORT", "FOREIGN", "SCHEMA"], "ddl"),
        (&["REASSIGN", "OWNED"], "ddl"),
    ];
    if let Some((_, reason)) = WRITES.iter().find(|(kws, _)| w.eat_all(kws)) {
        return Some(Kind::Write(reason));
    }
    if w.eat("BEGIN") {
        let _ = w.eat("WORK") || w.eat("TRANSACTION");
        return begin_modes(&mut w);
    }
    if w.eat_all(&["START", "TRANSACTION"]) {
        return begin_modes(&mut w);
    }
    if w.eat("COMMIT") || w.eat("END") || w.eat("ABORT") || w.eat("ROLLBACK") {
        let _ = w.eat("WORK") || w.eat("TRANSACTION");
        let _ = w.eat_all(&["AND", "NO", "CHAIN"]) || w.eat_all(&["AND", "CHAIN"]);
        return w.done().then_some(Kind::TransactionControl);
    }
    if w.eat("SET") {
        return set_route(&mut w);
    }
    if w.eat("SHOW") {
        return (!w.done() && w.rest_is_words()).then_some(Kind::Read);
    }
    if w.eat("DISCARD") {
        let known = ["ALL", "PLANS", "SEQUENCES", "TEMP", "TEMPORARY"]
            .iter()
            .any(|kw| w.eat(kw));
        return (known && w.done()).then_some(Kind::SessionState("discard"));
    }
    if w.eat("LOAD") {
        return Some(Kind::SessionState("load"));
    }
    // Like FETCH: moves a cursor of this connection.
    if w.eat("MOVE") {
        return Some(Kind::Read);
    }
    None
}

/// `[ISOLATION LEVEL x] [READ ONLY | READ WRITE] [[NOT] DEFERRABLE]`, in any
/// order, optionally comma-separated, and nothing else.
fn begin_modes(w: &mut Words<'_>) -> Option<Kind> {
    let mut read_only = false;
    let mut read_write = false;
    let mut serializable = false;
    let mut first = true;
    while !w.done() {
        if !first {
            let _ = w.eat_token(&Token::Comma);
        }
        first = false;
        if w.eat_all(&["ISOLATION", "LEVEL"]) {
            if w.eat("SERIALIZABLE") {
                serializable = true;
            } else if !(w.eat_all(&["REPEATABLE", "READ"])
                || w.eat_all(&["READ", "COMMITTED"])
                || w.eat_all(&["READ", "UNCOMMITTED"]))
            {
                return None;
            }
        } else if w.eat_all(&["READ", "ONLY"]) {
            read_only = true;
        } else if w.eat_all(&["READ", "WRITE"]) {
            read_write = true;
        } else if !(w.eat_all(&["NOT", "DEFERRABLE"]) || w.eat("DEFERRABLE")) {
            return None;
        }
    }
    Some(Kind::Begin {
        read_only: read_only && !read_write && !serializable,
    })
}

/// `SET [SESSION | LOCAL] pgrouter.route { TO | = } value` (after `SET`).
fn set_route(w: &mut Words<'_>) -> Option<Kind> {
    let local = w.eat("LOCAL");
    let _ = local || w.eat("SESSION");
    let is_route = w.eat("PGROUTER") && w.eat_token(&Token::Period) && w.eat("ROUTE");
    if !is_route || !(w.eat("TO") || w.eat_token(&Token::Eq)) {
        return None;
    }
    let value = match w.peek() {
        Some(Token::Word(word)) => parse_route(&word.value),
        Some(Token::SingleQuotedString(s)) => parse_route(s),
        _ => return None,
    };
    w.pos += 1;
    if !w.done() {
        return None;
    }
    Some(match (local, value) {
        (true, _) => Kind::TransactionControl,
        (false, Some(setting)) => Kind::SetRoute(setting),
        (false, None) => Kind::SessionState("set"),
    })
}
