//! Pure codec for the PostgreSQL v3 wire protocol, in both directions.
//!
//! Frontend messages come from clients, backend messages from servers, as the
//! PostgreSQL documentation names them. Nothing here does I/O or knows about
//! sessions, pools or configuration: the layers above feed bytes in and take
//! values (or bytes to send) out.
//!
//! We decode only what pgrouter must look into (startup packets, the
//! authentication exchange, message headers, ReadyForQuery's status) and
//! forward everything else as opaque bytes.

pub mod answer;
pub mod backend;
pub mod extended;
pub mod frontend;
pub mod scan;
pub mod startup;

use thiserror::Error;

/// The length of a typed message header: one tag byte plus an `i32` length.
pub const HEADER_LEN: usize = 5;

/// Why a byte stream is not valid protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message length {len} is invalid")]
    InvalidLength { len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    /// PostgreSQL's own words for a type byte it does not know.
    #[error("invalid frontend message type {tag}")]
    UnknownMessage { tag: u8 },
    /// A message that would make pgrouter hold more than a configured
    /// bound allows (`what` in the plural).
    #[error("too many {what}: the limit is {max}")]
    TooMany { what: &'static str, max: usize },
}

/// Reads a big-endian `i32` at `at`; callers guarantee four bytes are there.
fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Splits a NUL-terminated string off the front of `buf`.
fn take_cstr<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a str, ProtocolError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed { what })?;
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| ProtocolError::Malformed { what })?;
    *buf = &buf[end + 1..];
    Ok(text)
}

/// A whole typed message with this tag and body, for tests.
#[cfg(test)]
pub(crate) fn test_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}
