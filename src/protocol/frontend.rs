//! Typed frontend messages: framing, and decoding of the few we look into.

use super::{read_i32, take_cstr, ProtocolError, HEADER_LEN};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const TERMINATE: u8 = b'X';
/// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
pub const PASSWORD: u8 = b'p';

/// The header of a complete message at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// Whole message length, tag byte included.
    pub len: usize,
}

/// Returns the frame at the front of `buf` once all of it has arrived.
///
/// The length is checked against `max` as soon as the header is in, so a
/// client cannot make us buffer more than that.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = declared_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame { tag: buf[0], len }))
}

/// `frame` for a logged-in client: a type byte PostgreSQL would not
/// accept is an error as soon as it arrives, before its length is read (as
/// PostgreSQL reads it), so that junk never reaches a server.
pub fn session_frame(buf: &[u8], max: usize) -> Result<Option<Frame>, ProtocolError> {
    match buf.first() {
        Some(&tag) if !is_session_message(tag) => Err(ProtocolError::UnknownMessage { tag }),
        _ => frame(buf, max),
    }
}

/// The message types a client may send once logged in.
pub fn is_session_message(tag: u8) -> bool {
    matches!(
        tag,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | TERMINATE
    )
}

/// Whether a message of a type whose length is fixed (Sync, Flush,
/// Terminate, CopyDone: a bare header) declares that length.
pub fn has_fixed_len(frame: Frame) -> bool {
    frame.len == HEADER_LEN || !matches!(frame.tag, SYNC | FLUSH | TERMINATE | COPY_DONE)
}

/// The whole length the message at the front of `buf` declares, tag
/// included, once its header is in: lets a reader reserve room for it.
pub fn declared_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let declared = read_i32(buf, 1);
    if declared < 4 {
        return Err(ProtocolError::InvalidLength {
            len: declared.into(),
        });
    }
    let len = declared as usize + 1;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Appends a Sync.
pub fn sync_message(out: &mut bytes::BytesMut) {
    out.extend_from_slice(&[SYNC, 0, 0, 0, 4]);
}

/// The body of a whole message: what follows the header.
pub fn body(message: &[u8]) -> &[u8] {
    &message[HEADER_LEN..]
}

/// The SQL text of a whole Query or Parse message; `None` for other
/// messages and for malformed ones (the server will say what is wrong).
pub fn query_text(message: &[u8]) -> Option<&str> {
    std::str::from_utf8(query_bytes(message)?).ok()
}

/// `query_text` before its UTF-8 check, for looks that need only bytes.
pub fn query_bytes(message: &[u8]) -> Option<&[u8]> {
    let mut rest = message.get(HEADER_LEN..)?;
    match *message.first()? {
        QUERY => {}
        PARSE => {
            let name_end = rest.iter().position(|&b| b == 0)?;
            rest = &rest[name_end + 1..];
        }
        _ => return None,
    }
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// The SQL text of the message at the front of `buf`, when it is a whole
/// Query or Parse.
pub fn first_query_text(buf: &[u8]) -> Option<&str> {
    let frame = frame(buf, usize::MAX).ok()??;
    query_text(&buf[..frame.len])
}

/// A cleartext or md5 PasswordMessage body, without its terminating NUL.
pub fn password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let text = take_cstr(&mut rest, "password message")?;
    Ok(text)
}

/// The body of SASLInitialResponse.
#[derive(Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    pub data: &'a [u8],
}

pub fn sasl_initial_response(body: &[u8]) -> Result<SaslInitialResponse<'_>, ProtocolError> {
    const WHAT: &str = "SASLInitialResponse";
    let mut rest = body;
    let mechanism = take_cstr(&mut rest, WHAT)?;
    if rest.len() < 4 {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    let len = read_i32(rest, 0);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    Ok(SaslInitialResponse { mechanism, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_message as message;

    #[test]
    fn frames_only_complete_messages() {
        let bytes = message(QUERY, b"select 1\0");
        assert_eq!(frame(&bytes[..3], 100), Ok(None));
        assert_eq!(frame(&bytes[..7], 100), Ok(None));
        assert_eq!(
            frame(&bytes, 100),
            Ok(Some(Frame {
                tag: QUERY,
                len: bytes.len()
            }))
        );
    }

    #[test]
    fn refuses_oversized_and_negative_lengths() {
        let bytes = message(QUERY, &[b'x'; 50]);
        assert!(matches!(
            frame(&bytes[..5], 20),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(frame(&[b'Q', 0xff, 0xff, 0xff, 0xff], 100).is_err());
        assert!(frame(&[b'Q', 0, 0, 0, 3], 100).is_err());
    }

    #[test]
    fn decodes_sasl_initial_response() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,ab");
        let parsed = sasl_initial_response(&body).unwrap();
        assert_eq!(parsed.mechanism, "SCRAM-SHA-256");
        assert_eq!(parsed.data, b"n,,ab");
        body.pop();
        assert!(sasl_initial_response(&body).is_err());
    }

    #[test]
    fn finds_query_text_in_query_and_parse() {
        assert_eq!(query_text(&message(QUERY, b"select 1\0")), Some("select 1"));
        let mut parse = b"s1\0select $1\0".to_vec();
        parse.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(query_text(&message(PARSE, &parse)), Some("select $1"));
        assert_eq!(query_text(&message(SYNC, b"")), None);
        assert_eq!(query_text(&message(QUERY, b"no terminator")), None);
    }

    #[test]
    fn session_framing_refuses_unknown_types_at_once() {
        for tag in [b'Z', 0u8, 0xff, b'p'] {
            assert_eq!(
                session_frame(&[tag], 100),
                Err(ProtocolError::UnknownMessage { tag })
            );
        }
        assert_eq!(session_frame(&[], 100), Ok(None));
        let sync = message(SYNC, b"");
        assert!(has_fixed_len(session_frame(&sync, 100).unwrap().unwrap()));
        let long_sync = message(SYNC, b"junk");
        assert!(!has_fixed_len(frame(&long_sync, 100).unwrap().unwrap()));
        assert!(has_fixed_len(
            frame(&message(QUERY, b"x\0"), 100).unwrap().unwrap()
        ));
    }

    #[test]
    fn decodes_password() {
        assert_eq!(password(b"secret\0"), Ok("secret"));
        assert!(password(b"secret").is_err());
    }
}
