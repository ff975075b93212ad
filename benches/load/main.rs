//! The load benchmark: pgbench through pgrouter, PgBouncer (when installed)
//! and directly against PostgreSQL, on a cluster the test harness starts.
//!
//!     cargo bench --bench load -- [--quick] [--clients 1,10,100,500]
//!         [--seconds 10] [--rounds 3] [--pool 20] [--scale N]
//!         [--workloads select-simple,select-extended,select-prepared,tpcb-simple,tpcb-extended,tpcb-prepared]
//!         [--targets direct,pgrouter,pgbouncer,pgrouter-routing,pgrouter-ryw-off,pgrouter-multi,pgrouter-baseline,pgrouter-baseline-routing]
//!         [--idle 2000] [--head-of-line 20]
//!
//! Targets run interleaved (A B C, C B A, ...) so that drift hits all alike;
//! each cell reports the median TPS, the average latency, the pooler's CPU
//! time per transaction (from /proc/PID/stat) and ratios to the direct
//! connection and to PgBouncer. Not a test: it asserts nothing.

#[path = "../../tests/common/mod.rs"]
mod common;
mod head_of_line;
mod pgbench;
mod targets;

use common::Cluster;
use std::collections::HashMap;
use targets::Target;

struct Options {
    clients: Vec<usize>,
    seconds: u64,
    rounds: usize,
    pool: usize,
    scale: Option<usize>,
    workloads: Vec<String>,
    targets: Vec<String>,
    idle: Option<usize>,
    head_of_line: Option<usize>,
}

fn options() -> Options {
    let mut o = Options {
        clients: vec![1, 10, 100],
        seconds: 10,
        rounds: 3,
        pool: 20,
        scale: None,
        workloads: [
            "select-simple",
            "select-extended",
            "select-prepared",
            "tpcb-simple",
            "tpcb-extended",
            "tpcb-prepared",
        ]
        .map(String::from)
        .to_vec(),
        targets: ["direct", "pgrouter", "pgbouncer"]
            .map(String::from)
            .to_vec(),
        idle: None,
        head_of_line: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |v: &str| {
        v.split(',')
            .map(str::trim)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--quick" => {
                o.clients = vec![1, 4];
                o.seconds = 2;
                o.rounds = 1;
                o.scale = Some(1);
                i += 1;
                continue;
            }
            "--clients" => o.clients = list(&value).iter().filter_map(|c| c.parse().ok()).collect(),
            "--seconds" => o.seconds = value.parse().unwrap_or(o.seconds),
            "--rounds" => o.rounds = value.parse().unwrap_or(o.rounds),
            "--pool" => o.pool = value.parse().unwrap_or(o.pool),
            "--scale" => o.scale = value.parse().ok(),
            "--workloads" => o.workloads = list(&value),
            "--targets" => o.targets = list(&value),
            "--idle" => o.idle = value.parse().ok(),
            "--head-of-line" => o.head_of_line = value.parse().ok(),
            _ => {
                // cargo bench adds --bench; anything else is ignored too.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn pgbench_args(workload: &str, clients: usize, seconds: u64) -> Vec<String> {
    let (script, mode) = workload.split_once('-').unwrap_or((workload, "simple"));
    let mut args = vec![
        "-n".to_string(),
        "-M".into(),
        mode.into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        clients.min(2).to_string(),
        "-T".into(),
        seconds.to_string(),
    ];
    if script == "select" {
        args.push("-S".into());
    }
    args
}

fn start_targets(cluster: &Cluster, o: &Options) -> Vec<Target> {
    let mut out = Vec::new();
    for name in &o.targets {
        match name.as_str() {
            "direct" => out.push(targets::direct(cluster)),
            "pgrouter" => out.push(targets::pgrouter(cluster, name, o.pool, None)),
            "pgrouter-routing" => out.push(targets::pgrouter(cluster, name, o.pool, Some("lsn"))),
            "pgrouter-ryw-off" => out.push(targets::pgrouter(cluster, name, o.pool, Some("off"))),
            "pgrouter-multi" => out.push(targets::pgrouter_workers(cluster, name, o.pool, 0)),
            // Another build, e.g. the last commit's, to measure a change.
            "pgrouter-baseline" => match std::env::var("PGROUTER_BASELINE_BIN") {
                Ok(binary) => out.push(targets::pgrouter_binary(
                    cluster, name, o.pool, None, &binary,
                )),
                Err(_) => eprintln!("pgrouter-baseline needs PGROUTER_BASELINE_BIN: skipped"),
            },
            "pgrouter-baseline-routing" => match std::env::var("PGROUTER_BASELINE_BIN") {
                Ok(binary) => out.push(targets::pgrouter_binary(
                    cluster,
                    name,
                    o.pool,
                    Some("lsn"),
                    &binary,
                )),
                Err(_) => {
                    eprintln!("pgrouter-baseline-routing needs PGROUTER_BASELINE_BIN: skipped")
                }
            },
            "pgbouncer" => match targets::pgbouncer(cluster, o.pool) {
                Some(target) => out.push(target),
                None => {
                    eprintln!("pgbouncer is not installed (apt-get install pgbouncer): skipped")
                }
            },
            other => eprintln!("unknown target {other:?}: skipped"),
        }
    }
    out
}

#[derive(Default)]
struct Cell {
    tps: Vec<f64>,
    latency: Vec<f64>,
    cpu_per_tx: Vec<f64>,
    failed: bool,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() {
    let o = options();
    let max_clients = o.clients.iter().copied().max().unwrap_or(1);
    // The direct target opens one server connection per client.
    std::env::set_var(
        "PGROUTER_PG_MAX_CONNECTIONS",
        (max_clients + 100).max(300).to_string(),
    );
    let cluster = Cluster::start(2);
    let scale = o.scale.unwrap_or(max_clients.max(10));
    eprintln!("initialising pgbench data at scale {scale}...");
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-q", "-n", "-s", &scale.to_string()])
        .arg(cluster.primary().conn_str("postgres", "", "app"))
        .output()
        .expect("pgbench runs");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let su = cluster.superuser(cluster.primary(), "app").await;
        su.batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
            .await
            .expect("grants");
        su.batch_execute("VACUUM ANALYZE").await.expect("vacuum");
        cluster.wait_replicas_caught_up().await;
    });

    let targets = start_targets(&cluster, &o);
    if let Some(n) = o.idle {
        idle::run(&runtime, &targets, n);
        return;
    }
    if let Some(n) = o.head_of_line {
        head_of_line::run(&runtime, &targets, n, o.rounds);
        return;
    }
    let mut cells: HashMap<(String, usize, String), Cell> = HashMap::new();
    for workload in &o.workloads {
        for &clients in &o.clients {
            let args = pgbench_args(workload, clients, o.seconds);
            for round in 0..o.rounds {
                let order: Vec<&Target> = if round % 2 == 0 {
                    targets.iter().collect()
                } else {
                    targets.iter().rev().collect()
                };
                for target in order {
                    let cpu_before = target.pid.and_then(targets::cpu_seconds);
                    let outcome = pgbench::run(&target.url, &args);
                    let cpu_after = target.pid.and_then(targets::cpu_seconds);
                    let cell = cells
                        .entry((workload.clone(), clients, target.name.clone()))
                        .or_default();
                    match outcome {
                        Some(r) if r.failed == 0 => {
                            cell.tps.push(r.tps);
                            cell.latency.push(r.latency_ms);
                            if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
                                cell.cpu_per_tx
                                    .push((b - a) / r.transactions.max(1) as f64 * 1e6);
                            }
                        }
                        _ => cell.failed = true,
                    }
                    eprintln!(
                        "{workload} c={clients} {} round {round}: {:?}",
                        target.name,
                        outcome.map(|r| r.tps)
                    );
                }
            }
        }
    }
    report(&o, &targets, &cells);
}

fn report(o: &Options, targets: &[Target], cells: &HashMap<(String, usize, String), Cell>) {
    println!(
        "\n| workload | clients | target | TPS (median) | latency ms | pooler CPU us/tx | vs direct | vs pgbouncer |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for workload in &o.workloads {
        for &clients in &o.clients {
            let tps_of = |name: &str| {
                cells
                    .get(&(workload.clone(), clients, name.to_string()))
                    .filter(|c| !c.tps.is_empty())
                    .map(|c| median(&c.tps))
            };
            for target in targets {
                let Some(cell) = cells.get(&(workload.clone(), clients, target.name.clone()))
                else {
                    continue;
                };
                if cell.tps.is_empty() {
                    println!(
                        "| {workload} | {clients} | {} | failed | | | | |",
                        target.name
                    );
                    continue;
                }
                let tps = median(&cell.tps);
                let ratio =
                    |base: Option<f64>| base.map_or(String::new(), |b| format!("{:.2}", tps / b));
                let cpu = if cell.cpu_per_tx.is_empty() {
                    String::new()
                } else {
                    format!("{:.1}", median(&cell.cpu_per_tx))
                };
                println!(
                    "| {workload} | {clients} | {} | {tps:.0}{} | {:.3} | {cpu} | {} | {} |",
                    target.name,
                    if cell.failed {
                        " (some runs failed)"
                    } else {
                        ""
                    },
                    median(&cell.latency),
                    ratio(tps_of("direct")),
                    ratio(tps_of("pgbouncer")),
                );
            }
        }
    }
}

mod idle {
    use super::targets::{rss_bytes, Target};

    /// Opens `n` clients to each pooler that complete the startup
    /// handshake and stay idle; reports resident memory per client.
    pub fn run(runtime: &tokio::runtime::Runtime, targets: &[Target], n: usize) {
        for target in targets {
            let Some(pid) = target.pid else { continue };
            let before = rss_bytes(pid).unwrap_or(0);
            let clients = runtime.block_on(async {
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    match tokio_postgres::connect(&target.url, tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            clients.push(client);
                        }
                        Err(e) => {
                            eprintln!("{}: connect failed: {e}", target.name);
                            break;
                        }
                    }
                }
                // Idle buffers are given back after a second.
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                clients
            });
            let after = rss_bytes(pid).unwrap_or(0);
            let per = after.saturating_sub(before) as f64 / clients.len().max(1) as f64;
            println!(
                "| {} | {} idle clients | RSS {:.1} MiB -> {:.1} MiB | {:.2} KiB per client |",
                target.name,
                clients.len(),
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                per / 1024.0
            );
            drop(clients);
        }
    }
}
