//! Streaming scan of server replies.
//!
//! Replies are forwarded to the client as the bytes arrive, however large a
//! row is; the scanner only follows message boundaries across reads and
//! reports the few messages that change what pgrouter may do with the
//! server connection.

use super::backend::{
    COPY_BOTH_RESPONSE, COPY_IN_RESPONSE, COPY_OUT_RESPONSE, ERROR_RESPONSE, PARSE_COMPLETE,
    READY_FOR_QUERY,
};
use super::{ProtocolError, HEADER_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// ReadyForQuery with its transaction status byte.
    ReadyForQuery(u8),
    CopyIn,
    CopyOut,
    CopyBoth,
    ParseComplete,
    /// An ErrorResponse, with its SQLSTATE when it came early in the body
    /// (PostgreSQL puts it third), else zeros.
    Error([u8; 5]),
}

/// Enough of an ErrorResponse's body to hold severity and code.
const ERROR_HEAD: usize = 48;

#[derive(Debug, Default)]
pub struct ReplyScanner {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// Body bytes of the current message still to come.
    body_left: usize,
    /// The current message is a ReadyForQuery whose status byte is next.
    status_next: bool,
    /// The start of the current ErrorResponse's body, while it is read.
    error_head: Option<([u8; ERROR_HEAD], usize)>,
}

impl ReplyScanner {
    /// Whether the stream stands at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_filled == 0 && self.body_left == 0
    }

    /// Scans the next bytes of the stream, reporting replies in order.
    pub fn scan(
        &mut self,
        mut chunk: &[u8],
        mut report: impl FnMut(Reply),
    ) -> Result<(), ProtocolError> {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                if self.status_next {
                    self.status_next = false;
                    report(Reply::ReadyForQuery(chunk[0]));
                }
                let skip = self.body_left.min(chunk.len());
                if let Some((head, filled)) = self.error_head.as_mut() {
                    let take = skip.min(ERROR_HEAD - *filled);
                    head[*filled..*filled + take].copy_from_slice(&chunk[..take]);
                    *filled += take;
                    if *filled == ERROR_HEAD || skip == self.body_left {
                        let filled = *filled;
                        let code = super::answer::error_code(&head[..filled])
                            .and_then(|c| <[u8; 5]>::try_from(c).ok())
                            .unwrap_or([0; 5]);
                        self.error_head = None;
                        report(Reply::Error(code));
                    }
                }
                self.body_left -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            // Fast path: a whole header is in this chunk.
            let header: &[u8] = if self.header_filled == 0 && chunk.len() >= HEADER_LEN {
                let (header, rest) = chunk.split_at(HEADER_LEN);
                chunk = rest;
                header
            } else {
                let take = (HEADER_LEN - self.header_filled).min(chunk.len());
                self.header[self.header_filled..self.header_filled + take]
                    .copy_from_slice(&chunk[..take]);
                self.header_filled += take;
                chunk = &chunk[take..];
                if self.header_filled < HEADER_LEN {
                    return Ok(());
                }
                self.header_filled = 0;
                &self.header
            };
            let tag = header[0];
            let declared = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if declared < 4 {
                return Err(ProtocolError::InvalidLength {
                    len: declared.into(),
                });
            }
            self.body_left = declared as usize - 4;
            match tag {
                READY_FOR_QUERY if self.body_left == 1 => self.status_next = true,
                READY_FOR_QUERY => {
                    return Err(ProtocolError::Malformed {
                        what: "ReadyForQuery",
                    })
                }
                PARSE_COMPLETE => report(Reply::ParseComplete),
                COPY_IN_RESPONSE => report(Reply::CopyIn),
                COPY_OUT_RESPONSE => report(Reply::CopyOut),
                COPY_BOTH_RESPONSE => report(Reply::CopyBoth),
                ERROR_RESPONSE if self.body_left == 0 => report(Reply::Error([0; 5])),
                ERROR_RESPONSE => self.error_head = Some(([0; ERROR_HEAD], 0)),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_message as message;

    fn stream() -> Vec<u8> {
        let mut bytes = message(b'1', b"");
        bytes.extend(message(b'T', &[0; 30]));
        bytes.extend(message(b'D', &[7; 1000]));
        bytes.extend(message(b'C', b"SELECT 1\0"));
        bytes.extend(message(b'Z', b"T"));
        bytes.extend(message(b'G', &[0; 3]));
        bytes.extend(message(b'E', b"SERROR\0C42P01\0Mno\0\0"));
        bytes.extend(message(b'Z', b"I"));
        bytes
    }

    fn expected() -> Vec<Reply> {
        vec![
            Reply::ParseComplete,
            Reply::ReadyForQuery(b'T'),
            Reply::CopyIn,
            Reply::Error(*b"42P01"),
            Reply::ReadyForQuery(b'I'),
        ]
    }

    #[test]
    fn finds_replies_in_one_chunk() {
        let mut scanner = ReplyScanner::default();
        let mut seen = Vec::new();
        scanner.scan(&stream(), |r| seen.push(r)).unwrap();
        assert_eq!(seen, expected());
        assert!(scanner.at_boundary());
    }

    #[test]
    fn finds_replies_split_at_every_byte() {
        let bytes = stream();
        for chunk_size in [1, 2, 3, 5, 7, 64] {
            let mut scanner = ReplyScanner::default();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(chunk_size) {
                scanner.scan(chunk, |r| seen.push(r)).unwrap();
            }
            assert_eq!(seen, expected(), "chunk size {chunk_size}");
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        let mut scanner = ReplyScanner::default();
        assert!(scanner.scan(&[b'Z', 0, 0, 0, 2], |_| {}).is_err());
        let mut scanner = ReplyScanner::default();
        assert!(scanner.scan(&message(b'Z', b"II"), |_| {}).is_err());
    }
}
