//! A SQL text with its literals taken out, as the key the classification
//! cache looks texts up by. With the simple protocol every execution of a
//! hot query differs in its literals (`WHERE aid = 41`, `= 42`...); their
//! values never change where a SELECT or DML statement may run, so all of
//! them share one classification and the text is parsed once.

/// Statement kinds whose classification cannot depend on a literal's value
/// (unlike `SET pgrouter.route = 'replica'` or `EXPLAIN (ANALYZE 0)`).
const LITERAL_FREE: [&str; 7] = [
    "select", "with", "insert", "update", "delete", "values", "table",
];

/// Writes `sql` with numeric, string and dollar-quoted literals replaced by
/// `?` into `out`; comments (hints), identifiers and `$n` placeholders are
/// kept. Returns false (leaving `out` empty) when the text must be used
/// whole.
pub fn literal_free(sql: &str, out: &mut String) -> bool {
    out.clear();
    let first = first_keyword(sql);
    if !LITERAL_FREE.iter().any(|w| first.eq_ignore_ascii_case(w)) {
        return false;
    }
    let bytes = sql.as_bytes();
    let mut i = 0;
    // Start of the stretch copied as it is.
    let mut kept = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let skip_to = match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'"' => {
                i = sql[i + 1..]
                    .find('"')
                    .map_or(bytes.len(), |n| i + 1 + n + 1);
                continue;
            }
            b'\'' => Some(string_end(bytes, i, escapes_backslash(bytes, i))),
            b'$' => dollar_quote_end(sql, i),
            b'0'..=b'9' if !after_identifier(bytes, i) => Some(number_end(bytes, i)),
            _ => None,
        };
        match skip_to {
            Some(end) => {
                out.push_str(&sql[kept..i]);
                out.push('?');
                i = end;
                kept = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&sql[kept..]);
    true
}

/// The first word of a SQL text, after whitespace, comments, parentheses
/// and semicolons.
pub fn first_keyword(sql: &str) -> &str {
    // The bounds sit next to ASCII bytes, so they are char boundaries.
    sql.get(first_keyword_at(sql.as_bytes())).unwrap_or("")
}

/// `first_keyword` on bytes: where the first word is. Whitespace is
/// PostgreSQL's own (ASCII), and the scan touches only the text's head.
pub fn first_keyword_at(sql: &[u8]) -> std::ops::Range<usize> {
    let mut at = 0;
    loop {
        while at < sql.len()
            && matches!(
                sql[at],
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' | b'(' | b';'
            )
        {
            at += 1;
        }
        let rest = &sql[at..];
        if rest.starts_with(b"--") {
            at = match rest.iter().position(|&b| b == b'\n') {
                Some(newline) => at + newline + 1,
                None => sql.len(),
            };
        } else if rest.starts_with(b"/*") {
            at = match rest.windows(2).skip(2).position(|w| w == b"*/") {
                Some(close) => at + 2 + close + 2,
                None => sql.len(),
            };
        } else {
            break;
        }
    }
    let len = sql[at..]
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(sql.len() - at);
    at..at + len
}

fn after_identifier(bytes: &[u8], at: usize) -> bool {
    at > 0
        && matches!(bytes[at - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'$' | 0x80..=0xff)
}

/// An E'...' string takes backslash escapes.
fn escapes_backslash(bytes: &[u8], quote: usize) -> bool {
    quote > 0 && matches!(bytes[quote - 1], b'e' | b'E') && !after_identifier(bytes, quote - 1)
}

/// Just past the string literal opening at `at` (`''` is a quote inside).
fn string_end(bytes: &[u8], at: usize, backslash: bool) -> usize {
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Just past a `$tag$...$tag$` literal opening at `at`; `None` for `$1`
/// placeholders and anything that is not a dollar quote.
fn dollar_quote_end(sql: &str, at: usize) -> Option<usize> {
    let rest = &sql[at + 1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    let is_tag = tag
        .chars()
        .enumerate()
        .all(|(n, c)| c == '_' || c.is_alphabetic() || (n > 0 && c.is_ascii_digit()));
    if !is_tag || after_identifier(sql.as_bytes(), at) {
        return None;
    }
    let delimiter = &sql[at..at + tag_len + 2];
    let body = at + tag_len + 2;
    Some(
        sql[body..]
            .find(delimiter)
            .map_or(sql.len(), |n| body + n + delimiter.len()),
    )
}

/// Just past a numeric literal starting at `at`.
fn number_end(bytes: &[u8], at: usize) -> usize {
    let mut i = at;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.' || bytes[i] == b'_') {
        i += 1;
    }
    if i < bytes.len() && matches!(bytes[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < bytes.len() && matches!(bytes[j], b'+' | b'-') {
            j += 1;
        }
        if j < bytes.len() && bytes[j].is_ascii_digit() {
            i = j;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Option<String> {
        let mut out = String::new();
        literal_free(sql, &mut out).then_some(out)
    }

    #[test]
    fn literals_are_taken_out() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 41;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            key("select * from t1 where a = 'x''y' and b = 1.5e-3"),
            key("select * from t1 where a = 'z' and b = 2")
        );
        assert_eq!(
            key("SELECT $1, $tag$ a;b $tag$, E'\\' x', col2").as_deref(),
            Some("SELECT $1, ?, E?, col2")
        );
        assert_eq!(
            key("UPDATE t SET v = 3 WHERE id = 4").as_deref(),
            Some("UPDATE t SET v = ? WHERE id = ?")
        );
    }

    #[test]
    fn comments_and_identifiers_stay() {
        assert_eq!(
            key("/* pgrouter: replica */ SELECT \"col 1\" FROM t -- 5\n WHERE x = 5").as_deref(),
            Some("/* pgrouter: replica */ SELECT \"col 1\" FROM t -- 5\n WHERE x = ?")
        );
    }

    #[test]
    fn statements_whose_class_depends_on_literals_are_kept_whole() {
        assert_eq!(key("SET pgrouter.route = 'replica'"), None);
        assert_eq!(key("EXPLAIN (ANALYZE 0) DELETE FROM t"), None);
        assert_eq!(key("BEGIN"), None);
    }

    #[test]
    fn unterminated_literals_do_not_panic() {
        for sql in [
            "SELECT 'abc",
            "SELECT $x$ abc",
            "SELECT E'\\",
            "SELECT /* x",
            "SELECT \"a",
            "SELECT 1e",
            "SELECT é = 1",
        ] {
            let _ = key(sql);
        }
    }
}

#[cfg(test)]
mod first_keyword_tests {
    use super::first_keyword;

    #[test]
    fn the_first_word_is_found_past_blanks_brackets_and_comments() {
        assert_eq!(first_keyword("SELECT 1"), "SELECT");
        assert_eq!(first_keyword(" \t\n((select 1))"), "select");
        assert_eq!(first_keyword("-- note\n  ;WITH a AS (SELECT 1)"), "WITH");
        assert_eq!(first_keyword("/* a */ /* b */SET x = 1"), "SET");
        assert_eq!(first_keyword("/*/ still a comment */ listen ch"), "listen");
        assert_eq!(first_keyword("-- only a comment"), "");
        assert_eq!(first_keyword("/* unclosed"), "");
        assert_eq!(first_keyword("é SELECT"), "");
        assert_eq!(first_keyword(""), "");
    }
}
