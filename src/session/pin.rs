//! Session state that transaction mode cannot move between server
//! connections: which statements create it, and the cheap look at the SQL
//! that tells which statements need a closer one.

use crate::router::classify::{Classification, Kind};
use crate::router::first_keyword_at;

/// What a statement does to the session beyond its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEffect {
    None,
    /// State only its server connection holds (LISTEN, temp tables,
    /// advisory locks, SQL PREPARE, SET ...): the client keeps the
    /// connection until it disconnects.
    Pin(&'static str),
    /// DISCARD ALL: the client's prepared statements are gone too.
    Discard,
    /// DEALLOCATE [ALL] of statements prepared through the protocol.
    Deallocate,
    /// RESET: the connection loses the client's startup settings.
    Reset,
}

/// What a statement of this classification and text does to the session.
pub fn effect(class: &Classification, sql: Option<&str>) -> SessionEffect {
    // Alone, a statement's own effect; among others (`SET ...; INSERT`),
    // any change to the session pins.
    let alone = class.statements <= 1;
    if class.kind == Kind::Unparsable && sql.is_some_and(|sql| may_change_session(sql.as_bytes())) {
        // Fail closed: what cannot be read may change anything, even who
        // the session is (`set Role to x` is PostgreSQL, not sqlparser).
        return SessionEffect::Pin("unparsable");
    }
    match class.session_state() {
        Some("discard") if alone => SessionEffect::Discard,
        Some("deallocate") if alone => SessionEffect::Deallocate,
        Some("reset") if alone => SessionEffect::Reset,
        // UNLISTEN and EXECUTE only touch state that already pinned.
        Some("unlisten" | "execute") => SessionEffect::None,
        // Releasing advisory locks (as connection pools do on every
        // release) holds nothing.
        Some("advisory lock") if sql.is_some_and(only_unlocks) => SessionEffect::None,
        Some(what) => SessionEffect::Pin(what),
        // A DO block may set anything with set_config: what the connection
        // carries is not known after it.
        None if class.kind == Kind::Write("do") => SessionEffect::Reset,
        None => SessionEffect::None,
    }
}

/// Whether a pin's reason changes who the session is (its role or
/// session user): such a connection is closed when its client leaves,
/// never reset and handed on, since a reset query need not undo it.
pub fn changes_identity(reason: &str) -> bool {
    matches!(
        reason,
        "set role" | "set session authorization" | "set_config" | "startup role" | "unparsable"
    )
}

/// Whether every advisory-lock function a text calls is an unlock.
fn only_unlocks(sql: &str) -> bool {
    !contains_ignore_case(sql, "advisory_lock")
        && !contains_ignore_case(sql, "advisory_xact_lock")
        && !contains_ignore_case(sql, "try_advisory")
}

/// Whether a DEALLOCATE statement drops every prepared statement.
pub fn deallocates_all(sql: &str) -> bool {
    words(sql)
        .last()
        .is_some_and(|w| w.eq_ignore_ascii_case("all"))
}

/// The words of a short statement, without its comments (a routing hint
/// must not hide what the statement does).
fn words(sql: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, after)| after);
        } else if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, after)| after);
        } else if rest.is_empty() {
            return words;
        } else {
            let ends_word = |(at, c): &(usize, char)| {
                c.is_whitespace()
                    || *c == ';'
                    || rest[*at..].starts_with("/*")
                    || rest[*at..].starts_with("--")
            };
            let end = rest
                .char_indices()
                .find(ends_word)
                .map_or(rest.len(), |(at, _)| at);
            words.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
}

/// The statement a `DEALLOCATE [PREPARE] name` drops, as PostgreSQL folds
/// its name; `None` for `DEALLOCATE ALL` and anything else.
pub fn deallocated(sql: &str) -> Option<String> {
    let words = words(sql);
    let name = match words.as_slice() {
        [deallocate, name] if deallocate.eq_ignore_ascii_case("deallocate") => name,
        [deallocate, prepare, name]
            if deallocate.eq_ignore_ascii_case("deallocate")
                && prepare.eq_ignore_ascii_case("prepare") =>
        {
            name
        }
        _ => return None,
    };
    if name.eq_ignore_ascii_case("all") {
        return None;
    }
    Some(
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.to_owned(),
            None => name.to_lowercase(),
        },
    )
}

/// Whether a SQL text may change session state, judged from its words
/// without parsing: most statements cannot, and skip the classifier.
pub fn may_change_session(sql: &[u8]) -> bool {
    let first = &sql[first_keyword_at(sql)];
    const SESSION_WORDS: [&str; 11] = [
        "set",
        "reset",
        "listen",
        "prepare",
        "declare",
        "create",
        "discard",
        "load",
        "deallocate",
        "select",
        "with",
    ];
    if !SESSION_WORDS
        .iter()
        .any(|w| first.eq_ignore_ascii_case(w.as_bytes()))
    {
        return false;
    }
    if first.eq_ignore_ascii_case(b"select") || first.eq_ignore_ascii_case(b"with") {
        // Only function calls and SELECT INTO TEMP reach session state.
        return contains_any_ignore_case(sql, &["advisory", "set_config", "into"]);
    }
    true
}

/// One pass over `haystack` for any of `needles` (lower case): this runs
/// on every SELECT when routing is off.
fn contains_any_ignore_case(haystack: &[u8], needles: &[&str]) -> bool {
    for (at, byte) in haystack.iter().enumerate() {
        // Lower-cases letters; no needle starts with anything else.
        let byte = byte | 0x20;
        for needle in needles {
            let needle = needle.as_bytes();
            if needle[0] == byte
                && haystack
                    .get(at..at + needle.len())
                    .is_some_and(|word| word.eq_ignore_ascii_case(needle))
            {
                return true;
            }
        }
    }
    false
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::classify;

    #[test]
    fn only_statements_that_may_change_session_state_are_looked_at() {
        for sql in [
            "SET search_path TO a",
            " /* c */ listen ch",
            "SELECT pg_advisory_lock(1)",
            "select 1 into temp t",
            "CREATE TEMP TABLE t (a int)",
            "DISCARD ALL",
            "-- x\nPREPARE p AS SELECT 1",
        ] {
            assert!(may_change_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM a WHERE aid = 1",
            "INSERT INTO t VALUES (1)",
            "BEGIN",
            "UPDATE t SET a = 1",
        ] {
            assert!(!may_change_session(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn deallocate_is_read_without_its_comments() {
        assert_eq!(
            deallocated("DEALLOCATE pgrouter_1 /* pgrouter: replica */").as_deref(),
            Some("pgrouter_1")
        );
        assert_eq!(
            deallocated("deallocate prepare \"S1\";").as_deref(),
            Some("S1")
        );
        assert_eq!(deallocated("-- x\nDEALLOCATE S1").as_deref(), Some("s1"));
        assert_eq!(deallocated("DEALLOCATE ALL /* pgrouter: replica */"), None);
        assert!(deallocates_all("DEALLOCATE ALL /* pgrouter: replica */"));
        assert!(deallocates_all("deallocate prepare all;"));
        assert!(!deallocates_all("DEALLOCATE s1"));
        assert_eq!(deallocated("DEALLOCATE a b"), None);
    }

    #[test]
    fn effects_follow_the_classification() {
        let of = |sql: &str| effect(&classify(sql), Some(sql));
        assert_eq!(of("LISTEN ch"), SessionEffect::Pin("listen"));
        assert_eq!(
            of("SELECT pg_advisory_lock(1)"),
            SessionEffect::Pin("advisory lock")
        );
        assert_eq!(of("SELECT pg_advisory_unlock_all()"), SessionEffect::None);
        assert_eq!(
            of("CREATE TEMP TABLE t (a int)"),
            SessionEffect::Pin("create temp table")
        );
        assert_eq!(of("DISCARD ALL"), SessionEffect::Discard);
        assert_eq!(of("DEALLOCATE ALL"), SessionEffect::Deallocate);
        assert_eq!(of("RESET ALL"), SessionEffect::Reset);
        assert_eq!(of("SELECT 1"), SessionEffect::None);
        assert_eq!(of("SET LOCAL work_mem = '1MB'"), SessionEffect::None);
        assert_eq!(of("set Role to tenant"), SessionEffect::Pin("unparsable"));
        assert_eq!(of("DO $$ BEGIN NULL; END $$"), SessionEffect::Reset);
        assert_eq!(
            of("SET work_mem = '3MB'; INSERT INTO t VALUES (1)"),
            SessionEffect::Pin("set")
        );
    }
}
