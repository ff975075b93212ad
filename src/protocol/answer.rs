//! Whole-message looks at server replies, for the slow paths that must hold
//! replies back: deciding whether a replica's answer may reach the client
//! (or the request should run on the primary instead), and cutting out the
//! replies to requests pgrouter sent itself.

use super::backend::{ERROR_RESPONSE, READY_FOR_QUERY};
use super::{read_i32, HEADER_LEN};

/// SQLSTATE read_only_sql_transaction: a write reached a replica.
pub const READ_ONLY_SQL_TRANSACTION: &[u8] = b"25006";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Only preliminaries so far (ParseComplete, RowDescription...).
    Undecided,
    /// The answer has begun: it may go to the client.
    Deliver,
    /// The first answer is ErrorResponse 25006.
    ReadOnlyViolation,
    /// The first answer says the server is going away (shutdown, crash,
    /// not accepting): nothing was answered, the request may run elsewhere.
    ServerGoingAway,
}

/// admin_shutdown, crash_shutdown, cannot_connect_now.
const GOING_AWAY: [&[u8]; 3] = [b"57P01", b"57P02", b"57P03"];

/// Replies that come before a statement's answer and commit to nothing.
fn preliminary(tag: u8) -> bool {
    matches!(tag, b'1' | b'2' | b't' | b'T' | b'n' | b'S' | b'N')
}

/// Judges the whole messages in `buf[from..]`. Returns the verdict and the
/// offset where judging stopped (where to resume once more bytes arrive).
pub fn judge(buf: &[u8], mut from: usize) -> (Verdict, usize) {
    loop {
        // The tag decides: a row or a command's end means the statement
        // ran, whatever its size (a 100 MB row streams at once).
        if let Some(&tag) = buf.get(from).filter(|&&tag| tag != ERROR_RESPONSE) {
            if !preliminary(tag) && buf.len() >= from + HEADER_LEN {
                return (Verdict::Deliver, from);
            }
        }
        let Some((tag, len)) = whole_message(buf, from) else {
            break;
        };
        if !preliminary(tag) {
            let code = (tag == ERROR_RESPONSE)
                .then(|| error_code(&buf[from + HEADER_LEN..from + len]))
                .flatten();
            let body = &buf[from + HEADER_LEN..from + len];
            let verdict = match code {
                Some(READ_ONLY_SQL_TRANSACTION) => Verdict::ReadOnlyViolation,
                // A statement raising 57P01 is its own answer, and says
                // nothing of the server's health.
                Some(code) if GOING_AWAY.contains(&code) && ends_session(body) => {
                    Verdict::ServerGoingAway
                }
                _ => Verdict::Deliver,
            };
            return (verdict, from);
        }
        from += len;
    }
    (Verdict::Undecided, from)
}

/// The offset just past the first ReadyForQuery at or after `from`, once
/// it is whole in `buf`.
pub fn past_ready_for_query(buf: &[u8], mut from: usize) -> Option<usize> {
    while let Some((tag, len)) = whole_message(buf, from) {
        from += len;
        if tag == READY_FOR_QUERY {
            return Some(from);
        }
    }
    None
}

/// Tag and length of the whole message at `at`, if all of it is in `buf`.
/// A length below four is taken as one that never completes: the streaming
/// scanner reports such a server as broken.
pub fn whole_message(buf: &[u8], at: usize) -> Option<(u8, usize)> {
    if buf.len() < at + HEADER_LEN {
        return None;
    }
    let declared = read_i32(buf, at + 1);
    if declared < 4 {
        return None;
    }
    let len = declared as usize + 1;
    (buf.len() >= at + len).then_some((buf[at], len))
}

/// The SQLSTATE field ('C') of an ErrorResponse or NoticeResponse body.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// One field of an ErrorResponse or NoticeResponse body.
fn error_field(mut body: &[u8], wanted: u8) -> Option<&[u8]> {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return None;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if field == wanted {
            return Some(&rest[..end]);
        }
        body = &rest[end + 1..];
    }
    None
}

/// Whether an ErrorResponse ends the session: the server itself is going
/// away, as opposed to a statement that raised the same SQLSTATE.
fn ends_session(body: &[u8]) -> bool {
    // 'V' is the severity never translated (PostgreSQL 9.6+), 'S' the
    // one older servers send.
    let severity = error_field(body, b'V').or_else(|| error_field(body, b'S'));
    matches!(severity, Some(b"FATAL" | b"PANIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{error_response, ready_for_query, Severity};
    use crate::protocol::test_message as message;
    use bytes::BytesMut;

    #[test]
    fn preliminaries_leave_it_undecided() {
        let mut buf = message(b'1', b"");
        buf.extend(message(b'2', b""));
        buf.extend(message(b'T', &[0, 0]));
        let (verdict, at) = judge(&buf, 0);
        assert_eq!(verdict, Verdict::Undecided);
        assert_eq!(at, buf.len());
        // Half a DataRow: still undecided, resume at its start.
        buf.extend(&message(b'D', &[0, 1, 0, 0, 0, 1, b'x'])[..4]);
        assert_eq!(judge(&buf, at), (Verdict::Undecided, at));
    }

    #[test]
    fn a_row_or_other_error_delivers() {
        let mut buf = message(b'T', &[0, 0]);
        buf.extend(message(b'D', &[0, 0]));
        assert_eq!(judge(&buf, 0).0, Verdict::Deliver);
        let mut err = BytesMut::new();
        error_response(&mut err, Severity::Error, "22012", "division by zero");
        assert_eq!(judge(&err, 0).0, Verdict::Deliver);
    }

    #[test]
    fn read_only_violation_is_recognised() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&message(b'1', b""));
        error_response(
            &mut buf,
            Severity::Error,
            "25006",
            "cannot execute INSERT in a read-only transaction",
        );
        assert_eq!(judge(&buf, 0).0, Verdict::ReadOnlyViolation);
    }

    #[test]
    fn a_server_going_away_is_recognised() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, "57P01", "terminating connection");
        assert_eq!(judge(&buf, 0).0, Verdict::ServerGoingAway);
        // A function that raises the same SQLSTATE: the statement's answer.
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Error, "57P01", "raised by a function");
        assert_eq!(judge(&buf, 0).0, Verdict::Deliver);
    }

    #[test]
    fn a_row_is_judged_by_its_header_alone() {
        let mut buf = BytesMut::from(&message(b'1', b"")[..]);
        buf.extend_from_slice(&[b'D', 0, 0x10, 0, 0]);
        assert_eq!(
            judge(&buf, 0).0,
            Verdict::Deliver,
            "a 1 MiB row need not arrive"
        );
    }

    #[test]
    fn finds_the_end_of_a_reply() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&message(b'C', b"BEGIN\0"));
        ready_for_query(&mut buf, b'T');
        let end = buf.len();
        buf.extend_from_slice(&message(b'T', &[0, 0]));
        assert_eq!(past_ready_for_query(&buf, 0), Some(end));
        assert_eq!(past_ready_for_query(&buf[..end - 1], 0), None);
    }
}
