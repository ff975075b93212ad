//! The startup phase over raw sockets: encryption negotiation, protocol
//! version negotiation, malformed and oversized packets, the login timeout,
//! the message size limit, and what a client receives before its first
//! ReadyForQuery.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};

const PROTOCOL_2_0: i32 = 131_072;
const PROTOCOL_3_0: i32 = 196_608;
const PROTOCOL_3_1: i32 = 196_609;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// How long any single read may take before a test fails.
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// The ParameterStatus names a PostgreSQL 15 server reports at login.
const EXPECTED_PARAMS: &[&str] = &[
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "IntervalStyle",
    "application_name",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "in_hot_standby",
];

// ---------------------------------------------------------------------------
// Raw protocol helpers
// ---------------------------------------------------------------------------

/// A StartupMessage: length, version, NUL-terminated name/value pairs, NUL.
fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
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
fn negotiation_request(code: i32) -> Vec<u8> {
    let mut out = 8i32.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out
}

/// A typed frontend message: tag, length (self included), body.
fn typed_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    typed_message(b'Q', &body)
}

/// A backend message: tag byte and body (after the i32 length).
#[derive(Debug, Clone)]
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

impl Msg {
    fn tag(&self) -> char {
        char::from(self.tag)
    }

    fn i32_at(&self, at: usize) -> i32 {
        let bytes: [u8; 4] = self.body[at..at + 4]
            .try_into()
            .unwrap_or_else(|_| panic!("message {self:?} too short for an i32 at {at}"));
        i32::from_be_bytes(bytes)
    }

    /// The NUL-terminated strings in the body from `at` on.
    fn cstrings(&self, at: usize) -> Vec<String> {
        let mut parts: Vec<String> = self.body[at..]
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        // The final NUL leaves an empty tail.
        parts.pop();
        parts
    }

    /// ErrorResponse / NoticeResponse fields by their type byte.
    fn fields(&self) -> HashMap<char, String> {
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

    fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E')
            .then(|| self.fields().get(&'C').cloned())
            .flatten()
    }

    /// The first column of a DataRow, as text (None for NULL).
    fn first_column(&self) -> Option<String> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let len = self.i32_at(2);
        (len >= 0).then(|| String::from_utf8_lossy(&self.body[6..6 + len as usize]).into_owned())
    }
}

/// Splits a byte stream into whole backend messages (a trailing partial one
/// is dropped).
fn parse_messages(mut bytes: &[u8]) -> Vec<Msg> {
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

async fn connect(router: &Pgrouter) -> TcpStream {
    tokio::time::timeout(IO_DEADLINE, TcpStream::connect(router.addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to pgrouter at {} timed out", router.addr))
        .unwrap_or_else(|e| panic!("connecting to pgrouter at {}: {e}", router.addr))
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    tokio::time::timeout(IO_DEADLINE, stream.write_all(bytes))
        .await
        .expect("write to pgrouter timed out")
        .expect("write to pgrouter");
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8], what: &str) {
    match tokio::time::timeout(IO_DEADLINE, stream.read_exact(buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("reading {what} from pgrouter: {e}"),
        Err(_) => panic!("reading {what} from pgrouter timed out after {IO_DEADLINE:?}"),
    }
}

/// Reads the single byte that answers SSLRequest / GSSENCRequest.
async fn read_byte(stream: &mut TcpStream) -> u8 {
    let mut byte = [0u8; 1];
    read_exact(stream, &mut byte, "the encryption answer").await;
    byte[0]
}

async fn read_msg(stream: &mut TcpStream) -> Msg {
    let mut header = [0u8; 5];
    read_exact(stream, &mut header, "a message header").await;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    assert!(
        (4..=1 << 24).contains(&len),
        "implausible length {len} of a {:?} message",
        char::from(header[0])
    );
    let mut body = vec![0u8; len as usize - 4];
    read_exact(stream, &mut body, "a message body").await;
    Msg {
        tag: header[0],
        body,
    }
}

/// Reads messages up to and including ReadyForQuery; panics on an
/// ErrorResponse.
async fn read_until_ready(stream: &mut TcpStream) -> Vec<Msg> {
    let mut msgs = Vec::new();
    loop {
        let msg = read_msg(stream).await;
        if msg.tag == b'E' {
            panic!(
                "unexpected ErrorResponse {:?} after {:?}",
                msg.fields(),
                msgs.iter().map(Msg::tag).collect::<String>()
            );
        }
        let done = msg.tag == b'Z';
        msgs.push(msg);
        if done {
            return msgs;
        }
    }
}

/// Reads until the peer closes (EOF or a connection error); returns what
/// arrived before. Panics if the connection is still open after `deadline`.
async fn read_to_eof(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "connection still open after {deadline:?}; received {:?}",
                parse_messages(&got)
            ),
        }
    }
}

/// Sends a trust StartupMessage for `trustuser` and reads through the first
/// ReadyForQuery; checks it was authenticated (AuthenticationOk) and the
/// status is idle.
async fn trust_login(stream: &mut TcpStream, version: i32, params: &[(&str, &str)]) -> Vec<Msg> {
    send(stream, &startup_packet(version, params)).await;
    let msgs = read_until_ready(stream).await;
    let auth = msgs
        .iter()
        .find(|m| m.tag == b'R')
        .unwrap_or_else(|| panic!("no Authentication message in {msgs:?}"));
    assert_eq!(auth.i32_at(0), 0, "expected AuthenticationOk, got {auth:?}");
    let ready = msgs.last().expect("at least ReadyForQuery");
    assert_eq!(ready.body, b"I", "ReadyForQuery status: {ready:?}");
    msgs
}

/// Runs a simple query and returns the first column of its single row.
async fn query_value(stream: &mut TcpStream, sql: &str) -> Option<String> {
    send(stream, &query_message(sql)).await;
    let msgs = read_until_ready(stream).await;
    let rows: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 1, "one row expected for {sql:?}: {msgs:?}");
    rows[0].first_column()
}

/// Polls pgrouter's log for a line containing `needle`.
async fn wait_log(router: &Pgrouter, needle: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("pgrouter log line containing {needle:?}"),
        || async { router.logs().iter().any(|l| l.contains(needle)) },
    )
    .await;
}

/// A normal tokio-postgres client through pgrouter still works.
async fn assert_router_serves(router: &Pgrouter, db: &str) {
    let client = router.connect("app", "secret", db).await;
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1 through pgrouter")
        .get(0);
    assert_eq!(one, 1);
}

async fn start_router(prefix: &str, extra_server_lines: &[&str]) -> (Pgrouter, String) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix).await;
    let mut config = RouterConfig::new(cluster.primary(), &db);
    for line in extra_server_lines {
        config = config.server(line);
    }
    (Pgrouter::start(&config.build()), db)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_is_refused_with_n_then_login_proceeds() {
    let (router, db) = start_router("startup_ssl", &[]).await;
    let mut stream = connect(&router).await;
    send(&mut stream, &negotiation_request(SSL_REQUEST)).await;
    assert_eq!(read_byte(&mut stream).await, b'N', "answer to SSLRequest");

    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    assert_eq!(
        query_value(&mut stream, "SELECT current_user::text").await,
        Some("trustuser".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_refused_with_n_then_login_proceeds() {
    let (router, db) = start_router("startup_gss", &[]).await;
    // As libpq does with gssencmode=prefer and sslmode=prefer: GSSENCRequest,
    // then SSLRequest, then the StartupMessage, all on one connection.
    let mut stream = connect(&router).await;
    send(&mut stream, &negotiation_request(GSSENC_REQUEST)).await;
    assert_eq!(
        read_byte(&mut stream).await,
        b'N',
        "answer to GSSENCRequest"
    );
    send(&mut stream, &negotiation_request(SSL_REQUEST)).await;
    assert_eq!(read_byte(&mut stream).await, b'N', "answer to SSLRequest");
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    assert_eq!(
        query_value(&mut stream, "SELECT current_user::text").await,
        Some("trustuser".into())
    );

    // GSSENCRequest alone, too.
    let mut stream = connect(&router).await;
    send(&mut stream, &negotiation_request(GSSENC_REQUEST)).await;
    assert_eq!(
        read_byte(&mut stream).await,
        b'N',
        "answer to GSSENCRequest"
    );
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    assert_eq!(
        query_value(&mut stream, "SELECT 40 + 2").await,
        Some("42".into())
    );
}

/// (startup version, `_pq_.` options sent, the names 'v' must list)
type NegotiationCase = (
    i32,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_minor_version_and_pq_options_get_negotiate_protocol_version() {
    let (router, db) = start_router("startup_negotiate", &[]).await;
    let cases: [NegotiationCase; 3] = [
        (PROTOCOL_3_1, &[], &[]),
        (PROTOCOL_3_0, &[("_pq_.foo", "on")], &["_pq_.foo"]),
        (
            PROTOCOL_3_1,
            &[("_pq_.foo", "on"), ("_pq_.bar", "1")],
            &["_pq_.foo", "_pq_.bar"],
        ),
    ];
    for (version, options, unsupported) in cases {
        let what = format!("version {version:#x} with options {options:?}");
        let mut params = vec![("user", "trustuser"), ("database", db.as_str())];
        params.extend_from_slice(options);
        let mut stream = connect(&router).await;
        let msgs = trust_login(&mut stream, version, &params).await;

        let v = &msgs[0];
        assert_eq!(v.tag(), 'v', "{what}: first message {msgs:?}");
        assert_eq!(
            v.i32_at(0),
            PROTOCOL_3_0,
            "{what}: newest supported version"
        );
        assert_eq!(
            v.i32_at(4),
            unsupported.len() as i32,
            "{what}: count of unsupported options in {v:?}"
        );
        let listed = v.cstrings(8);
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        let mut expected: Vec<String> = unsupported.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(listed_sorted, expected, "{what}: options listed in {v:?}");
        assert_eq!(msgs[1].tag(), 'R', "{what}: AuthenticationOk follows 'v'");
        assert_eq!(
            msgs.iter().filter(|m| m.tag == b'v').count(),
            1,
            "{what}: exactly one NegotiateProtocolVersion"
        );

        assert_eq!(
            query_value(&mut stream, "SELECT current_user::text").await,
            Some("trustuser".into()),
            "{what}: session works"
        );
    }

    // Plain 3.0 without options gets no 'v'.
    let mut stream = connect(&router).await;
    let msgs = trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    assert_eq!(msgs[0].tag(), 'R', "plain 3.0 login: {msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_2_is_refused_with_0a000() {
    let (router, db) = start_router("startup_v2", &[]).await;
    let mut stream = connect(&router).await;
    send(
        &mut stream,
        &startup_packet(PROTOCOL_2_0, &[("user", "trustuser"), ("database", &db)]),
    )
    .await;
    let bytes = read_to_eof(&mut stream, IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    assert_eq!(msgs.len(), 1, "exactly one message before close: {msgs:?}");
    assert_eq!(msgs[0].tag(), 'E', "{msgs:?}");
    let fields = msgs[0].fields();
    let msg_sqlstate = msgs[0].sqlstate();
    assert_eq!(fields.get(&'C').cloned(), msg_sqlstate, "{fields:?}");
    assert_eq!(msg_sqlstate.as_deref(), Some("0A000"), "{fields:?}");
    assert_eq!(
        fields.get(&'S').map(String::as_str),
        Some("FATAL"),
        "{fields:?}"
    );
    assert_router_serves(&router, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_lengths_close_the_connection() {
    let (router, db) = start_router("startup_garbage", &[]).await;

    let oversized = {
        // Declares 10001 bytes (over PostgreSQL's 10000 limit) and sends a
        // plausible start of a StartupMessage.
        let mut p = 10_001i32.to_be_bytes().to_vec();
        p.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        p.extend_from_slice(b"user\0trustuser\0");
        p
    };
    let huge = {
        let mut p = 0x7fff_ffffi32.to_be_bytes().to_vec();
        p.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        p
    };
    let cases: [(&str, Vec<u8>); 5] = [
        ("an HTTP request", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("a 10001-byte startup length", oversized),
        ("a 2 GB startup length", huge),
        ("a startup length of 4", vec![0, 0, 0, 4, 0, 3, 0, 0]),
        (
            "a negative startup length",
            vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
        ),
    ];
    for (what, bytes) in cases {
        let warnings_before = router.logs().iter().filter(|l| l.contains("WARN")).count();
        let mut stream = connect(&router).await;
        send(&mut stream, &bytes).await;
        let reply = read_to_eof(&mut stream, IO_DEADLINE).await;
        // Either nothing or a FATAL ErrorResponse before the close; never a
        // login.
        for msg in parse_messages(&reply) {
            assert_eq!(msg.tag(), 'E', "{what}: unexpected reply {msg:?}");
            assert_eq!(
                msg.fields().get(&'S').map(String::as_str),
                Some("FATAL"),
                "{what}: {msg:?}"
            );
        }
        eventually(
            Duration::from_secs(10),
            &format!("a WARN log line about {what}"),
            || async {
                router.logs().iter().filter(|l| l.contains("WARN")).count() > warnings_before
            },
        )
        .await;
        // Another client is unaffected.
        assert_router_serves(&router, &db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_messages_then_close_leave_pgrouter_running() {
    let (router, db) = start_router("startup_truncated", &[]).await;

    // A StartupMessage cut short, then the client goes away.
    let mut stream = connect(&router).await;
    let packet = startup_packet(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)]);
    send(&mut stream, &packet[..packet.len() / 2]).await;
    drop(stream);

    // A logged-in client sends half a Query, then goes away.
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    let query = query_message("SELECT 'never completed'");
    send(&mut stream, &query[..query.len() - 5]).await;
    drop(stream);
    wait_log(&router, "client disconnected").await;

    // Half a message header only.
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    send(&mut stream, &[b'Q', 0, 0]).await;
    drop(stream);

    assert_router_serves(&router, &db).await;
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    assert_eq!(
        query_value(&mut stream, "SELECT 'still here'").await,
        Some("still here".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_client_login_timeout() {
    let (router, db) = start_router(
        "startup_login_timeout",
        &["client_login_timeout = \"500ms\""],
    )
    .await;

    // Sends nothing at all.
    let started = Instant::now();
    let mut silent = connect(&router).await;
    read_to_eof(&mut silent, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the 500ms login timeout"
    );

    // Stops after SSLRequest.
    let mut stalled = connect(&router).await;
    send(&mut stalled, &negotiation_request(SSL_REQUEST)).await;
    assert_eq!(read_byte(&mut stalled).await, b'N');
    read_to_eof(&mut stalled, Duration::from_secs(5)).await;

    // Stops in the middle of SCRAM: startup sent, SASL request unanswered.
    let mut stalled = connect(&router).await;
    send(
        &mut stalled,
        &startup_packet(PROTOCOL_3_0, &[("user", "app"), ("database", &db)]),
    )
    .await;
    let sasl = read_msg(&mut stalled).await;
    assert_eq!(sasl.tag(), 'R', "{sasl:?}");
    assert_eq!(sasl.i32_at(0), 10, "AuthenticationSASL expected: {sasl:?}");
    read_to_eof(&mut stalled, Duration::from_secs(5)).await;

    wait_log(&router, "client_login_timeout").await;

    // A client that logs in promptly is not affected, also past 500ms.
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    let idle_until = Instant::now() + Duration::from_millis(800);
    let sleeper = query_value(&mut stream, "SELECT pg_sleep(0.8)::text").await;
    assert!(Instant::now() >= idle_until);
    assert_eq!(sleeper, Some(String::new()));
    assert_eq!(query_value(&mut stream, "SELECT 7").await, Some("7".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_message_size_gets_08p01_and_close() {
    let (router, db) = start_router("startup_max_message", &["max_message_size = \"64kB\""]).await;
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;

    // Just under the limit is fine.
    let filler = "x".repeat(60_000);
    assert_eq!(
        query_value(&mut stream, &format!("SELECT length('{filler}')")).await,
        Some("60000".into())
    );

    // A Query that declares 1 MB: refused as soon as the header is in.
    let mut big = vec![b'Q'];
    big.extend_from_slice(&(1i32 << 20).to_be_bytes());
    big.extend_from_slice(b"SELECT 1 /* the rest never comes */");
    send(&mut stream, &big).await;
    let bytes = read_to_eof(&mut stream, IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    let error = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse before close: {msgs:?}"));
    let fields = error.fields();
    let msg_sqlstate = error.sqlstate();
    assert_eq!(fields.get(&'C').cloned(), msg_sqlstate, "{fields:?}");
    assert_eq!(msg_sqlstate.as_deref(), Some("08P01"), "{fields:?}");
    assert_eq!(
        fields.get(&'S').map(String::as_str),
        Some("FATAL"),
        "{fields:?}"
    );

    // The same while the client holds a server connection (inside a
    // transaction, so the message arrives while relaying).
    let mut stream = connect(&router).await;
    trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    send(&mut stream, &query_message("BEGIN")).await;
    let msgs = read_until_ready(&mut stream).await;
    assert_eq!(msgs.last().map(|m| m.body.clone()), Some(b"T".to_vec()));
    send(&mut stream, &big).await;
    let bytes = read_to_eof(&mut stream, IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    let error = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse before close (in a transaction): {msgs:?}"));
    assert_eq!(error.sqlstate().as_deref(), Some("08P01"), "{error:?}");

    assert_router_serves(&router, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sends_parameter_status_set_and_backend_key_data() {
    let (router, db) = start_router("startup_params", &[]).await;
    let app_name = "startup params test";
    let mut stream = connect(&router).await;
    let msgs = trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[
            ("user", "trustuser"),
            ("database", &db),
            ("application_name", app_name),
        ],
    )
    .await;

    assert_eq!(msgs[0].tag(), 'R', "AuthenticationOk first: {msgs:?}");
    let tags: String = msgs.iter().map(Msg::tag).collect();
    assert!(
        tags.starts_with("RS") && tags.ends_with("KZ"),
        "expected R, S..., K, Z; got {tags:?}"
    );
    assert!(
        tags[1..tags.len() - 2].chars().all(|c| c == 'S'),
        "only ParameterStatus between AuthenticationOk and BackendKeyData: {tags:?}"
    );

    let mut params = HashMap::new();
    for msg in msgs.iter().filter(|m| m.tag == b'S') {
        let parts = msg.cstrings(0);
        assert_eq!(parts.len(), 2, "ParameterStatus {msg:?}");
        let previous = params.insert(parts[0].clone(), parts[1].clone());
        assert!(previous.is_none(), "{} reported twice", parts[0]);
    }
    for name in EXPECTED_PARAMS {
        assert!(
            params.contains_key(*name),
            "no ParameterStatus {name}: {params:?}"
        );
    }
    assert_eq!(params["application_name"], app_name);
    assert_eq!(params["session_authorization"], "trustuser");
    assert_eq!(params["is_superuser"], "off");
    assert_eq!(params["client_encoding"], "UTF8");
    assert_eq!(params["server_encoding"], "UTF8");
    assert_eq!(params["integer_datetimes"], "on");
    assert_eq!(params["in_hot_standby"], "off");
    assert!(
        params["server_version"].starts_with("15"),
        "server_version {:?}",
        params["server_version"]
    );

    let key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(key.body.len(), 8, "BackendKeyData body: {key:?}");
    let process_id = key.i32_at(0);
    assert!(process_id > 0, "process id {process_id}");
    let backend_pid: i32 = query_value(&mut stream, "SELECT pg_backend_pid()")
        .await
        .expect("pid")
        .parse()
        .expect("numeric pid");
    assert_ne!(
        process_id, backend_pid,
        "the client's key should be pgrouter's own, not the server's"
    );

    // Without application_name the client sees it empty, not the
    // server connection's.
    let mut stream = connect(&router).await;
    let msgs = trust_login(
        &mut stream,
        PROTOCOL_3_0,
        &[("user", "trustuser"), ("database", &db)],
    )
    .await;
    let app = msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| m.cstrings(0))
        .find(|p| p[0] == "application_name")
        .expect("application_name reported");
    assert_eq!(app[1], "", "application_name without one in the startup");

    // Two clients get different keys.
    let other_key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_ne!(other_key.body, key.body, "two clients got the same key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_are_logged() {
    let (router, db) = start_router("startup_logs", &[]).await;
    let client = router.connect("app", "secret", &db).await;
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(user, "app");
    wait_log(&router, "client connected").await;
    wait_log(&router, "server connection opened").await;
    let disconnected_before = router
        .logs()
        .iter()
        .filter(|l| l.contains("client disconnected"))
        .count();
    drop(client);
    eventually(
        Duration::from_secs(10),
        "a new \"client disconnected\" log line",
        || async {
            router
                .logs()
                .iter()
                .filter(|l| l.contains("client disconnected"))
                .count()
                > disconnected_before
        },
    )
    .await;
    let logs = router.logs();
    let connected = logs
        .iter()
        .find(|l| l.contains("client connected"))
        .expect("client connected line");
    assert!(
        connected.contains("app") && connected.contains(&db),
        "client connected line names user and database: {connected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_without_user_is_refused_with_28000() {
    let (router, db) = start_router("startup_no_user", &[]).await;
    let mut stream = connect(&router).await;
    send(
        &mut stream,
        &startup_packet(PROTOCOL_3_0, &[("database", &db)]),
    )
    .await;
    let bytes = read_to_eof(&mut stream, IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    assert_eq!(msgs.len(), 1, "exactly one message before close: {msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("28000"), "{msgs:?}");

    // Without `database` the user name is the database name, which is not
    // configured here: 3D000.
    let mut stream = connect(&router).await;
    send(
        &mut stream,
        &startup_packet(PROTOCOL_3_0, &[("user", "trustuser")]),
    )
    .await;
    let bytes = read_to_eof(&mut stream, IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    assert_eq!(msgs.len(), 1, "exactly one message before close: {msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("3D000"), "{msgs:?}");
    assert!(
        msgs[0].fields()[&'M'].contains("trustuser"),
        "the database named after the user: {msgs:?}"
    );
}
