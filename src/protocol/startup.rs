//! The untyped packets a client may send first: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest. They have a length but no tag byte.

use super::{read_i32, take_cstr, ProtocolError};

/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        /// Major version in the high 16 bits, minor in the low 16.
        version: i32,
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// The value of a startup parameter such as `user` or `database`.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Total length of the packet at the front of `buf` (length prefix included),
/// or `None` while fewer than four bytes have arrived.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = read_i32(buf, 0);
    if len < 8 {
        return Err(ProtocolError::InvalidLength { len: len.into() });
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(ProtocolError::TooLarge {
            len,
            max: MAX_STARTUP_PACKET,
        });
    }
    Ok(Some(len))
}

/// Decodes a whole packet, length prefix included.
pub fn decode(packet: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let code = read_i32(packet, 4);
    match code {
        SSL_REQUEST if packet.len() == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if packet.len() == 8 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if packet.len() == 16 => Ok(StartupPacket::Cancel {
            process_id: read_i32(packet, 8),
            secret_key: read_i32(packet, 12),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed {
            what: "negotiation request",
        }),
        version => Ok(StartupPacket::Startup {
            version,
            params: decode_params(&packet[8..])?,
        }),
    }
}

fn decode_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: &str = "startup parameters";
    let mut params = Vec::new();
    loop {
        match body {
            [0] => return Ok(params),
            [] => return Err(ProtocolError::Malformed { what: WHAT }),
            _ => {
                let name = take_cstr(&mut body, WHAT)?.to_owned();
                let value = take_cstr(&mut body, WHAT)?.to_owned();
                params.push((name, value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut out = ((8 + body.len()) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decodes_startup_with_params() {
        let bytes = packet(PROTOCOL_3_0, b"user\0app\0database\0db\0\0");
        assert_eq!(packet_len(&bytes), Ok(Some(bytes.len())));
        let StartupPacket::Startup { version, params } = decode(&bytes).unwrap() else {
            panic!("not a startup packet");
        };
        assert_eq!(version, PROTOCOL_3_0);
        assert_eq!(StartupPacket::param(&params, "user"), Some("app"));
        assert_eq!(StartupPacket::param(&params, "database"), Some("db"));
    }

    #[test]
    fn decodes_negotiation_requests() {
        assert_eq!(
            decode(&packet(SSL_REQUEST, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode(&packet(GSSENC_REQUEST, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        let mut body = 7i32.to_be_bytes().to_vec();
        body.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            decode(&packet(CANCEL_REQUEST, &body)),
            Ok(StartupPacket::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
    }

    #[test]
    fn rejects_bad_lengths_and_truncated_params() {
        assert!(packet_len(&[0, 0, 0, 3]).is_err());
        assert!(packet_len(&[0x7f, 0, 0, 0]).is_err());
        assert_eq!(packet_len(&[0, 0]), Ok(None));
        assert!(decode(&packet(PROTOCOL_3_0, b"user\0app")).is_err());
        assert!(decode(&packet(PROTOCOL_3_0, b"")).is_err());
    }
}
