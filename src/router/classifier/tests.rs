use super::*;
use crate::config::ByteSize;
use crate::router::classify::{Kind, NOT_PARSED_YET, TOO_LONG};
use std::time::{Duration, Instant};
use toml::Spanned;

fn classifier(threads: usize, queue: usize) -> Classifier {
    Classifier::new(&RoutingConfig {
        classify_offload_size: Spanned::new(0..0, ByteSize(4 << 10)),
        classify_max_size: Spanned::new(0..0, ByteSize(256 << 10)),
        classify_threads: Spanned::new(0..0, threads),
        classify_queue: queue,
        ..RoutingConfig::default()
    })
}

/// A read of about `len` bytes, distinct per `seed` even without its
/// literals (the cache's key).
fn long_read(len: usize, seed: usize) -> String {
    let mut sql = format!("SELECT c{seed}");
    while sql.len() < len {
        sql.push_str(", c");
    }
    sql.push_str(" FROM t");
    sql
}

/// Polls until `done` holds, failing after a generous deadline.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn short_texts_are_parsed_here() {
    let classifier = classifier(1, 4);
    assert_eq!(classifier.get("SELECT 1").kind, Kind::Read);
    assert_eq!(classifier.offload_stats().done, 0);
}

#[test]
fn a_long_text_is_parsed_on_a_classify_thread_and_cached() {
    let classifier = classifier(1, 4);
    let sql = long_read(100 << 10, 1);
    // Not parsed on this thread: judged by its head for now, never a read.
    assert_eq!(classifier.get(&sql).kind, Kind::Write(NOT_PARSED_YET));
    eventually("the classify thread is done", || {
        classifier.offload_stats().done == 1
    });
    assert_eq!(classifier.get(&sql).kind, Kind::Read);
    let stats = classifier.offload_stats();
    assert_eq!((stats.done, stats.in_flight, stats.refused), (1, 0, 0));
}

#[test]
fn waiting_for_a_long_text_gets_its_real_classification() {
    let classifier = classifier(2, 4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sql = long_read(100 << 10, 2);
    // The runtime's only thread keeps running other tasks meanwhile.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let class = runtime.block_on(async {
        let counted = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let class = classifier.get_async(&sql).await;
        ticker.abort();
        class
    });
    assert_eq!(class.kind, Kind::Read);
    assert_eq!(classifier.offload_stats().done, 1);
    assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Cached: no second parse.
    assert_eq!(
        runtime.block_on(classifier.get_async(&sql)).kind,
        Kind::Read
    );
    assert_eq!(classifier.offload_stats().done, 1);
}

#[test]
fn the_same_text_is_queued_once() {
    let classifier = classifier(1, 8);
    let sql = long_read(100 << 10, 3);
    for _ in 0..5 {
        classifier.get(&sql);
    }
    eventually("the queue is empty", || {
        classifier.offload_stats().in_flight == 0
    });
    assert_eq!(classifier.offload_stats().done, 1);
}

#[test]
fn a_full_queue_turns_texts_away_at_once() {
    let classifier = classifier(1, 0);
    for seed in 0..20 {
        let class = classifier.get(&long_read(100 << 10, 100 + seed));
        assert_eq!(class.kind, Kind::Write(NOT_PARSED_YET));
        assert!(classifier.offload_stats().in_flight <= 1);
    }
    eventually("the queue is empty", || {
        classifier.offload_stats().in_flight == 0
    });
    let stats = classifier.offload_stats();
    assert!(stats.refused > 0, "{stats:?}");
    assert_eq!(stats.done + stats.refused, 20, "{stats:?}");
}

#[test]
fn texts_past_the_limit_are_never_parsed() {
    let classifier = classifier(1, 4);
    let sql = long_read(300 << 10, 4);
    assert_eq!(classifier.get(&sql).kind, Kind::Write(TOO_LONG));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(
        runtime.block_on(classifier.get_async(&sql)).kind,
        Kind::Write(TOO_LONG)
    );
    let set = format!("SET application_name = '{}'", "x".repeat(300 << 10));
    assert_eq!(classifier.get(&set).kind, Kind::SessionState("set"));
    assert_eq!(classifier.get(&set).statements, 2);
    assert_eq!(classifier.offload_stats().done, 0);
}
