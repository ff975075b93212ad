//! The relay over an in-memory client stream and a scripted server: what
//! reaches the server, what reaches the client, and how the relay ends.

use super::*;
use crate::config::Config;
use crate::protocol::test_message as message;
use crate::server::CancelTarget;
use crate::stats::Stats;
use crate::topology::Topology;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

const CONFIG: &str = "[[nodes]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n\
    [[nodes]]\nname = \"r\"\naddress = \"127.0.0.1:2\"\nrole = \"replica\"\n\
    [[users]]\nname = \"a\"\npassword = \"x\"\n[[databases]]\nname = \"a\"\n";
const STEP: Duration = Duration::from_secs(5);

/// What the relay borrows.
struct Parts {
    router: Router,
    registry: Registry,
    stats: Arc<PoolStats>,
    statements: ClientStatements,
    server: ServerConn,
    client: DuplexStream,
    client_in: BytesMut,
    server_out: BytesMut,
    pinned: Option<&'static str>,
    wrote: bool,
}

/// The two ends a test plays: the application and PostgreSQL.
struct Peers {
    app: DuplexStream,
    backend: TcpStream,
}

async fn rig() -> (Parts, Peers) {
    let config = Config::parse(CONFIG).expect("a valid config");
    let router = Router::new(&config, Arc::new(Topology::new(&config)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stream, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let cancel = CancelTarget {
        address: "127.0.0.1:2".into(),
        process_id: 1,
        secret_key: 2,
    };
    let server = ServerConn::new(
        stream.expect("connect"),
        BytesMut::new(),
        "r".into(),
        cancel,
        Vec::new(),
    );
    let (app, client) = tokio::io::duplex(64 * 1024);
    let parts = Parts {
        router,
        registry: Registry::default(),
        stats: Stats::default().pool("a", "a", "r"),
        statements: ClientStatements::default(),
        server,
        client,
        client_in: BytesMut::new(),
        server_out: BytesMut::new(),
        pinned: None,
        wrote: false,
    };
    let backend = accepted.expect("accept").0;
    (parts, Peers { app, backend })
}

impl Parts {
    fn relay(&mut self, lease: Lease) -> Relay<'_, DuplexStream> {
        Relay {
            client: &mut self.client,
            client_in: &mut self.client_in,
            server: &mut self.server,
            max_message: 1 << 20,
            release_when_idle: true,
            pinned: &mut self.pinned,
            replayed: None,
            swallow: 0,
            guard: None,
            statements: &mut self.statements,
            registry: &self.registry,
            router: &self.router,
            server_out: &mut self.server_out,
            stats: &self.stats,
            route: Target::Replica,
            received_before: 0,
            first_checked: true,
            started: None,
            rename_statements: true,
            lease,
            wrote: &mut self.wrote,
            idle_in_transaction: None,
        }
    }
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

/// Parse, Bind and Execute of `sql` on the unnamed statement and portal.
fn extended(sql: &str) -> Vec<u8> {
    let mut out = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    out.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn flush() -> Vec<u8> {
    message(b'H', b"")
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

/// A row of `1` and its CommandComplete.
fn one_row() -> Vec<u8> {
    let mut out = message(b'D', b"\0\x01\0\0\0\x011");
    out.extend(message(b'C', b"SELECT 1\0"));
    out
}

fn extended_answer() -> Vec<u8> {
    let mut out = message(b'1', b"");
    out.extend(message(b'2', b""));
    out.extend(one_row());
    out
}

async fn read_exactly(stream: &mut (impl AsyncReadExt + Unpin), len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    tokio::time::timeout(STEP, stream.read_exact(&mut buf))
        .await
        .expect("bytes within the deadline")
        .expect("read");
    buf
}

/// Nothing more arrives within a short while.
async fn assert_silent(stream: &mut (impl AsyncReadExt + Unpin)) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await;
    assert!(read.is_err(), "unexpected bytes: {byte:?}");
}

#[tokio::test]
async fn a_read_lease_leaves_a_pipelined_write_to_be_routed_anew() {
    let (mut parts, mut peers) = rig().await;
    let (read, write) = (query("SELECT 1"), query("INSERT INTO t VALUES (1)"));
    let mut sent = read.clone();
    sent.extend(&write);
    // The session starts the relay once a request has arrived.
    parts.client_in.extend_from_slice(&sent);
    let backend = async {
        assert_eq!(read_exactly(&mut peers.backend, read.len()).await, read);
        let mut answer = one_row();
        answer.extend(ready());
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
        answer
    };
    let (end, answer) = tokio::join!(parts.relay(Lease::Reads).run(), backend);
    assert!(matches!(end, RelayEnd::Released), "{end:?}");
    assert_silent(&mut peers.backend).await;
    assert_eq!(
        &parts.client_in[..],
        &write[..],
        "the write waits to be routed"
    );
    assert_eq!(read_exactly(&mut peers.app, answer.len()).await, answer);
}

#[tokio::test]
async fn a_write_lease_leaves_a_pipelined_read_to_be_routed_anew() {
    let (mut parts, mut peers) = rig().await;
    let (write, read) = (query("INSERT INTO t VALUES (1)"), query("SELECT 1"));
    let mut sent = write.clone();
    sent.extend(&read);
    // The session starts the relay once a request has arrived.
    parts.client_in.extend_from_slice(&sent);
    let backend = async {
        assert_eq!(read_exactly(&mut peers.backend, write.len()).await, write);
        let mut answer = message(b'C', b"INSERT 0 1\0");
        answer.extend(ready());
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
    };
    let (end, ()) = tokio::join!(parts.relay(Lease::Writes).run(), backend);
    assert!(matches!(end, RelayEnd::Released), "{end:?}");
    assert_eq!(&parts.client_in[..], &read[..]);
}

#[tokio::test]
async fn any_lease_runs_everything_pipelined() {
    let (mut parts, mut peers) = rig().await;
    let mut sent = query("SELECT 1");
    sent.extend(query("INSERT INTO t VALUES (1)"));
    // The session starts the relay once a request has arrived.
    parts.client_in.extend_from_slice(&sent);
    let backend = async {
        assert_eq!(read_exactly(&mut peers.backend, sent.len()).await, sent);
        let mut answer = one_row();
        answer.extend(ready());
        answer.extend(message(b'C', b"INSERT 0 1\0"));
        answer.extend(ready());
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
    };
    let (end, ()) = tokio::join!(parts.relay(Lease::Any).run(), backend);
    assert!(matches!(end, RelayEnd::Released), "{end:?}");
    assert!(parts.client_in.is_empty());
    assert!(
        parts.wrote,
        "the pipelined write counts for read-your-writes"
    );
}

/// A write that arrives after the client flushed part of a batch to a
/// replica: the replica's part ends with pgrouter's Sync, whose
/// ReadyForQuery the client never sees; `failed` tells whether it erred.
async fn batch_moved(replica_answer: Vec<u8>) -> (RelayEnd, Vec<u8>, BytesMut) {
    let (mut parts, mut peers) = rig().await;
    let mut first = extended("SELECT 1");
    first.extend(flush());
    let mut rest = extended("INSERT INTO t VALUES (1)");
    rest.extend(sync());
    parts.client_in.extend_from_slice(&first);
    let script = async {
        assert_eq!(read_exactly(&mut peers.backend, first.len()).await, first);
        peers
            .backend
            .write_all(&replica_answer)
            .await
            .expect("server writes");
        let seen = read_exactly(&mut peers.app, replica_answer.len()).await;
        assert_eq!(seen, replica_answer, "the client gets what it flushed for");
        peers.app.write_all(&rest).await.expect("client writes");
        assert_eq!(
            read_exactly(&mut peers.backend, 5).await,
            sync(),
            "pgrouter's Sync"
        );
        peers
            .backend
            .write_all(&ready())
            .await
            .expect("server writes");
    };
    let (end, ()) = tokio::join!(parts.relay(Lease::Reads).run(), script);
    assert_silent(&mut peers.app).await;
    assert_silent(&mut peers.backend).await;
    (end, rest, parts.client_in)
}

#[tokio::test]
async fn a_write_in_the_middle_of_a_replica_batch_moves_the_rest() {
    let (end, rest, left) = batch_moved(extended_answer()).await;
    assert!(
        matches!(end, RelayEnd::BatchMoved { failed: false }),
        "{end:?}"
    );
    assert_eq!(
        &left[..],
        &rest[..],
        "the write and the Sync wait to be routed"
    );
}

#[tokio::test]
async fn a_failed_replica_part_is_reported() {
    let mut answer = message(b'1', b"");
    answer.extend(message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
    let (end, _, _) = batch_moved(answer).await;
    assert!(
        matches!(end, RelayEnd::BatchMoved { failed: true }),
        "{end:?}"
    );
}

#[tokio::test]
async fn terminate_in_an_unsynced_batch_ends_the_relay_at_once() {
    let (mut parts, mut peers) = rig().await;
    let batch = extended("SELECT 1");
    let mut sent = batch.clone();
    sent.extend(message(b'X', b""));
    // The session starts the relay once a request has arrived.
    parts.client_in.extend_from_slice(&sent);
    let end = tokio::time::timeout(STEP, parts.relay(Lease::Reads).run())
        .await
        .expect("the relay ends without waiting for the server");
    assert!(matches!(end, RelayEnd::ClientTerminated), "{end:?}");
    assert_eq!(read_exactly(&mut peers.backend, batch.len()).await, batch);
    assert!(parts.server.state.in_batch(), "clean-up closes the batch");
}

#[tokio::test]
async fn an_unknown_message_type_never_reaches_the_server() {
    let (mut parts, mut peers) = rig().await;
    parts.client_in.extend_from_slice(&query("SELECT 1"));
    peers
        .app
        .write_all(&[0xff, 0, 0, 0, 4])
        .await
        .expect("client writes");
    let end = tokio::time::timeout(STEP, parts.relay(Lease::Any).run())
        .await
        .expect("the relay ends");
    assert!(
        matches!(
            end,
            RelayEnd::ClientProtocol(ProtocolError::UnknownMessage { tag: 0xff })
        ),
        "{end:?}"
    );
    let sent = query("SELECT 1");
    assert_eq!(read_exactly(&mut peers.backend, sent.len()).await, sent);
    assert_silent(&mut peers.backend).await;
}

#[tokio::test]
async fn inside_a_transaction_every_request_stays() {
    let (mut parts, mut peers) = rig().await;
    let begin = query("BEGIN; INSERT INTO t VALUES (1)");
    let read = query("SELECT 1");
    parts.client_in.extend_from_slice(&begin);
    let backend = async {
        assert_eq!(read_exactly(&mut peers.backend, begin.len()).await, begin);
        let mut answer = message(b'C', b"BEGIN\0");
        answer.extend(message(b'C', b"INSERT 0 1\0"));
        answer.extend(message(b'Z', b"T"));
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
        read_exactly(&mut peers.app, answer.len()).await;
        peers.app.write_all(&read).await.expect("client writes");
        assert_eq!(read_exactly(&mut peers.backend, read.len()).await, read);
        let mut answer = one_row();
        answer.extend(message(b'Z', b"T"));
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
        read_exactly(&mut peers.app, answer.len()).await;
        peers
            .app
            .write_all(&query("COMMIT"))
            .await
            .expect("client writes");
        read_exactly(&mut peers.backend, query("COMMIT").len()).await;
        let mut answer = message(b'C', b"COMMIT\0");
        answer.extend(ready());
        peers
            .backend
            .write_all(&answer)
            .await
            .expect("server writes");
    };
    let run = tokio::time::timeout(STEP, parts.relay(Lease::Writes).run());
    let (end, ()) = tokio::join!(run, backend);
    let end = end.expect("the relay ends");
    assert!(matches!(end, RelayEnd::Released), "{end:?}");
}
