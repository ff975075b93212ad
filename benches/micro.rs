//! Criterion micro-benchmarks of the per-message work: framing what
//! clients send, scanning what servers answer for ReadyForQuery, a
//! routing decision for a statement seen before and one seen for the
//! first time, and the prepared-statement lookups of a Parse and a Bind.
//!
//!     cargo bench --bench micro

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgrouter::config::Config;
use pgrouter::protocol::frontend;
use pgrouter::protocol::scan::ReplyScanner;
use pgrouter::router::{Router, SessionRoute, SessionWrites};
use pgrouter::topology::Topology;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

fn message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// What pgbench -M extended sends for one -S transaction.
fn extended_batch() -> BytesMut {
    let mut buf = BytesMut::new();
    message(
        &mut buf,
        b'P',
        b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0\0\0",
    );
    message(&mut buf, b'B', b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0");
    message(&mut buf, b'D', b"P\0");
    message(&mut buf, b'E', b"\0\0\0\0\0");
    message(&mut buf, b'S', b"");
    buf
}

/// A server's answer to one -S query: RowDescription, DataRow,
/// CommandComplete, ReadyForQuery.
fn select_reply() -> BytesMut {
    let mut buf = BytesMut::new();
    let mut row_description = BytesMut::new();
    row_description.put_i16(1);
    row_description.put_slice(b"abalance\0");
    row_description.put_i32(16397);
    row_description.put_i16(3);
    row_description.put_i32(23);
    row_description.put_i16(4);
    row_description.put_i32(-1);
    row_description.put_i16(0);
    message(&mut buf, b'T', &row_description);
    message(&mut buf, b'D', b"\0\x01\0\0\0\x041234");
    message(&mut buf, b'C', b"SELECT 1\0");
    message(&mut buf, b'Z', b"I");
    buf
}

fn framing(c: &mut Criterion) {
    let batch = extended_batch();
    let mut group = c.benchmark_group("frontend");
    group.throughput(Throughput::Elements(5));
    group.bench_function("frame an extended-protocol batch (5 messages)", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut tags = 0u32;
            while let Ok(Some(frame)) = frontend::frame(&batch[at..], 1 << 20) {
                tags += u32::from(frame.tag);
                at += frame.len;
            }
            black_box(tags)
        })
    });
    let query = {
        let mut buf = BytesMut::new();
        message(
            &mut buf,
            b'Q',
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0",
        );
        buf
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("frame a Query and find its SQL", |b| {
        b.iter(|| {
            let frame = frontend::frame(&query, 1 << 20).ok().flatten();
            black_box(frame.and_then(|f| frontend::query_text(&query[..f.len])))
        })
    });
    group.finish();
}

fn scanning(c: &mut Criterion) {
    let reply = select_reply();
    let mut group = c.benchmark_group("backend");
    group.throughput(Throughput::Bytes(reply.len() as u64));
    group.bench_function("scan a -S reply for ReadyForQuery", |b| {
        let mut scanner = ReplyScanner::default();
        b.iter(|| {
            let mut ready = 0u32;
            let _ = scanner.scan(black_box(&reply), |_| ready += 1);
            black_box(ready)
        })
    });
    group.finish();
}

const CONFIG: &str = r#"
[routing]
read_your_writes = "lsn"

[[nodes]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"

[[nodes]]
name = "replica1"
address = "127.0.0.1:5433"
role = "replica"

[[nodes]]
name = "replica2"
address = "127.0.0.1:5434"
role = "replica"

[[users]]
name = "app"
password = "secret"

[[databases]]
name = "app"
"#;

/// Polls a future that completes without waiting (a decision with no
/// function to look up) to its end.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

fn routing(c: &mut Criterion) {
    let config = match Config::parse(CONFIG) {
        Ok(config) => config,
        Err(errors) => panic!("{errors:?}"),
    };
    let topology = Arc::new(Topology::new(&config));
    let router = Router::new(&config, topology);
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut session = SessionRoute {
        setting: pgrouter::config::Route::Auto,
        read_only_default: false,
        writes: SessionWrites::default(),
    };
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
    router.classify(sql);

    let mut group = c.benchmark_group("routing");
    group.bench_function("decide a cached statement", |b| {
        b.iter(|| {
            let class = router.classify(black_box(sql));
            black_box(ready(router.decide(Some(&class), &mut session, client)))
        })
    });
    let mut table = 0u64;
    group.bench_function("decide a statement seen for the first time", |b| {
        b.iter_batched(
            || {
                table += 1;
                format!("SELECT abalance FROM accounts_{table} WHERE aid = 12345")
            },
            |sql| {
                let class = router.classify(&sql);
                black_box(ready(router.decide(Some(&class), &mut session, client)))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn prepared(c: &mut Criterion) {
    use pgrouter::prepared::{ClientStatements, Registry};
    let registry = Registry::default();
    let mut client = ClientStatements::default();
    let query = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let types = [0u8, 1, 0, 0, 0, 23];
    // Other clients' statements, so that lookups are not in a tiny map.
    let mut others = Vec::new();
    for i in 0..1000 {
        let text = format!("SELECT {i} FROM t WHERE a = $1");
        others.push(registry.intern(text.as_bytes(), &types, || None));
    }
    let Ok(held) = registry.intern(query, &types, || None) else {
        panic!("the registry is under its limit");
    };
    for i in 0..100 {
        client.insert(&format!("s{i}"), held.clone());
    }
    let mut group = c.benchmark_group("prepared");
    group.bench_function("Parse of a statement the registry holds", |b| {
        b.iter(|| black_box(registry.intern(black_box(query), &types, || None)))
    });
    group.bench_function("Bind: the client's name to its statement", |b| {
        b.iter(|| black_box(client.get(black_box("s42")).map(|s| s.parse.len())))
    });
    group.finish();
    drop((others, held));
}

criterion_group!(benches, framing, scanning, routing, prepared);
criterion_main!(benches);
