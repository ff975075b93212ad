//! A verdict from a statement's leading words, without parsing: for texts
//! too long to parse at all, and for long ones while the parser works on
//! them off the runtime thread (see `router::classifier`).
//!
//! It FAILS CLOSED twice over: nothing is ever a read (everything goes to
//! the primary), and a statement whose leading words may change session
//! state is taken to (so the client is pinned rather than its state lost
//! or leaked), the way the parser would label it. What only the parser can
//! tell (a `SET LOCAL` is not a `SET`, a `DECLARE` without `WITH HOLD`
//! holds nothing) is told from the first few words.

use super::Kind;

/// The write label of a text too long to parse (`routing.classify_max_size`).
pub const TOO_LONG: &str = "too long to parse";
/// The write label of a long text whose parse has not finished.
pub const NOT_PARSED_YET: &str = "not parsed yet";

/// How many leading words are looked at.
const WORDS: usize = 12;

/// The verdict on one statement's text. `inside`: whether its whole text
/// may be searched (for advisory locks or `set_config` in a SELECT), or
/// only its head.
pub(super) fn verdict(text: &str, inside: bool, label: &'static str) -> Kind {
    let mut words = [""; WORDS];
    let count = leading_words(text, &mut words);
    let words = &words[..count];
    let is = |at: usize, word: &str| words.get(at).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let any = |range: std::ops::Range<usize>, options: &[&str]| {
        words
            .get(range.start..range.end.min(words.len()))
            .unwrap_or_default()
            .iter()
            .any(|w| options.iter().any(|o| w.eq_ignore_ascii_case(o)))
    };
    let session = Kind::SessionState;
    let first = words
        .first()
        .copied()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match first.as_str() {
        "set" if any(1..2, &["local", "transaction", "constraints"]) => Kind::Write(label),
        "set" if is(1, "role") || (is(1, "session") && is(2, "role")) => session("set role"),
        "set" if is(1, "session") && is(2, "authorization") => session("set session authorization"),
        "set" if is(1, "session") && is(2, "characteristics") => session("session characteristics"),
        "set" => session("set"),
        "reset" => session("reset"),
        "discard" => session("discard"),
        "deallocate" => session("deallocate"),
        "listen" => session("listen"),
        "unlisten" => session("unlisten"),
        "load" => session("load"),
        "execute" => session("execute"),
        "prepare" if is(1, "transaction") => Kind::Write(label),
        "prepare" => session("prepare"),
        "declare" if holds(words) => session("declare with hold"),
        // CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP[ORARY] ...
        "create" if any(1..5, &["temp", "temporary"]) => session("create temp table"),
        // What a DO block sets is not known: the session resets after it.
        "do" => Kind::Write("do"),
        "select" | "with" | "values" | "table" if inside => inside_select(text, label),
        _ => Kind::Write(label),
    }
}

/// A `DECLARE ... WITH HOLD ... FOR`: the hold comes before the query.
fn holds(words: &[&str]) -> bool {
    let head = words
        .iter()
        .take_while(|w| !w.eq_ignore_ascii_case("for"))
        .collect::<Vec<_>>();
    head.windows(2)
        .any(|pair| pair[0].eq_ignore_ascii_case("with") && pair[1].eq_ignore_ascii_case("hold"))
}

/// A query that may take session-level advisory locks, call `set_config`
/// or create a temporary table (`SELECT ... INTO TEMP`), from its words.
fn inside_select(text: &str, label: &'static str) -> Kind {
    let [advisory, set_config, into, temp] = contains_ignore_case(
        text.as_bytes(),
        [b"advisory", b"set_config", b"into", b"temp"],
    );
    if advisory {
        Kind::SessionState("advisory lock")
    } else if set_config {
        Kind::SessionState("set_config")
    } else if into && temp {
        Kind::SessionState("create temp table")
    } else {
        Kind::Write(label)
    }
}

/// Which of `needles` (lower case, each starting with a letter)
/// `haystack` contains, any case, in one pass.
fn contains_ignore_case<const N: usize>(haystack: &[u8], needles: [&[u8]; N]) -> [bool; N] {
    let mut found = [false; N];
    for at in 0..haystack.len() {
        // Lower-cases letters; no needle starts with anything else.
        let byte = haystack[at] | 0x20;
        for i in 0..N {
            let needle = needles[i];
            if !found[i]
                && needle.first() == Some(&byte)
                && haystack
                    .get(at..at + needle.len())
                    .is_some_and(|word| word.eq_ignore_ascii_case(needle))
            {
                found[i] = true;
            }
        }
    }
    found
}

/// Fills `out` with the leading words of `text` (letters, digits and `_`),
/// skipping whitespace, punctuation and comments; returns how many.
fn leading_words<'a>(text: &'a str, out: &mut [&'a str]) -> usize {
    let bytes = text.as_bytes();
    let mut count = 0;
    let mut at = 0;
    while count < out.len() && at < bytes.len() {
        match bytes[at] {
            b'-' if bytes.get(at + 1) == Some(&b'-') => {
                at = bytes[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| at + n);
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                at = text[at + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| at + 4 + n);
            }
            b if b.is_ascii_alphanumeric() || b == b'_' => {
                let end = bytes[at..]
                    .iter()
                    .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                    .map_or(bytes.len(), |n| at + n);
                // Word bounds sit next to ASCII bytes: char boundaries.
                out[count] = text.get(at..end).unwrap_or_default();
                count += 1;
                at = end;
            }
            // A quoted string or identifier ends the head: what follows is
            // no keyword of the statement's own.
            b'\'' | b'"' | b'$' => break,
            _ => at += 1,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Kind {
        verdict(sql, true, NOT_PARSED_YET)
    }

    #[test]
    fn nothing_is_a_read() {
        for sql in [
            "SELECT 1",
            "with x as (select 1) select * from x",
            "INSERT INTO t VALUES (1)",
            "/* SET x = 1 */ UPDATE t SET a = 1",
            "-- listen\nDELETE FROM t",
            "CREATE TABLE t (a int)",
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            "BEGIN",
            "COMMIT",
            "",
        ] {
            assert_eq!(of(sql), Kind::Write(NOT_PARSED_YET), "{sql}");
        }
        // A DO block keeps its own label: the session treats it as one.
        assert_eq!(of("DO $$ BEGIN NULL; END $$"), Kind::Write("do"));
    }

    #[test]
    fn session_state_is_recognised_from_the_head() {
        for (sql, label) in [
            ("SET work_mem = '1MB'", "set"),
            ("set search_path to a, b", "set"),
            ("SET ROLE tenant", "set role"),
            ("SET SESSION ROLE tenant", "set role"),
            (
                "SET SESSION AUTHORIZATION tenant",
                "set session authorization",
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                "session characteristics",
            ),
            ("RESET ALL", "reset"),
            ("DISCARD ALL", "discard"),
            ("DEALLOCATE ALL", "deallocate"),
            ("LISTEN ch", "listen"),
            ("PREPARE p AS SELECT 1", "prepare"),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                "declare with hold",
            ),
            ("CREATE TEMP TABLE t AS SELECT 1", "create temp table"),
            (
                "CREATE GLOBAL TEMPORARY TABLE t (a int)",
                "create temp table",
            ),
            (
                "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                "create temp table",
            ),
            ("SELECT pg_advisory_lock(1)", "advisory lock"),
            ("SELECT set_config('a.b', 'c', false)", "set_config"),
            ("SELECT 1 INTO TEMP t", "create temp table"),
        ] {
            assert_eq!(of(sql), Kind::SessionState(label), "{sql}");
        }
    }

    #[test]
    fn transaction_scoped_forms_do_not_pin() {
        for sql in [
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "PREPARE TRANSACTION 'x'",
            "DECLARE c CURSOR FOR SELECT 'with hold'",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
        ] {
            assert_eq!(of(sql), Kind::Write(NOT_PARSED_YET), "{sql}");
        }
    }

    #[test]
    fn only_the_head_is_read_when_the_inside_may_not_be() {
        let sql = "SELECT pg_advisory_lock(1)";
        assert_eq!(verdict(sql, false, TOO_LONG), Kind::Write(TOO_LONG));
        assert_eq!(
            verdict("SET x = 1", false, TOO_LONG),
            Kind::SessionState("set")
        );
    }
}
