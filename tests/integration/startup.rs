//! The startup phase over raw sockets: encryption negotiation, protocol
//! version negotiation, malformed and oversized packets, the login timeout,
//! the message size limit, and what a client receives before its first
//! ReadyForQuery.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::wire::{
    negotiation_request, parse_messages, query, startup_packet, Conn, Msg, GSSENC_REQUEST,
    IO_DEADLINE, PROTOCOL_2_0, PROTOCOL_3_0, PROTOCOL_3_1, SSL_REQUEST,
};
use crate::common::{eventually, Cluster, Pgrouter, RouterConfig};

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
// Helpers (the raw client itself is tests/common/wire.rs)
// ---------------------------------------------------------------------------

async fn connect(router: &Pgrouter) -> Conn {
    Conn::connect(router.addr).await
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
    stream.send(&negotiation_request(SSL_REQUEST)).await;
    assert_eq!(stream.read_byte().await, b'N', "answer to SSLRequest");

    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    assert_eq!(
        stream.query_value("SELECT current_user::text").await,
        Some("trustuser".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_refused_with_n_then_login_proceeds() {
    let (router, db) = start_router("startup_gss", &[]).await;
    // As libpq does with gssencmode=prefer and sslmode=prefer: GSSENCRequest,
    // then SSLRequest, then the StartupMessage, all on one connection.
    let mut stream = connect(&router).await;
    stream.send(&negotiation_request(GSSENC_REQUEST)).await;
    assert_eq!(stream.read_byte().await, b'N', "answer to GSSENCRequest");
    stream.send(&negotiation_request(SSL_REQUEST)).await;
    assert_eq!(stream.read_byte().await, b'N', "answer to SSLRequest");
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    assert_eq!(
        stream.query_value("SELECT current_user::text").await,
        Some("trustuser".into())
    );

    // GSSENCRequest alone, too.
    let mut stream = connect(&router).await;
    stream.send(&negotiation_request(GSSENC_REQUEST)).await;
    assert_eq!(stream.read_byte().await, b'N', "answer to GSSENCRequest");
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    assert_eq!(stream.query_value("SELECT 40 + 2").await, Some("42".into()));
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
        let msgs = stream.login(version, &params).await;

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
            stream.query_value("SELECT current_user::text").await,
            Some("trustuser".into()),
            "{what}: session works"
        );
    }

    // Plain 3.0 without options gets no 'v'.
    let mut stream = connect(&router).await;
    let msgs = stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    assert_eq!(msgs[0].tag(), 'R', "plain 3.0 login: {msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_2_is_refused_with_0a000() {
    let (router, db) = start_router("startup_v2", &[]).await;
    let mut stream = connect(&router).await;
    stream
        .send(&startup_packet(
            PROTOCOL_2_0,
            &[("user", "trustuser"), ("database", &db)],
        ))
        .await;
    let bytes = stream.read_to_eof(IO_DEADLINE).await;
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
        stream.send(&bytes).await;
        let reply = stream.read_to_eof(IO_DEADLINE).await;
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
    stream.send(&packet[..packet.len() / 2]).await;
    drop(stream);

    // A logged-in client sends half a Query, then goes away.
    let mut stream = connect(&router).await;
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    let half_query = query("SELECT 'never completed'");
    stream.send(&half_query[..half_query.len() - 5]).await;
    drop(stream);
    wait_log(&router, "client disconnected").await;

    // Half a message header only.
    let mut stream = connect(&router).await;
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    stream.send(&[b'Q', 0, 0]).await;
    drop(stream);

    assert_router_serves(&router, &db).await;
    let mut stream = connect(&router).await;
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    assert_eq!(
        stream.query_value("SELECT 'still here'").await,
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
    silent.read_to_eof(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the 500ms login timeout"
    );

    // Stops after SSLRequest.
    let mut stalled = connect(&router).await;
    stalled.send(&negotiation_request(SSL_REQUEST)).await;
    assert_eq!(stalled.read_byte().await, b'N');
    stalled.read_to_eof(Duration::from_secs(5)).await;

    // Stops in the middle of SCRAM: startup sent, SASL request unanswered.
    let mut stalled = connect(&router).await;
    stalled
        .send(&startup_packet(
            PROTOCOL_3_0,
            &[("user", "app"), ("database", &db)],
        ))
        .await;
    let sasl = stalled.read_msg().await;
    assert_eq!(sasl.tag(), 'R', "{sasl:?}");
    assert_eq!(sasl.i32_at(0), 10, "AuthenticationSASL expected: {sasl:?}");
    stalled.read_to_eof(Duration::from_secs(5)).await;

    wait_log(&router, "client_login_timeout").await;

    // A client that logs in promptly is not affected, also past 500ms.
    let mut stream = connect(&router).await;
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    let idle_until = Instant::now() + Duration::from_millis(800);
    let sleeper = stream.query_value("SELECT pg_sleep(0.8)::text").await;
    assert!(Instant::now() >= idle_until);
    assert_eq!(sleeper, Some(String::new()));
    assert_eq!(stream.query_value("SELECT 7").await, Some("7".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_message_size_gets_08p01_and_close() {
    let (router, db) = start_router("startup_max_message", &["max_message_size = \"64kB\""]).await;
    let mut stream = connect(&router).await;
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;

    // Just under the limit is fine.
    let filler = "x".repeat(60_000);
    assert_eq!(
        stream
            .query_value(&format!("SELECT length('{filler}')"))
            .await,
        Some("60000".into())
    );

    // A Query that declares 1 MB: refused as soon as the header is in.
    let mut big = vec![b'Q'];
    big.extend_from_slice(&(1i32 << 20).to_be_bytes());
    big.extend_from_slice(b"SELECT 1 /* the rest never comes */");
    stream.send(&big).await;
    let bytes = stream.read_to_eof(IO_DEADLINE).await;
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
    stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
        .await;
    stream.send(&query("BEGIN")).await;
    let msgs = stream.read_until_ready().await;
    assert_eq!(msgs.last().map(|m| m.body.clone()), Some(b"T".to_vec()));
    stream.send(&big).await;
    let bytes = stream.read_to_eof(IO_DEADLINE).await;
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
    let msgs = stream
        .login(
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
    let backend_pid: i32 = stream
        .query_value("SELECT pg_backend_pid()")
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
    let msgs = stream
        .login(PROTOCOL_3_0, &[("user", "trustuser"), ("database", &db)])
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
    stream
        .send(&startup_packet(PROTOCOL_3_0, &[("database", &db)]))
        .await;
    let bytes = stream.read_to_eof(IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    assert_eq!(msgs.len(), 1, "exactly one message before close: {msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("28000"), "{msgs:?}");

    // Without `database` the user name is the database name, which is not
    // configured here: 3D000.
    let mut stream = connect(&router).await;
    stream
        .send(&startup_packet(PROTOCOL_3_0, &[("user", "trustuser")]))
        .await;
    let bytes = stream.read_to_eof(IO_DEADLINE).await;
    let msgs = parse_messages(&bytes);
    assert_eq!(msgs.len(), 1, "exactly one message before close: {msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("3D000"), "{msgs:?}");
    assert!(
        msgs[0].fields()[&'M'].contains("trustuser"),
        "the database named after the user: {msgs:?}"
    );
}
