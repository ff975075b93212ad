//! A statement prepared inside a client's open batch, and the
//! ParseComplete the client must never see.
//!
//! A Bind of a statement the server connection lacks, in the middle of a
//! batch, gets the statement's Parse sent just before it (there is no quiet
//! moment for a hidden round trip: a Sync would end the client's implicit
//! transaction). PostgreSQL answers in order: after the ReadyForQuery of
//! every earlier batch, and, in the open batch, after the ParseCompletes of
//! the client's own earlier Parses. Replies from where pgrouter's may be on
//! are held back until it has come, and it is cut out. An error in the
//! batch first means PostgreSQL skips the rest of it, pgrouter's Parse
//! included: the statement was never created. One such Parse is pending at
//! a time; the relay flushes the server to settle it before another.

use crate::protocol::answer::whole_message;
use crate::protocol::backend::{ERROR_RESPONSE, PARSE_COMPLETE, READY_FOR_QUERY};
use crate::server::state::ParsePosition;
use bytes::BytesMut;
use std::sync::Arc;

/// The length of a ParseComplete: a bare header.
const PARSE_COMPLETE_LEN: usize = 5;

#[derive(Default)]
pub(super) struct InlineParse {
    pending: Option<Cut>,
    /// Where in the reply buffer the replies not yet looked at start:
    /// everything before may reach the client.
    from: usize,
}

struct Cut {
    /// ReadyForQuerys of earlier batches to let pass first.
    readies: u32,
    /// ParseCompletes of the client's own Parses in the batch to let pass.
    parses: u32,
    /// The server-side statement the Parse creates.
    name: Arc<str>,
}

/// What looking at the held replies found.
pub(super) enum Settled {
    /// Nothing pending (any more).
    Done,
    /// Still waiting for pgrouter's ParseComplete.
    Pending,
    /// The batch failed first: this statement was never created.
    Skipped(Arc<str>),
}

impl InlineParse {
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the pending Parse is of `name`.
    pub fn is_pending_for(&self, name: &str) -> bool {
        self.pending.as_ref().is_some_and(|cut| &*cut.name == name)
    }

    /// pgrouter sends a Parse of `name` now, at `position`; `received`:
    /// the reply bytes already read, which all answer earlier messages.
    /// Returns false when the Parse would be skipped (its batch failed):
    /// then it is not sent, and the statement is not created.
    pub fn push(&mut self, name: Arc<str>, position: ParsePosition, received: usize) -> bool {
        let ParsePosition::After { readies, parses } = position else {
            return false;
        };
        self.from = received;
        self.pending = Some(Cut {
            readies,
            parses,
            name,
        });
        true
    }

    /// How much of the reply buffer may reach the client.
    pub fn deliverable(&self, len: usize) -> usize {
        match self.pending {
            Some(_) => self.from.min(len),
            None => len,
        }
    }

    /// The replies at the front of the buffer through a ReadyForQuery,
    /// `end` bytes, were cut (a deferred BEGIN's, see `Relay::swallow`):
    /// when that ReadyForQuery came after pgrouter's Parse was sent, it
    /// was one of those to let pass first.
    pub fn swallowed_ready(&mut self, end: usize) {
        if let Some(cut) = self.pending.as_mut() {
            if end > self.from {
                cut.readies = cut.readies.saturating_sub(1);
            }
        }
        self.advanced(end);
    }

    /// The reply buffer lost `n` bytes at its front (written or cut).
    pub fn advanced(&mut self, n: usize) {
        self.from = self.from.saturating_sub(n);
    }

    /// Looks at the whole replies not yet looked at, cutting pgrouter's
    /// ParseComplete out of `replies`. `judged`: another holder's offset
    /// into the buffer, kept pointing at the same message.
    pub fn settle(&mut self, replies: &mut BytesMut, judged: &mut usize) -> Settled {
        let Some(cut) = self.pending.as_mut() else {
            return Settled::Done;
        };
        while let Some((tag, len)) = whole_message(replies, self.from) {
            if cut.readies > 0 {
                // An earlier batch's replies, errors included.
                cut.readies -= u32::from(tag == READY_FOR_QUERY);
            } else {
                match tag {
                    PARSE_COMPLETE if cut.parses == 0 => {
                        let at = self.from;
                        replies.copy_within(at + PARSE_COMPLETE_LEN.., at);
                        replies.truncate(replies.len() - PARSE_COMPLETE_LEN);
                        if *judged > at {
                            *judged = judged.saturating_sub(PARSE_COMPLETE_LEN);
                        }
                        self.pending = None;
                        return Settled::Done;
                    }
                    PARSE_COMPLETE => cut.parses -= 1,
                    ERROR_RESPONSE | READY_FOR_QUERY => {
                        let name = cut.name.clone();
                        self.pending = None;
                        return Settled::Skipped(name);
                    }
                    _ => {}
                }
            }
            self.from += len;
        }
        Settled::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_message as message;

    fn replies(parts: &[Vec<u8>]) -> BytesMut {
        let mut out = BytesMut::new();
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }

    fn after(readies: u32, parses: u32) -> ParsePosition {
        ParsePosition::After { readies, parses }
    }

    #[test]
    fn the_parse_complete_after_the_clients_own_is_cut() {
        let mut inline = InlineParse::default();
        // Two client Parses of the batch still unanswered, then ours.
        assert!(inline.push("pgrouter_1".into(), after(0, 2), 0));
        let row = message(b'D', b"\0\x01\0\0\0\x011");
        let mut buf = replies(&[message(b'1', b""), message(b'2', b""), row.clone()]);
        let mut judged = 0;
        assert!(matches!(
            inline.settle(&mut buf, &mut judged),
            Settled::Pending
        ));
        assert_eq!(inline.deliverable(buf.len()), buf.len(), "all precede ours");
        buf.extend_from_slice(&message(b'1', b""));
        buf.extend_from_slice(&message(b'1', b""));
        buf.extend_from_slice(&message(b'2', b""));
        assert!(matches!(
            inline.settle(&mut buf, &mut judged),
            Settled::Done
        ));
        let expected = replies(&[
            message(b'1', b""),
            message(b'2', b""),
            row,
            message(b'1', b""),
            message(b'2', b""),
        ]);
        assert_eq!(buf, expected);
        assert!(!inline.is_pending());
    }

    #[test]
    fn earlier_batches_and_their_errors_pass_first() {
        let mut inline = InlineParse::default();
        assert!(inline.push("pgrouter_1".into(), after(1, 0), 0));
        let error = message(b'E', b"SERROR\0C22012\0\0");
        let mut buf = replies(&[
            message(b'1', b""),
            error.clone(),
            message(b'Z', b"I"),
            message(b'1', b""),
            message(b'2', b""),
        ]);
        let mut judged = 0;
        assert!(matches!(
            inline.settle(&mut buf, &mut judged),
            Settled::Done
        ));
        let expected = replies(&[
            message(b'1', b""),
            error,
            message(b'Z', b"I"),
            message(b'2', b""),
        ]);
        assert_eq!(buf, expected);
    }

    #[test]
    fn an_error_in_the_batch_first_means_the_statement_was_never_made() {
        let mut inline = InlineParse::default();
        assert!(inline.push("pgrouter_1".into(), after(0, 1), 0));
        let error = message(b'E', b"SERROR\0C22012\0\0");
        let mut buf = replies(std::slice::from_ref(&error));
        let mut judged = 0;
        match inline.settle(&mut buf, &mut judged) {
            Settled::Skipped(name) => assert_eq!(&*name, "pgrouter_1"),
            _ => panic!("the error skips it"),
        }
        assert_eq!(&buf[..], &error[..], "nothing cut");
        assert!(!inline.push("pgrouter_2".into(), ParsePosition::Skipped, 0));
        assert!(!inline.is_pending());
    }

    #[test]
    fn a_swallowed_ready_for_query_counts_as_passed() {
        let mut inline = InlineParse::default();
        // A deferred BEGIN went first: its ReadyForQuery is owed too.
        assert!(inline.push("pgrouter_1".into(), after(1, 0), 0));
        let mut prelude = message(b'C', b"BEGIN\0");
        prelude.extend(message(b'Z', b"T"));
        inline.swallowed_ready(prelude.len());
        let mut buf = replies(&[message(b'1', b""), message(b'2', b"")]);
        let mut judged = 0;
        assert!(matches!(
            inline.settle(&mut buf, &mut judged),
            Settled::Done
        ));
        assert_eq!(&buf[..], &message(b'2', b"")[..]);
    }

    #[test]
    fn held_replies_start_where_ours_may_be() {
        let mut inline = InlineParse::default();
        assert!(inline.push("pgrouter_1".into(), after(0, 0), 12));
        assert_eq!(inline.deliverable(20), 12);
        inline.advanced(12);
        assert_eq!(inline.deliverable(8), 0);
    }
}
