//! Parsing and classifying one statement's text without risking the stack.
//!
//! sqlparser bounds its own recursion ([`PARSER_RECURSION_LIMIT`]), but it
//! builds chains such as `a OR b OR ...`, `1+1+...` or `x::t::t...` in a
//! loop, so the tree can be as deep as the text is long; dropping the tree
//! and walking it both recurse. Hence:
//!
//! - the walk gives up past [`MAX_EXPR_DEPTH`] nested expressions
//!   (`Unparsable`);
//! - statements longer than [`MAX_PARSE_LEN`] or with more than
//!   [`MAX_BRACKET_DEPTH`] nested brackets are not parsed (`Unparsable`);
//! - the stack a statement may need is estimated from its length and
//!   bracket depth (parsing recurses at each nested subquery, with large
//!   frames: up to ~50 KiB a level). If that exceeds what the caller is
//!   assumed to have to spare ([`INLINE_STACK`], half the 2 MiB of a runtime
//!   worker thread), the statement is parsed on a short-lived helper thread
//!   with that much stack. In release builds that is statements over about
//!   2 KiB or with deep brackets, once each (verdicts are cached); debug
//!   builds, whose walk frames are ~2 KiB, do it for all but short ones.
//!   The costs below were measured on adversarial shapes (see the tests)
//!   and are used with a margin.
//!
//! A panic while parsing (untrusted input reaching a sqlparser bug) makes the
//! statement `Unparsable` too.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::scan::Piece;
use super::{fallback, statement, Kind};

/// The parser's recursion limit: about 15 nested subqueries or 30 nested
/// parentheses; deeper statements are `Unparsable`.
pub const PARSER_RECURSION_LIMIT: usize = 32;
/// Deeper nesting of expressions (including operator chains: a chain of
/// 5000 ORs is 5000 deep) makes a statement `Unparsable`.
pub const MAX_EXPR_DEPTH: usize = 4096;
/// Statements longer than this are not parsed: `Unparsable`.
pub const MAX_PARSE_LEN: usize = 1024 * 1024;
/// Statements nesting `(` and `[` deeper than this are not parsed:
/// `Unparsable` (the parser, which spends at least one unit of its
/// recursion limit on each such level we know of, would give up anyway).
pub const MAX_BRACKET_DEPTH: usize = 2 * PARSER_RECURSION_LIMIT;

/// Stack the caller is assumed to have to spare.
const INLINE_STACK: usize = 1024 * 1024;
/// Parsing and classifying a statement without brackets or chains,
/// including nesting that needs no brackets (CASE, NOT) up to the recursion
/// limit (measured: at most ~250 KiB release, ~290 KiB debug).
const BASE_STACK: usize = 384 * 1024;
/// Per level of bracket nesting (measured: at most ~46 KiB release, ~50 KiB
/// debug, for subqueries in FROM).
const BRACKET_STACK: usize = 64 * 1024;
/// Per level of a chain, to walk it (capped by MAX_EXPR_DEPTH; measured:
/// ~30 bytes release, ~2.1 KiB debug) ...
const WALK_STACK_PER_LEVEL: usize = if cfg!(debug_assertions) { 4096 } else { 256 };
/// ... and to drop it (measured: ~30 bytes release, ~100 bytes debug). A
/// level takes at least two bytes of SQL (`+1`).
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

/// The stack classifying `piece` may need.
pub(super) fn stack_needed(piece: &Piece<'_>) -> usize {
    let levels = piece.text.len() / 2 + 1;
    BASE_STACK
        + piece.depth * BRACKET_STACK
        + levels.min(MAX_EXPR_DEPTH) * WALK_STACK_PER_LEVEL
        + levels * DROP_STACK_PER_LEVEL
}

pub(super) fn classify_piece(piece: &Piece<'_>) -> PieceOutcome {
    if piece.text.len() > MAX_PARSE_LEN || piece.depth > MAX_BRACKET_DEPTH {
        return PieceOutcome::unparsable();
    }
    let stack = stack_needed(piece);
    if stack <= INLINE_STACK {
        return classify_here(piece.text);
    }
    let owned = piece.text.to_owned();
    std::thread::Builder::new()
        .name("pgrouter-classify".into())
        .stack_size(stack)
        .spawn(move || classify_here(&owned))
        .ok()
        .and_then(|helper| helper.join().ok())
        .unwrap_or_else(PieceOutcome::unparsable)
}

/// Parses and classifies one statement's text on this thread.
pub(super) fn classify_here(piece: &str) -> PieceOutcome {
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
