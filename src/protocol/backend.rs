//! Backend messages that pgrouter synthesizes itself. Replies that come from
//! a server are forwarded as bytes and only scanned (see `scan`).

use bytes::{BufMut, BytesMut};

pub const AUTHENTICATION: u8 = b'R';
pub const PARAMETER_STATUS: u8 = b'S';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const PARSE_COMPLETE: u8 = b'1';
pub const ERROR_RESPONSE: u8 = b'E';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// Transaction status as ReadyForQuery reports it.
pub const STATUS_IDLE: u8 = b'I';
pub const STATUS_IN_TRANSACTION: u8 = b'T';
pub const STATUS_FAILED: u8 = b'E';

/// SQLSTATE codes pgrouter itself reports.
pub mod sqlstate {
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const INTERNAL_ERROR: &str = "XX000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    /// Only for NoticeResponse.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// Appends a message: tag, a length placeholder, the body `write` puts, and
/// then the real length.
fn message(buf: &mut BytesMut, tag: u8, write: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    write(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, text: &str) {
    buf.put_slice(text.as_bytes());
    buf.put_u8(0);
}

/// A NoticeResponse: information the client shows and goes on.
pub fn notice_response(buf: &mut BytesMut, text: &str) {
    fields(buf, b'N', Severity::Notice, "00000", text);
}

pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, text: &str) {
    fields(buf, ERROR_RESPONSE, severity, code, text);
}

fn fields(buf: &mut BytesMut, tag: u8, severity: Severity, code: &str, text: &str) {
    message(buf, tag, |buf| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', text),
        ] {
            buf.put_u8(field);
            put_cstr(buf, value);
        }
        buf.put_u8(0);
    });
}

pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, AUTHENTICATION, |buf| buf.put_i32(0));
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, AUTHENTICATION, |buf| {
        buf.put_i32(5);
        buf.put_slice(&salt);
    });
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanism: &str) {
    message(buf, AUTHENTICATION, |buf| {
        buf.put_i32(10);
        put_cstr(buf, mechanism);
        buf.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, AUTHENTICATION, |buf| {
        buf.put_i32(11);
        buf.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, AUTHENTICATION, |buf| {
        buf.put_i32(12);
        buf.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, PARAMETER_STATUS, |buf| {
        put_cstr(buf, name);
        put_cstr(buf, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    message(buf, BACKEND_KEY_DATA, |buf| {
        buf.put_i32(process_id);
        buf.put_i32(secret_key);
    });
}

pub fn parse_complete(buf: &mut BytesMut) {
    message(buf, b'1', |_| {});
}

pub fn bind_complete(buf: &mut BytesMut) {
    message(buf, b'2', |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    message(buf, b'3', |_| {});
}

/// A ParameterDescription of a statement without parameters.
pub fn no_parameters(buf: &mut BytesMut) {
    message(buf, b't', |buf| buf.put_i16(0));
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |buf| put_cstr(buf, tag));
}

/// A RowDescription of text columns, as pgrouter's own result sets have.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    const TEXT_OID: i32 = 25;
    message(buf, b'T', |buf| {
        buf.put_i16(columns.len() as i16);
        for name in columns {
            put_cstr(buf, name);
            buf.put_i32(0); // no table
            buf.put_i16(0); // no column number
            buf.put_i32(TEXT_OID);
            buf.put_i16(-1); // variable length
            buf.put_i32(-1); // no type modifier
            buf.put_i16(0); // text format
        }
    });
}

/// A DataRow of text values; `None` is NULL.
pub fn data_row<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    message(buf, b'D', |buf| {
        buf.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(text) => {
                    let text = text.as_ref().as_bytes();
                    buf.put_i32(text.len() as i32);
                    buf.put_slice(text);
                }
                None => buf.put_i32(-1),
            }
        }
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, READY_FOR_QUERY, |buf| buf.put_u8(status));
}

/// Tells a client that asked for protocol 3.x (x > 0) or for `_pq_.`
/// options that we speak 3.0 and ignore those options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported: &[&str]) {
    message(buf, NEGOTIATE_PROTOCOL_VERSION, |buf| {
        buf.put_i32(super::startup::PROTOCOL_3_0);
        buf.put_i32(unsupported.len() as i32);
        for option in unsupported {
            put_cstr(buf, option);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn error_response_round_trips_through_postgres_protocol() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Error, "53300", "pool is busy");
        let Some(Message::ErrorResponse(body)) = Message::parse(&mut buf).unwrap() else {
            panic!("not an error response");
        };
        use fallible_iterator::FallibleIterator;
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8_lossy(f.value_bytes()).into_owned(),
                ))
            })
            .collect()
            .unwrap();
        assert!(fields.contains(&(b'C', "53300".to_owned())));
        assert!(fields.contains(&(b'M', "pool is busy".to_owned())));
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_replies_round_trip() {
        let mut buf = BytesMut::new();
        authentication_ok(&mut buf);
        parameter_status(&mut buf, "server_version", "15.0");
        backend_key_data(&mut buf, 1, 2);
        ready_for_query(&mut buf, STATUS_IDLE);
        assert!(matches!(
            Message::parse(&mut buf).unwrap(),
            Some(Message::AuthenticationOk)
        ));
        let Some(Message::ParameterStatus(p)) = Message::parse(&mut buf).unwrap() else {
            panic!("not a parameter status");
        };
        assert_eq!(p.name().unwrap(), "server_version");
        assert_eq!(p.value().unwrap(), "15.0");
        let Some(Message::BackendKeyData(k)) = Message::parse(&mut buf).unwrap() else {
            panic!("not key data");
        };
        assert_eq!((k.process_id(), k.secret_key()), (1, 2));
        let Some(Message::ReadyForQuery(r)) = Message::parse(&mut buf).unwrap() else {
            panic!("not ready for query");
        };
        assert_eq!(r.status(), STATUS_IDLE);
        assert!(buf.is_empty());
    }
}
