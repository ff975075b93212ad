//! Parsing and classifying one statement's text without risking the stack.
//!
//! sqlparser bounds its own recursion ([`PARSER_RECURSION_LIMIT`]), but it
//! builds chains such as `a OR b OR ...`, `1+1+...` or `x::t::t...` in a
//! loop, so the tree can be as deep as the text is long; dropping the tree
//! and walking it both recurse. Hence:
//!
//! - the walk gives up past [`MAX_EXPR_DEPTH`] nested expressions
//!   (`Unparsable`);
//! - statements longer than [`MAX_PARSE_LEN`] are not parsed (`Unparsable`);
//! - the stack a statement may need is estimated from its length; if that
//!   exceeds what the caller is assumed to have to spare
//!   ([`INLINE_STACK`], well within the 2 MiB of a runtime worker thread),
//!   the statement is parsed on a short-lived helper thread with that much
//!   stack. Only long statements do this, once each (the verdicts are
//!   cached). The per-level costs were measured (release: about 64 bytes a
//!   level; debug builds walk with ~3 KiB frames) and are used with a margin.
//!
//! A panic while parsing (untrusted input reaching a sqlparser bug) makes the
//! statement `Unparsable` too.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{fallback, statement, Kind};

/// The parser's recursion limit: about 15 nested subqueries or 30 nested
/// parentheses; deeper statements are `Unparsable`.
pub const PARSER_RECURSION_LIMIT: usize = 32;
/// Deeper nesting of expressions (including operator chains: a chain of
/// 5000 ORs is 5000 deep) makes a statement `Unparsable`.
pub const MAX_EXPR_DEPTH: usize = 4096;
/// Statements longer than this are not parsed: `Unparsable`.
pub const MAX_PARSE_LEN: usize = 1024 * 1024;

/// Stack the caller is assumed to have to spare.
const INLINE_STACK: usize = usize::MAX;
/// Parsing up to [`PARSER_RECURSION_LIMIT`] and classifying, apart from
/// chains (measured: ~0.7 MiB release, ~0.8 MiB debug).
const FIXED_STACK: usize = if cfg!(debug_assertions) { 960 } else { 900 } * 1024;
/// Per level of a chain, to walk it (capped by MAX_EXPR_DEPTH) ...
const WALK_STACK_PER_LEVEL: usize = if cfg!(debug_assertions) { 4096 } else { 256 };
/// ... and to drop it. A level takes at least two bytes of SQL (`+1`).
const DROP_STACK_PER_LEVEL: usize = 256;

/// The verdicts of one statement's text (usually one) and the functions it
/// calls.
pub(super) struct PieceOutcome {
    pub kinds: Vec<Kind>,
    pub functions: Vec<Box<str>>,
}

impl PieceOutcome {
    fn unparsable() -> Self {
        PieceOutcome {
            kinds: vec![Kind::Unparsable],
            functions: Vec::new(),
        }
    }
}

/// The stack classifying a `len`-byte statement may need.
fn stack_needed(len: usize) -> usize {
    let levels = len / 2 + 1;
    FIXED_STACK
        + levels.min(MAX_EXPR_DEPTH) * WALK_STACK_PER_LEVEL
        + levels.saturating_mul(DROP_STACK_PER_LEVEL)
}

pub(super) fn classify_piece(piece: &str) -> PieceOutcome {
    if piece.len() > MAX_PARSE_LEN {
        return PieceOutcome::unparsable();
    }
    let stack = stack_needed(piece.len());
    if stack <= INLINE_STACK {
        return classify_here(piece);
    }
    let owned = piece.to_owned();
    std::thread::Builder::new()
        .name("pgrouter-classify".into())
        .stack_size(stack)
        .spawn(move || classify_here(&owned))
        .ok()
        .and_then(|helper| helper.join().ok())
        .unwrap_or_else(PieceOutcome::unparsable)
}

/// Parses and classifies one statement's text on this thread.
fn classify_here(piece: &str) -> PieceOutcome {
    let run = || {
        let dialect = PostgreSqlDialect {};
        let parsed = Parser::new(&dialect)
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .try_with_sql(piece)
            .and_then(|mut parser| parser.parse_statements());
        let mut functions = Vec::new();
        let kinds: Vec<Kind> = match parsed {
            Ok(statements) => statements
                .iter()
                .map(|s| statement::classify_statement(s, &mut functions))
                .collect(),
            Err(_) => fallback::classify_unparsed(piece, &mut functions),
        };
        if kinds.is_empty() {
            // The scan saw a statement here, the parser none: fail closed.
            return PieceOutcome::unparsable();
        }
        PieceOutcome { kinds, functions }
    };
    std::panic::catch_unwind(run).unwrap_or_else(|_| PieceOutcome::unparsable())
}
