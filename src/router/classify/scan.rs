//! One lexical pass over the text, before any parsing: where PostgreSQL's
//! lexer would end each statement (top-level `;`), and the routing hints in
//! comments.
//!
//! The pass follows PostgreSQL's lexical rules for what can hide a `;` or a
//! comment: `--` and nested `/* */` comments, `'...'` strings (with `''`),
//! `E'...'` strings (also with backslash escapes), `"..."` identifiers and
//! `$tag$...$tag$` dollar quotes (a `$` inside an identifier or before a digit
//! is not one). An unterminated construct runs to the end of the text. It
//! never fails and is linear in the text: hints are found in text the parser
//! cannot read, and each statement is then parsed on its own.

use super::Hint;

/// What the pass found.
pub(super) struct Scan<'a> {
    /// The statements, without their `;`. Pieces holding only whitespace and
    /// comments (empty statements) are left out.
    pub pieces: Vec<Piece<'a>>,
    /// `Primary` if any comment asks for the primary, else `Replica` if one
    /// asks for a replica.
    pub hint: Option<Hint>,
}

/// One statement's text.
pub(super) struct Piece<'a> {
    pub text: &'a str,
    /// The deepest nesting of `(` and `[` in it.
    pub depth: usize,
}

pub(super) fn scan(sql: &str) -> Scan<'_> {
    let b = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut hint = None;
    let mut start = 0;
    let mut content = false;
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let next = b.get(i + 1).copied();
        match c {
            b'-' if next == Some(b'-') => {
                let end = find_byte(b, i + 2, b'\n');
                note_hint(&mut hint, sql.get(i + 2..end));
                i = end;
                continue;
            }
            b'/' if next == Some(b'*') => {
                let (body_end, end) = block_comment_end(b, i + 2);
                note_hint(&mut hint, sql.get(i + 2..body_end));
                i = end;
                continue;
            }
            b';' => {
                if let (true, Some(text)) = (content, sql.get(start..i)) {
                    pieces.push(Piece {
                        text,
                        depth: max_depth,
                    });
                }
                start = i + 1;
                content = false;
                depth = 0;
                max_depth = 0;
                i += 1;
                continue;
            }
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        content = true;
        let prev_ident = i > 0 && is_ident_byte(b[i - 1]);
        i = match c {
            b'\'' => {
                // E'...' (not the tail of an identifier such as `date'...'`).
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && !(i > 1 && is_ident_byte(b[i - 2]));
                quoted_end(b, i + 1, b'\'', escapes)
            }
            b'"' => quoted_end(b, i + 1, b'"', false),
            b'$' if !prev_ident => match dollar_tag_len(b, i) {
                Some(len) => dollar_quote_end(sql, i, len),
                None => i + 1,
            },
            b'(' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                i + 1
            }
            b')' | b']' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            _ => i + 1,
        };
    }
    if let (true, Some(text)) = (content, sql.get(start..)) {
        pieces.push(Piece {
            text,
            depth: max_depth,
        });
    }
    Scan { pieces, hint }
}

/// The index of the first `byte` at or after `from`, or the text's length.
fn find_byte(b: &[u8], from: usize, byte: u8) -> usize {
    b.get(from..)
        .and_then(|rest| rest.iter().position(|&c| c == byte))
        .map_or(b.len(), |p| from + p)
}

/// For a block comment whose body starts at `from`: (end of the body, index
/// after the closing `*/`). Comments nest, as in PostgreSQL.
fn block_comment_end(b: &[u8], from: usize) -> (usize, usize) {
    let mut depth = 1usize;
    let mut j = from;
    while j < b.len() {
        match (b[j], b.get(j + 1).copied()) {
            (b'/', Some(b'*')) => {
                depth += 1;
                j += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return (j - 2, j);
                }
            }
            _ => j += 1,
        }
    }
    (b.len(), b.len())
}

/// The index after the closing `quote` of a literal whose body starts at
/// `from`; a doubled quote stands for itself, and with `escapes` a backslash
/// escapes the next byte.
fn quoted_end(b: &[u8], from: usize, quote: u8, escapes: bool) -> usize {
    let mut j = from;
    while let Some(&c) = b.get(j) {
        if escapes && c == b'\\' {
            j += 2;
        } else if c == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
            } else {
                return j + 1;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// The length of the dollar-quote tag (`$$`, `$name$`) starting at `at`, if
/// one does. `$1` is a parameter, not a tag.
fn dollar_tag_len(b: &[u8], at: usize) -> Option<usize> {
    let mut j = at + 1;
    match b.get(j) {
        Some(b'$') => return Some(2),
        Some(&c) if c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 => j += 1,
        _ => return None,
    }
    while let Some(&c) = b.get(j) {
        match c {
            b'$' => return Some(j + 1 - at),
            _ if is_ident_byte(c) => j += 1,
            _ => return None,
        }
    }
    None
}

/// The index after the closing tag of the dollar quote opened at `at`.
fn dollar_quote_end(sql: &str, at: usize, tag_len: usize) -> usize {
    let body = at + tag_len;
    match (sql.get(at..body), sql.get(body..)) {
        (Some(tag), Some(rest)) => rest.find(tag).map_or(sql.len(), |p| body + p + tag_len),
        _ => sql.len(),
    }
}

/// A byte that may continue an identifier (PostgreSQL allows `$` there, and
/// any non-ASCII byte).
fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn note_hint(hint: &mut Option<Hint>, comment: Option<&str>) {
    match comment.and_then(comment_hint) {
        Some(Hint::Primary) => *hint = Some(Hint::Primary),
        Some(Hint::Replica) if hint.is_none() => *hint = Some(Hint::Replica),
        _ => {}
    }
}

/// `pgrouter: primary` or `pgrouter: replica` in a comment body, any case,
/// any spacing around the colon. Primary wins if a comment has both.
pub(super) fn comment_hint(body: &str) -> Option<Hint> {
    const NAME: &str = "pgrouter";
    let lower = body.to_ascii_lowercase();
    let mut found = None;
    for (at, _) in lower.match_indices(NAME) {
        if at > 0
            && lower
                .as_bytes()
                .get(at - 1)
                .is_some_and(|&c| is_ident_byte(c))
        {
            continue;
        }
        let Some(rest) = lower.get(at + NAME.len()..) else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        let word_len = rest
            .bytes()
            .position(|c| !is_ident_byte(c))
            .unwrap_or(rest.len());
        match rest.get(..word_len) {
            Some("primary") => return Some(Hint::Primary),
            Some("replica") => found = Some(Hint::Replica),
            _ => {}
        }
    }
    found
}
