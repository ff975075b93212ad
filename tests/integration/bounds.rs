//! Bounds on what clients can make pgrouter hold or do: prepared
//! statements (per client and in all), and long SQL classified off the
//! runtime thread. Each test hits its bound through the wire and reads
//! what pgrouter holds from the console's SHOW CACHES.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::config::ADMIN_PASSWORD;
use crate::common::console::rows;
use crate::common::wire::{bind, execute, parse, query, sync, Conn, Msg};
use crate::common::{eventually, long_read, Cluster, Pgrouter, RouterConfig};

const DEADLINE: Duration = Duration::from_secs(60);

async fn start(prefix: &str, configure: impl FnOnce(RouterConfig) -> RouterConfig) -> Setup {
    let cluster = Cluster::shared();
    let db = crate::lifecycle::database(prefix).await;
    let config = configure(
        RouterConfig::new(cluster.primary(), &db)
            .replicas(cluster.replicas())
            .admin(),
    );
    let router = Pgrouter::start(&config.build());
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    Setup {
        db,
        router,
        console,
    }
}

struct Setup {
    db: String,
    router: Pgrouter,
    console: tokio_postgres::Client,
}

impl Setup {
    async fn client(&self) -> Conn {
        Conn::trust(self.router.addr, &self.db, &[]).await
    }

    /// One row of SHOW CACHES.
    async fn cache(&self, name: &str) -> HashMap<String, String> {
        let all = rows(&self.console, "SHOW CACHES").await;
        all.into_iter()
            .find(|row| row["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in SHOW CACHES"))
    }

    async fn count(&self, name: &str, column: &str) -> u64 {
        let row = self.cache(name).await;
        row[column]
            .parse()
            .unwrap_or_else(|_| panic!("{name}.{column}: {row:?}"))
    }

    /// pgrouter's resident memory, in kB.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.router.pid()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// Prepares `count` distinct named statements `s<from>`... with lone
/// Parse+Sync pairs (which pgrouter answers without a server), pipelined
/// in rounds; returns every reply that is not ParseComplete or an idle
/// ReadyForQuery.
async fn prepare_many(conn: &mut Conn, from: usize, count: usize) -> Vec<(usize, Msg)> {
    const ROUND: usize = 2_000;
    let mut odd = Vec::new();
    let mut at = from;
    while at < from + count {
        let end = (at + ROUND).min(from + count);
        let mut bytes = Vec::new();
        for i in at..end {
            bytes.extend(parse(&format!("s{i}"), &format!("SELECT {i} AS n"), &[]));
            bytes.extend(sync());
        }
        conn.send(&bytes).await;
        let mut i = at;
        let (msgs, result) = conn.try_read_readies(end - at, DEADLINE).await;
        if let Err(error) = result {
            panic!("preparing s{at}..s{end}: {error}; got {:?}", msgs.last());
        }
        for msg in msgs {
            match msg.tag {
                b'1' => {}
                b'Z' if msg.status() == Some('I') => i += 1,
                _ => odd.push((i, msg)),
            }
        }
        at = end;
    }
    odd
}

/// Binds and executes `name`; the replies through ReadyForQuery.
async fn run(conn: &mut Conn, name: &str) -> Vec<Msg> {
    let bytes = [bind("", name, &[]), execute("", 0), sync()].concat();
    conn.send(&bytes).await;
    conn.read_through_ready().await
}

fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    msgs.iter().find(|m| m.is_error()).map(|m| {
        (
            m.sqlstate().unwrap_or_default(),
            m.message().unwrap_or_default(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_statements_from_one_client_take_no_lasting_memory() {
    // The defaults: a client holds at most 2000 names.
    let setup = start("boundsflood", |config| config).await;
    let before = setup.rss_kb();
    let mut client = setup.client().await;
    let odd = prepare_many(&mut client, 0, 200_000).await;
    assert!(odd.is_empty(), "{:?}", odd.first());
    assert_eq!(setup.count("prepared_statements", "entries").await, 2_000);
    let during = setup.rss_kb();
    drop(client);
    eventually(
        DEADLINE,
        "the departed client's statements are forgotten",
        || async { setup.count("prepared_statements", "entries").await == 0 },
    )
    .await;
    let after = setup.rss_kb();
    eprintln!("pgrouter RSS: {before} kB at start, {during} kB after 200000 statements, {after} kB after their client left");
    // Before the bounds, the registry kept all 200,000: about 170 MB.
    assert!(
        during < before + 32 * 1024 && after < before + 32 * 1024,
        "RSS {before} kB -> {during} kB -> {after} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_forgotten_when_their_last_client_leaves() {
    let setup = start("boundsforget", |config| {
        config
            .pool("max_client_prepared_statements = 250000")
            .pool("max_distinct_prepared_statements = 250000")
    })
    .await;
    let before = setup.rss_kb();
    let mut client = setup.client().await;
    let odd = prepare_many(&mut client, 0, 200_000).await;
    assert!(odd.is_empty(), "{:?}", odd.first());
    assert_eq!(setup.count("prepared_statements", "entries").await, 200_000);
    // Every one is usable.
    let answer = run(&mut client, "s12345").await;
    assert_eq!(first_error(&answer), None, "{answer:?}");
    let held = setup.rss_kb();
    drop(client);
    eventually(
        DEADLINE,
        "the departed client's statements are forgotten",
        || async { setup.count("prepared_statements", "entries").await == 0 },
    )
    .await;
    // glibc keeps most of what was freed for reuse instead of returning
    // it to the system: RSS is reported, not asserted.
    let after = setup.rss_kb();
    eprintln!("pgrouter RSS: {before} kB at start, {held} kB holding 200000 statements, {after} kB after their client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holds_at_most_max_client_prepared_statements() {
    let setup = start("boundsclient", |config| {
        config.pool("max_client_prepared_statements = 100")
    })
    .await;
    let mut client = setup.client().await;
    // s0 is used throughout: its name is never the least recently used.
    let odd = prepare_many(&mut client, 0, 1).await;
    assert!(odd.is_empty(), "{odd:?}");
    for round in 0..10 {
        let answer = run(&mut client, "s0").await;
        assert_eq!(first_error(&answer), None, "round {round}: {answer:?}");
        let odd = prepare_many(&mut client, 1 + round * 100, 100).await;
        assert!(odd.is_empty(), "{odd:?}");
    }
    assert_eq!(setup.count("prepared_statements", "entries").await, 100);
    // The newest is there, the oldest unused ones are forgotten, as
    // PostgreSQL answers for a name it does not know.
    assert_eq!(first_error(&run(&mut client, "s1000").await), None);
    assert_eq!(first_error(&run(&mut client, "s0").await), None);
    let (code, message) = first_error(&run(&mut client, "s1").await).expect("s1 is forgotten");
    assert_eq!(code, "26000", "{message}");
    assert!(message.contains("\"s1\""), "{message}");

    // What a client holds goes with it; another's stay.
    let mut other = setup.client().await;
    assert!(prepare_many(&mut other, 0, 10).await.is_empty());
    drop(client);
    eventually(
        DEADLINE,
        "only the other client's statements remain",
        || async { setup.count("prepared_statements", "entries").await == 10 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_distinct_prepared_statements_a_new_one_is_refused() {
    let setup = start("boundsdistinct", |config| {
        config.pool("max_distinct_prepared_statements = 50")
    })
    .await;
    let mut first = setup.client().await;
    let odd = prepare_many(&mut first, 0, 60).await;
    // The 51st and later are refused as PostgreSQL refuses what exceeds a
    // configured limit, and the session goes on.
    assert_eq!(odd.len(), 10, "{odd:?}");
    for (i, msg) in &odd {
        assert!(*i >= 50, "s{i}: {msg:?}");
        assert_eq!(msg.sqlstate().as_deref(), Some("53400"), "s{i}: {msg:?}");
    }
    assert_eq!(setup.count("prepared_statements", "refused").await, 10);
    assert_eq!(first_error(&run(&mut first, "s49").await), None);
    let (code, _) = first_error(&run(&mut first, "s55").await).expect("s55 was refused");
    assert_eq!(code, "26000");

    // A statement already held is shared, not new: another client may
    // prepare it at the limit.
    let mut second = setup.client().await;
    second
        .send(&[parse("mine", "SELECT 7 AS n", &[]), sync()].concat())
        .await;
    let answer = second.read_through_ready().await;
    assert_eq!(first_error(&answer), None, "{answer:?}");
    assert_eq!(first_error(&run(&mut second, "mine").await), None);

    // Inside a batch on a server connection there is no answering one
    // statement alone: the client is told why and closed.
    let mut third = setup.client().await;
    let batch = [
        parse("fresh", "SELECT 1000000 AS n", &[]),
        bind("", "fresh", &[]),
        execute("", 0),
        sync(),
    ]
    .concat();
    third.send(&batch).await;
    let closing = crate::common::wire::parse_messages(&third.read_to_eof(DEADLINE).await);
    let fatal = closing.iter().find(|m| m.is_error()).expect("an error");
    assert_eq!(fatal.severity().as_deref(), Some("FATAL"), "{closing:?}");
    assert!(
        fatal
            .message()
            .is_some_and(|m| m.contains("too many prepared statements")),
        "{fatal:?}"
    );

    // Room comes back when the first client leaves.
    drop(first);
    eventually(
        DEADLINE,
        "the first client's statements are forgotten",
        || async { setup.count("prepared_statements", "entries").await == 1 },
    )
    .await;
    assert!(prepare_many(&mut second, 1000, 49).await.is_empty());
}

/// The worst latency of `SELECT 1` on its own connection while another
/// client sends `count` distinct long statements.
async fn latency_under_long_statements(setup: &Setup, count: usize) -> Duration {
    let mut probe = setup.client().await;
    let mut sender = setup.client().await;
    // Warm: both have a server connection to go to.
    probe.send(&query("SELECT 1")).await;
    probe.read_until_ready().await;
    sender.send(&query("SELECT 1 FOR UPDATE")).await;
    sender.read_until_ready().await;
    let texts: Vec<String> = (0..count).map(|seed| long_read(184 << 10, seed)).collect();
    let sending = tokio::spawn(async move {
        for text in &texts {
            sender.send(&query(text)).await;
            let answer = sender.read_through_ready().await;
            assert_eq!(first_error(&answer), None);
        }
    });
    let mut worst = Duration::ZERO;
    while !sending.is_finished() {
        let started = Instant::now();
        probe.send(&query("SELECT 1")).await;
        probe.read_until_ready().await;
        worst = worst.max(started.elapsed());
    }
    sending.await.expect("the long statements ran");
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_statements_are_classified_off_the_runtime_thread() {
    let setup = start("boundslong", |config| config).await;
    let worst = latency_under_long_statements(&setup, 8).await;
    // Each distinct text was parsed once, on a classify thread (the
    // runtime thread judged it by its head meanwhile).
    let parsed = setup.count("classify_threads", "misses").await;
    eprintln!("worst SELECT 1 latency beside 8 distinct 184 KiB statements: {worst:?}; parsed off-thread: {parsed}");
    eventually(DEADLINE, "every long text is parsed off-thread", || async {
        setup.count("classify_threads", "misses").await == 8
    })
    .await;
    assert_eq!(setup.count("classify_threads", "refused").await, 0);

    // Too long to parse at all: routed by its first keyword.
    let mut client = setup.client().await;
    let huge = long_read(1100 << 10, 99);
    client.send(&query(&huge)).await;
    assert_eq!(first_error(&client.read_through_ready().await), None);
    assert_eq!(setup.count("classify_threads", "misses").await, 8);
}
