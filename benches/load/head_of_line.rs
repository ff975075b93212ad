//! `--head-of-line N`: the worst and 99th-percentile latency of a
//! `SELECT 1` loop on one connection while another sends N distinct
//! ~184 KiB statements (issue 13: parsing one must not stall the runtime
//! thread every client shares). Each target gets the same texts, distinct
//! even with their literals taken out, so none is classified from cache.

use super::common::long_read;
use super::targets::Target;
use std::time::{Duration, Instant};

pub fn run(
    runtime: &tokio::runtime::Runtime,
    targets: &[Target],
    statements: usize,
    rounds: usize,
) {
    println!(
        "\n| target | round | long statements | probe queries | worst ms | p99 ms | median ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for round in 0..rounds {
        for target in targets {
            let offset = round * statements;
            let texts: Vec<String> = (0..statements)
                .map(|seed| long_read(184 << 10, offset + seed))
                .collect();
            let mut probes = runtime.block_on(measure(&target.url, texts));
            if probes.is_empty() {
                println!("| {} | {round} | failed | | | | |", target.name);
                continue;
            }
            probes.sort();
            let at = |q: f64| probes[((probes.len() - 1) as f64 * q) as usize];
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {} | {round} | {statements} | {} | {:.1} | {:.1} | {:.2} |",
                target.name,
                probes.len(),
                ms(at(1.0)),
                ms(at(0.99)),
                ms(at(0.5)),
            );
        }
    }
}

/// The probe's latencies while the texts run; empty when a connection
/// fails.
async fn measure(url: &str, texts: Vec<String>) -> Vec<Duration> {
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(client)
    };
    let (Some(probe), Some(sender)) = (connect().await, connect().await) else {
        return Vec::new();
    };
    // Both have a server connection before the clock starts.
    if probe.simple_query("SELECT 1").await.is_err()
        || sender.simple_query("SELECT 1").await.is_err()
    {
        return Vec::new();
    }
    let sending = tokio::spawn(async move {
        for text in &texts {
            if sender.simple_query(text).await.is_err() {
                return false;
            }
        }
        true
    });
    let mut latencies = Vec::new();
    while !sending.is_finished() {
        let started = Instant::now();
        if probe.simple_query("SELECT 1").await.is_err() {
            return Vec::new();
        }
        latencies.push(started.elapsed());
    }
    match sending.await {
        Ok(true) => latencies,
        _ => Vec::new(),
    }
}
