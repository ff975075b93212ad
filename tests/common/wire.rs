//! A raw PostgreSQL v3 wire client for tests that must control every byte:
//! message builders (including malformed ones), a buffered connection that
//! reads whole backend messages with a deadline, and a decoded [`Msg`].
//!
//! Works the same against pgrouter and against a PostgreSQL node directly,
//! which is what differential tests need. Logins use `trustuser`, whom
//! both pgrouter (`auth = "trust"`) and the test cluster (`pg_hba` trust)
//! let in without a password.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

pub const PROTOCOL_2_0: i32 = 131_072;
pub const PROTOCOL_3_0: i32 = 196_608;
pub const PROTOCOL_3_1: i32 = 196_609;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;

/// How long any single read or write may take by default.
pub const IO_DEADLINE: Duration = Duration::from_secs(10);

/// The user that logs in without a password, directly and through pgrouter.
pub const TRUST_USER: &str = "trustuser";

// ---------------------------------------------------------------------------
// Frontend message builders
// ---------------------------------------------------------------------------

/// A StartupMessage: length, version, NUL-terminated name/value pairs, NUL.
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// SSLRequest / GSSENCRequest: length 8 and the request code.
pub fn negotiation_request(code: i32) -> Vec<u8> {
    let mut out = 8i32.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out
}

/// A typed frontend message: tag, length (self included), body.
pub fn typed_message(tag: u8, body: &[u8]) -> Vec<u8> {
    with_declared_length(tag, (body.len() + 4) as i32, body)
}

/// A typed message whose length field says `declared`, whatever the body
/// really is: for malformed-message tests.
pub fn with_declared_length(tag: u8, declared: i32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Query ('Q').
pub fn query(sql: &str) -> Vec<u8> {
    query_bytes(sql.as_bytes())
}

/// Query with SQL that need not be UTF-8.
pub fn query_bytes(sql: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(sql.len() + 1);
    cstr(&mut body, sql);
    typed_message(b'Q', &body)
}

/// Parse ('P') of `name` ("" for the unnamed statement) with parameter
/// type OIDs (0 = let the server infer).
pub fn parse(name: &str, sql: &str, param_types: &[u32]) -> Vec<u8> {
    parse_bytes(name, sql.as_bytes(), param_types)
}

/// Parse with SQL that need not be UTF-8.
pub fn parse_bytes(name: &str, sql: &[u8], param_types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name.as_bytes());
    cstr(&mut body, sql);
    body.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
    for oid in param_types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    typed_message(b'P', &body)
}

/// Bind ('B') of `statement` to `portal` with text parameters (None =
/// NULL) and text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    cstr(&mut body, statement.as_bytes());
    // No parameter format codes: all text.
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    // No result format codes: all text.
    body.extend_from_slice(&0i16.to_be_bytes());
    typed_message(b'B', &body)
}

/// Describe ('D') of a prepared statement.
pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name.as_bytes());
    typed_message(b'D', &body)
}

/// Describe ('D') of a portal.
pub fn describe_portal(name: &str) -> Vec<u8> {
    let mut body = vec![b'P'];
    cstr(&mut body, name.as_bytes());
    typed_message(b'D', &body)
}

/// Execute ('E') of a portal; `max_rows` 0 means all.
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    body.extend_from_slice(&max_rows.to_be_bytes());
    typed_message(b'E', &body)
}

/// Close ('C') of a prepared statement.
pub fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name.as_bytes());
    typed_message(b'C', &body)
}

/// Close ('C') of a portal.
pub fn close_portal(name: &str) -> Vec<u8> {
    let mut body = vec![b'P'];
    cstr(&mut body, name.as_bytes());
    typed_message(b'C', &body)
}

/// Sync ('S').
pub fn sync() -> Vec<u8> {
    typed_message(b'S', &[])
}

/// Flush ('H').
pub fn flush() -> Vec<u8> {
    typed_message(b'H', &[])
}

/// CopyData ('d').
pub fn copy_data(data: &[u8]) -> Vec<u8> {
    typed_message(b'd', data)
}

/// CopyDone ('c').
pub fn copy_done() -> Vec<u8> {
    typed_message(b'c', &[])
}

/// CopyFail ('f').
pub fn copy_fail(reason: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, reason.as_bytes());
    typed_message(b'f', &body)
}

/// Terminate ('X').
pub fn terminate() -> Vec<u8> {
    typed_message(b'X', &[])
}

/// Parse (unnamed) + Bind + Execute + Sync of one statement with text
/// parameters: the extended protocol's one-shot query.
pub fn extended_query(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
    [
        parse("", sql, &[]),
        bind("", "", params),
        execute("", 0),
        sync(),
    ]
    .concat()
}

// ---------------------------------------------------------------------------
// Backend messages
// ---------------------------------------------------------------------------

/// A backend message: tag byte and body (after the i32 length).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Msg {
    pub fn tag(&self) -> char {
        char::from(self.tag)
    }

    pub fn i32_at(&self, at: usize) -> i32 {
        let bytes: [u8; 4] = self
            .body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("message {self:?} too short for an i32 at {at}"));
        i32::from_be_bytes(bytes)
    }

    fn i16_at(&self, at: usize) -> i16 {
        let bytes: [u8; 2] = self
            .body
            .get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("message {self:?} too short for an i16 at {at}"));
        i16::from_be_bytes(bytes)
    }

    /// The NUL-terminated strings in the body from `at` on.
    pub fn cstrings(&self, at: usize) -> Vec<String> {
        let mut parts: Vec<String> = self.body[at..]
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        // The final NUL leaves an empty tail.
        parts.pop();
        parts
    }

    /// ErrorResponse / NoticeResponse fields by their type byte.
    pub fn fields(&self) -> HashMap<char, String> {
        let mut fields = HashMap::new();
        let mut rest = &self.body[..];
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            fields.insert(
                char::from(kind),
                String::from_utf8_lossy(&tail[..end]).into_owned(),
            );
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        fields
    }

    pub fn is_error(&self) -> bool {
        self.tag == b'E'
    }

    /// An ErrorResponse's SQLSTATE.
    pub fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E')
            .then(|| self.fields().get(&'C').cloned())
            .flatten()
    }

    /// An ErrorResponse's or NoticeResponse's primary message.
    pub fn message(&self) -> Option<String> {
        matches!(self.tag, b'E' | b'N')
            .then(|| self.fields().get(&'M').cloned())
            .flatten()
    }

    /// An ErrorResponse's or NoticeResponse's severity (the untranslated
    /// 'V' field when there is one, else 'S').
    pub fn severity(&self) -> Option<String> {
        if !matches!(self.tag, b'E' | b'N') {
            return None;
        }
        let fields = self.fields();
        fields.get(&'V').or_else(|| fields.get(&'S')).cloned()
    }

    /// ReadyForQuery's transaction status: 'I', 'T' or 'E'.
    pub fn status(&self) -> Option<char> {
        (self.tag == b'Z' && self.body.len() == 1).then(|| char::from(self.body[0]))
    }

    /// CommandComplete's tag, e.g. "INSERT 0 1".
    pub fn command_tag(&self) -> Option<String> {
        (self.tag == b'C').then(|| self.cstrings(0).into_iter().next().unwrap_or_default())
    }

    /// A DataRow's columns as text (None for NULL; bytes decoded lossily).
    pub fn columns(&self) -> Vec<Option<String>> {
        self.raw_columns()
            .into_iter()
            .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }

    /// A DataRow's columns as bytes (None for NULL).
    pub fn raw_columns(&self) -> Vec<Option<Vec<u8>>> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let count = self.i16_at(0).max(0) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let len = self.i32_at(at);
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let end = at + len as usize;
                out.push(Some(self.body[at..end].to_vec()));
                at = end;
            }
        }
        out
    }

    /// The first column of a DataRow, as text (None for NULL).
    pub fn first_column(&self) -> Option<String> {
        self.columns().into_iter().next().flatten()
    }

    /// A readable one-line rendering, for failure messages.
    pub fn describe(&self) -> String {
        let tag = self.tag();
        match self.tag {
            b'E' | b'N' => {
                let f = self.fields();
                let get = |c| f.get(&c).cloned().unwrap_or_default();
                format!(
                    "{tag}({} {} {:?})",
                    self.severity().unwrap_or_default(),
                    get('C'),
                    get('M')
                )
            }
            b'Z' => format!("Z({})", self.status().unwrap_or('?')),
            b'C' => format!("C({:?})", self.command_tag().unwrap_or_default()),
            b'D' if self.body.len() >= 2 => format!("D{:?}", self.columns()),
            b'T' if self.body.len() >= 2 => format!("T{:?}", self.column_names()),
            b'S' => format!("S{:?}", self.cstrings(0)),
            b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => tag.to_string(),
            _ => format!("{tag}({})", escape(&self.body)),
        }
    }

    /// RowDescription's column names.
    pub fn column_names(&self) -> Vec<String> {
        assert_eq!(self.tag, b'T', "not a RowDescription: {self:?}");
        let count = self.i16_at(0).max(0) as usize;
        let mut at = 2;
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            let end = at
                + self.body[at..]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(self.body.len() - at);
            names.push(String::from_utf8_lossy(&self.body[at..end]).into_owned());
            at = end + 1 + 18;
        }
        names
    }
}

impl Msg {
    /// A rendering for comparing reply streams: exact, except that an
    /// ErrorResponse or NoticeResponse is its severity, SQLSTATE and
    /// message (not its position, file, line or routine), and a
    /// RowDescription's table OIDs are masked (the same table has another
    /// OID in another database).
    pub fn canonical(&self) -> String {
        match self.tag {
            b'E' | b'N' => self.describe(),
            b'T' if self.body.len() >= 2 => {
                let count = self.i16_at(0).max(0) as usize;
                let mut body = self.body.clone();
                let mut at = 2;
                for _ in 0..count {
                    let Some(nul) = body[at..].iter().position(|&b| b == 0) else {
                        break;
                    };
                    at += nul + 1;
                    if at + 18 > body.len() {
                        break;
                    }
                    body[at..at + 4].copy_from_slice(&[0; 4]);
                    at += 18;
                }
                format!("T({})", escape(&body))
            }
            b'D' if self.body.len() >= 2 => format!(
                "D[{}]",
                self.raw_columns()
                    .iter()
                    .map(|c| c
                        .as_ref()
                        .map_or("NULL".into(), |b| format!("'{}'", escape(b))))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => self.describe(),
        }
    }
}

/// The messages worth comparing with another server's, as
/// [`Msg::canonical`]: ParameterStatus and BackendKeyData left out.
pub fn comparable(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'S' | b'K'))
        .map(Msg::canonical)
        .collect()
}

/// Bytes as text, non-printable ones escaped.
pub fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// Splits a byte stream into whole backend messages (a trailing partial one
/// is dropped).
pub fn parse_messages(mut bytes: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let total = len as usize + 1;
        if len < 4 || bytes.len() < total {
            break;
        }
        out.push(Msg {
            tag: bytes[0],
            body: bytes[5..total].to_vec(),
        });
        bytes = &bytes[total..];
    }
    out
}

/// The tags of messages, as a string such as "12DCZ".
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(Msg::tag).collect()
}

// ---------------------------------------------------------------------------
// A connection
// ---------------------------------------------------------------------------

/// Why a read returned no message.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing (whole) arrived in time; the connection is still open.
    Timeout,
    /// The peer closed the connection (or it failed).
    Closed(String),
    /// The peer sent something that is not a backend message.
    Garbage(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout => write!(f, "timed out"),
            ReadError::Closed(why) => write!(f, "connection closed ({why})"),
            ReadError::Garbage(what) => write!(f, "garbage from the server: {what}"),
        }
    }
}

/// A raw connection with a read buffer, so that a read that times out
/// loses nothing (reads are cancel-safe).
pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
    /// What the connection is to, for failure messages.
    pub peer: String,
}

impl Conn {
    /// Connects (within [`IO_DEADLINE`]); panics on failure.
    pub async fn connect(addr: impl ToSocketAddrs + fmt::Debug) -> Conn {
        let peer = format!("{addr:?}");
        let stream = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {peer} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {peer}: {e}"));
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: BytesMut::with_capacity(8192),
            peer,
        }
    }

    /// Connects and logs in as `trustuser` to `database` with extra startup
    /// parameters; panics unless the login succeeds.
    pub async fn trust(
        addr: impl ToSocketAddrs + fmt::Debug,
        database: &str,
        extra: &[(&str, &str)],
    ) -> Conn {
        let mut conn = Conn::connect(addr).await;
        let mut params = vec![("user", TRUST_USER), ("database", database)];
        params.extend_from_slice(extra);
        conn.login(PROTOCOL_3_0, &params).await;
        conn
    }

    /// Writes all of `bytes` (within [`IO_DEADLINE`]); panics on failure.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes).await {
            panic!("write to {}: {e}", self.peer);
        }
    }

    /// Writes all of `bytes`, returning a failure instead of panicking.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(IO_DEADLINE, self.stream.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }

    /// Reads more bytes into the buffer; Ok(false) at EOF.
    async fn fill(&mut self, until: Instant) -> Result<bool, ReadError> {
        let left = until.saturating_duration_since(Instant::now());
        self.buf.reserve(8192);
        match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(ReadError::Closed(e.to_string())),
        }
    }

    /// Reads the single byte that answers SSLRequest / GSSENCRequest.
    pub async fn read_byte(&mut self) -> u8 {
        let until = Instant::now() + IO_DEADLINE;
        while self.buf.is_empty() {
            match self.fill(until).await {
                Ok(true) => {}
                Ok(false) => panic!("{} closed before answering", self.peer),
                Err(e) => panic!("reading one byte from {}: {e}", self.peer),
            }
        }
        self.buf.get_u8()
    }

    /// The next whole message, waiting at most `within`.
    pub async fn try_read_msg(&mut self, within: Duration) -> Result<Msg, ReadError> {
        let until = Instant::now() + within;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if !(4..=1 << 26).contains(&len) {
                    return Err(ReadError::Garbage(format!(
                        "implausible length {len} of a {:?} message",
                        char::from(self.buf[0])
                    )));
                }
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(total - 5).to_vec();
                    return Ok(Msg { tag, body });
                }
            }
            match self.fill(until).await {
                Ok(true) => {}
                Ok(false) => {
                    let partial = if self.buf.is_empty() {
                        String::from("EOF")
                    } else {
                        format!("EOF after a partial message {:?}", escape(&self.buf))
                    };
                    return Err(ReadError::Closed(partial));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole message (within [`IO_DEADLINE`]); panics otherwise.
    pub async fn read_msg(&mut self) -> Msg {
        match self.try_read_msg(IO_DEADLINE).await {
            Ok(msg) => msg,
            Err(e) => panic!(
                "reading a message from {}: {e} (after {IO_DEADLINE:?})",
                self.peer
            ),
        }
    }

    /// Reads messages up to and including ReadyForQuery, errors included,
    /// waiting at most `within` in all; returns what arrived and why it
    /// stopped short, if it did.
    pub async fn try_read_through_ready(
        &mut self,
        within: Duration,
    ) -> (Vec<Msg>, Result<(), ReadError>) {
        let until = Instant::now() + within;
        let mut msgs = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.try_read_msg(left).await {
                Ok(msg) => {
                    let done = msg.tag == b'Z';
                    msgs.push(msg);
                    if done {
                        return (msgs, Ok(()));
                    }
                }
                Err(e) => return (msgs, Err(e)),
            }
        }
    }

    /// Reads messages through the `n`th ReadyForQuery, waiting at most
    /// `within` in all; returns what arrived and why it stopped short, if
    /// it did.
    pub async fn try_read_readies(
        &mut self,
        n: usize,
        within: Duration,
    ) -> (Vec<Msg>, Result<(), ReadError>) {
        let until = Instant::now() + within;
        let mut msgs = Vec::new();
        for _ in 0..n {
            let left = until.saturating_duration_since(Instant::now());
            let (more, result) = self.try_read_through_ready(left).await;
            msgs.extend(more);
            if result.is_err() {
                return (msgs, result);
            }
        }
        (msgs, Ok(()))
    }

    /// Reads messages up to and including ReadyForQuery, ErrorResponses
    /// included; panics if none comes within [`IO_DEADLINE`].
    pub async fn read_through_ready(&mut self) -> Vec<Msg> {
        match self.try_read_through_ready(IO_DEADLINE).await {
            (msgs, Ok(())) => msgs,
            (msgs, Err(e)) => panic!(
                "no ReadyForQuery from {}: {e}; received {msgs:?}",
                self.peer
            ),
        }
    }

    /// Reads messages up to and including ReadyForQuery; panics on an
    /// ErrorResponse.
    pub async fn read_until_ready(&mut self) -> Vec<Msg> {
        let msgs = self.read_through_ready().await;
        if let Some(error) = msgs.iter().find(|m| m.tag == b'E') {
            panic!(
                "unexpected ErrorResponse {:?} from {} in {msgs:?}",
                error.fields(),
                self.peer
            );
        }
        msgs
    }

    /// Reads until the peer closes (EOF or a connection error); returns what
    /// arrived before. Panics if the connection is still open after
    /// `deadline`.
    pub async fn read_to_eof(&mut self, deadline: Duration) -> Vec<u8> {
        match self.try_read_to_eof(deadline).await {
            Ok(bytes) => bytes,
            Err(bytes) => panic!(
                "connection to {} still open after {deadline:?}; received {:?}",
                self.peer,
                parse_messages(&bytes)
            ),
        }
    }

    /// Like [`Conn::read_to_eof`], with `Err(what arrived)` if the
    /// connection is still open after `deadline`.
    pub async fn try_read_to_eof(&mut self, deadline: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let until = Instant::now() + deadline;
        loop {
            match self.fill(until).await {
                Ok(true) => {}
                Ok(false) | Err(ReadError::Closed(_)) | Err(ReadError::Garbage(_)) => {
                    return Ok(self.buf.split().to_vec())
                }
                Err(ReadError::Timeout) => return Err(self.buf.split().to_vec()),
            }
        }
    }

    /// Sends a StartupMessage and reads through the first ReadyForQuery;
    /// checks it was authenticated (AuthenticationOk) and the status is
    /// idle. Only for users that need no password.
    pub async fn login(&mut self, version: i32, params: &[(&str, &str)]) -> Vec<Msg> {
        self.send(&startup_packet(version, params)).await;
        let msgs = self.read_until_ready().await;
        let auth = msgs
            .iter()
            .find(|m| m.tag == b'R')
            .unwrap_or_else(|| panic!("no Authentication message in {msgs:?}"));
        assert_eq!(auth.i32_at(0), 0, "expected AuthenticationOk, got {auth:?}");
        let ready = msgs.last().expect("at least ReadyForQuery");
        assert_eq!(ready.body, b"I", "ReadyForQuery status: {ready:?}");
        msgs
    }

    /// Runs a simple query whose answer has a single row; returns its first
    /// column. Panics on an error.
    pub async fn query_value(&mut self, sql: &str) -> Option<String> {
        self.send(&query(sql)).await;
        let msgs = self.read_until_ready().await;
        let rows: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
        assert_eq!(rows.len(), 1, "one row expected for {sql:?}: {msgs:?}");
        rows[0].first_column()
    }

    /// Runs a simple query and returns every reply through ReadyForQuery
    /// (errors included).
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        self.read_through_ready().await
    }
}
