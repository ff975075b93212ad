//! The statement names in extended-protocol messages, read and rewritten:
//! clients name their prepared statements, servers get names of
//! pgrouter's choosing.

use super::frontend::{BIND, CLOSE, DESCRIBE, PARSE};
use super::{take_cstr, ProtocolError, HEADER_LEN};
use bytes::{BufMut, BytesMut};

/// A whole Parse message, split up.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// The SQL text's bytes: in the client's encoding, which need not be
    /// UTF-8 (a LATIN1 client's literals), so never decoded here.
    pub query: &'a [u8],
    /// The parameter type count and OIDs, as sent.
    pub types: &'a [u8],
}

pub fn parse(message: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    const WHAT: &str = "Parse";
    let mut rest = message
        .get(HEADER_LEN..)
        .ok_or(ProtocolError::Malformed { what: WHAT })?;
    let name = take_cstr(&mut rest, WHAT)?;
    let query_end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed { what: WHAT })?;
    let query = &rest[..query_end];
    rest = &rest[query_end + 1..];
    if rest.len() < 2 {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    Ok(Parse {
        name,
        query,
        types: rest,
    })
}

/// The statement a message refers to by name, where it does: Parse
/// (defines it), Bind (uses it), Describe and Close of a statement.
pub fn statement_name(message: &[u8]) -> Option<&str> {
    let mut rest = message.get(HEADER_LEN..)?;
    match *message.first()? {
        PARSE => take_cstr(&mut rest, "Parse").ok(),
        BIND => {
            take_cstr(&mut rest, "Bind").ok()?;
            take_cstr(&mut rest, "Bind").ok()
        }
        DESCRIBE | CLOSE if rest.first() == Some(&b'S') => {
            rest = &rest[1..];
            take_cstr(&mut rest, "Describe").ok()
        }
        _ => None,
    }
}

/// Appends `message` with its statement name replaced by `name`. The
/// message must be one `statement_name` found a name in.
pub fn rename_statement(
    out: &mut BytesMut,
    message: &[u8],
    name: &str,
) -> Result<(), ProtocolError> {
    const WHAT: &str = "statement message";
    let tag = *message
        .first()
        .ok_or(ProtocolError::Malformed { what: WHAT })?;
    let body = message
        .get(HEADER_LEN..)
        .ok_or(ProtocolError::Malformed { what: WHAT })?;
    // Where the name starts in the body, and what comes after it.
    let (prefix_len, after_name) = match tag {
        PARSE => {
            let mut rest = body;
            take_cstr(&mut rest, WHAT)?;
            (0, rest)
        }
        BIND => {
            let mut rest = body;
            let portal = take_cstr(&mut rest, WHAT)?;
            let prefix = portal.len() + 1;
            take_cstr(&mut rest, WHAT)?;
            (prefix, rest)
        }
        DESCRIBE | CLOSE => {
            let mut rest = body
                .get(1..)
                .ok_or(ProtocolError::Malformed { what: WHAT })?;
            take_cstr(&mut rest, WHAT)?;
            (1, rest)
        }
        _ => return Err(ProtocolError::Malformed { what: WHAT }),
    };
    let len = 4 + prefix_len + name.len() + 1 + after_name.len();
    out.reserve(1 + len);
    out.put_u8(tag);
    out.put_i32(len as i32);
    out.put_slice(&body[..prefix_len]);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(after_name);
    Ok(())
}

/// A Parse message for `name` with this query and parameter types.
pub fn parse_message(out: &mut BytesMut, name: &str, query: &[u8], types: &[u8]) {
    let len = 4 + name.len() + 1 + query.len() + 1 + types.len();
    out.reserve(1 + len);
    out.put_u8(PARSE);
    out.put_i32(len as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(types);
}

/// A Close of a prepared statement.
pub fn close_statement(out: &mut BytesMut, name: &str) {
    out.put_u8(CLOSE);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// The number of parameter types a Parse declares (for checks).
pub fn declared_types(types: &[u8]) -> Option<usize> {
    let count = i16::from_be_bytes([*types.first()?, *types.get(1)?]);
    (count >= 0 && types.len() == 2 + 4 * count as usize).then_some(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::frame;
    use crate::protocol::test_message as message;

    #[test]
    fn reads_and_renames_parse() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23i32.to_be_bytes());
        let original = message(PARSE, &body);
        let parsed = parse(&original).unwrap();
        assert_eq!((parsed.name, parsed.query), ("s1", &b"select $1"[..]));
        assert_eq!(declared_types(parsed.types), Some(1));
        let mut out = BytesMut::new();
        rename_statement(&mut out, &original, "pgrouter_7").unwrap();
        let renamed = parse(&out).unwrap();
        assert_eq!(
            (renamed.name, renamed.query),
            ("pgrouter_7", &b"select $1"[..])
        );
        assert_eq!(renamed.types, parsed.types);
        assert_eq!(frame(&out, 1000).unwrap().unwrap().len, out.len());
        let mut built = BytesMut::new();
        parse_message(&mut built, "pgrouter_7", b"select $1", parsed.types);
        assert_eq!(built, out);
    }

    #[test]
    fn renames_bind_describe_and_close() {
        let bind = message(BIND, b"portal\0s1\0\0\0\0\0\0\0");
        assert_eq!(statement_name(&bind), Some("s1"));
        let mut out = BytesMut::new();
        rename_statement(&mut out, &bind, "x").unwrap();
        assert_eq!(&out[..], &message(BIND, b"portal\0x\0\0\0\0\0\0\0")[..]);

        let describe = message(DESCRIBE, b"Ss1\0");
        assert_eq!(statement_name(&describe), Some("s1"));
        let mut out = BytesMut::new();
        rename_statement(&mut out, &describe, "long_name").unwrap();
        assert_eq!(&out[..], &message(DESCRIBE, b"Slong_name\0")[..]);

        assert_eq!(statement_name(&message(DESCRIBE, b"Pportal\0")), None);
        assert_eq!(statement_name(&message(CLOSE, b"Ss1\0")), Some("s1"));
        let mut out = BytesMut::new();
        close_statement(&mut out, "s9");
        assert_eq!(&out[..], &message(CLOSE, b"Ss9\0")[..]);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(parse(&message(PARSE, b"s1\0select")).is_err());
        // Text in another encoding is not malformed.
        let latin1 = message(PARSE, b"\0select 'caf\xe9'\0\0\0");
        assert_eq!(parse(&latin1).unwrap().query, b"select 'caf\xe9'");
        assert_eq!(statement_name(&message(BIND, b"p\0")), None);
        let mut out = BytesMut::new();
        assert!(rename_statement(&mut out, &message(BIND, b"p"), "x").is_err());
        assert!(rename_statement(&mut out, &[], "x").is_err());
    }
}
