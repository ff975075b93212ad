//! Failover with `role = "auto"`: a primary that comes back after a
//! promotion never takes writes again (no split brain), writes wait out a
//! failover within `failover_hold`, two primaries on one timeline get no
//! writes, and a replica that recovers is back at its first good check.
//! Each test stops and promotes nodes, so each has a cluster of its own.

use crate::common::cluster::{free_port, NodeInfo, APP_PASSWORD};
use crate::common::config::ADMIN_PASSWORD;
use crate::common::console::{metric, rows, scrape_async};
use crate::common::{eventually, try_connect_str, Cluster, Pgrouter, RouterConfig};
use crate::routing::served_by;
use crate::routing_lag::private_cluster;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(30);

/// A cluster whose table `w` takes one numbered row per write.
async fn writable_cluster(replicas: usize) -> Cluster {
    let cluster = private_cluster(replicas).await;
    let su = cluster.superuser(cluster.primary(), "app").await;
    su.batch_execute("CREATE TABLE w (n bigint primary key); GRANT ALL ON w TO app;")
        .await
        .unwrap();
    cluster.wait_replicas_caught_up().await;
    cluster
}

/// pgrouter in front of `nodes` (the first named "primary", the others
/// "replica1", ...), every one with role = "auto".
fn auto_config(nodes: &[NodeInfo]) -> RouterConfig {
    let mut config = RouterConfig::new(&nodes[0], "app")
        .replicas(&nodes[1..])
        .role("primary", "auto")
        .routing("monitor_interval = \"100ms\"")
        .routing("ban_time = \"1s\"")
        .admin();
    for i in 1..nodes.len() {
        config = config.role(&format!("replica{i}"), "auto");
    }
    config
}

/// The node's row in SHOW NODES.
async fn node_row(console: &Client, name: &str) -> HashMap<String, String> {
    rows(console, "SHOW NODES")
        .await
        .into_iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("SHOW NODES has no {name}"))
}

fn returned_port(messages: &[SimpleQueryMessage]) -> Option<u16> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
        _ => None,
    })
}

/// Inserts numbered rows into `w` through pgrouter until stopped,
/// reconnecting when its connection dies, and remembers which node
/// acknowledged each number. Numbers are taken before the write is sent,
/// so `issued()` read at some moment bounds every write sent after it.
struct Writer {
    next: Arc<AtomicI64>,
    acked: Arc<Mutex<Vec<(i64, u16)>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(conn: String) -> Writer {
        let next = Arc::new(AtomicI64::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (next, acked, stop) = (next.clone(), acked.clone(), stop.clone());
            async move {
                // Paced, so that the writer leaves CPU to the servers.
                let mut pace = tokio::time::interval(Duration::from_millis(2));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut client: Option<Client> = None;
                while !stop.load(Relaxed) {
                    pace.tick().await;
                    let Some(live) = client.as_ref().filter(|c| !c.is_closed()) else {
                        client = try_connect_str(&conn).await.ok();
                        continue;
                    };
                    let n = next.fetch_add(1, Relaxed);
                    let sql = format!("INSERT INTO w VALUES ({n}) RETURNING inet_server_port()");
                    if let Ok(messages) = live.simple_query(&sql).await {
                        if let Some(port) = returned_port(&messages) {
                            acked.lock().unwrap().push((n, port));
                        }
                    }
                }
            }
        });
        Writer {
            next,
            acked,
            stop,
            task,
        }
    }

    /// The number the next write will take.
    fn issued(&self) -> i64 {
        self.next.load(Relaxed)
    }

    /// Writes numbered `from` or later that `port` acknowledged.
    fn acked_on(&self, port: u16, from: i64) -> usize {
        let acked = self.acked.lock().unwrap();
        acked
            .iter()
            .filter(|&&(n, p)| n >= from && p == port)
            .count()
    }

    fn acked_since(&self, from: i64) -> usize {
        let acked = self.acked.lock().unwrap();
        acked.iter().filter(|&&(n, _)| n >= from).count()
    }

    async fn stop(self) -> Vec<(i64, u16)> {
        self.stop.store(true, Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap();
        acked.clone()
    }
}

async fn count(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_returns_after_a_promotion_gets_no_write() {
    let cluster = writable_cluster(2).await;
    let old = cluster.primary().clone();
    let promoted = cluster.replicas()[0].clone();
    let metrics_port = free_port();
    let nodes = [old.clone(), promoted.clone(), cluster.replicas()[1].clone()];
    let config = auto_config(&nodes)
        .server(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .build();
    let router = Pgrouter::start(&config);
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let writer = Writer::start(router.conn_str("app", APP_PASSWORD, "app"));
    eventually(DEADLINE, "writes reach the primary", || async {
        writer.acked_on(old.port, 0) >= 20
    })
    .await;

    tokio::task::block_in_place(|| cluster.stop_node(&old));
    tokio::task::block_in_place(|| cluster.promote_node(&promoted));
    // Every write numbered from here on was sent after the promotion.
    let after_promotion = writer.issued();
    eventually(
        DEADLINE,
        "writes resume on the promoted replica",
        || async { writer.acked_on(promoted.port, after_promotion) >= 20 },
    )
    .await;

    // The old primary comes back out of recovery, on the old timeline.
    tokio::task::block_in_place(|| cluster.start_node(&old));
    eventually(DEADLINE, "the monitor reaches the old primary", || async {
        node_row(&console, "primary").await["healthy"] == "true"
    })
    .await;
    let returned = writer.issued();
    eventually(
        DEADLINE,
        "writes go on after the old primary's return",
        || async { writer.acked_since(returned) >= 200 },
    )
    .await;
    let acked = writer.stop().await;

    let strays = acked
        .iter()
        .filter(|&&(n, port)| n >= after_promotion && port == old.port)
        .count();
    assert_eq!(
        strays, 0,
        "writes acknowledged by the old primary after the promotion"
    );
    // Nor did any write reach it unacknowledged: its rows, counted there.
    let direct = cluster.superuser(&old, "app").await;
    let on_old = count(
        &direct,
        "SELECT count(*) FROM w WHERE n >= $1",
        &[&after_promotion],
    )
    .await;
    assert_eq!(
        on_old, 0,
        "rows written to the old primary after the promotion"
    );
    // Every write the promoted node acknowledged is there.
    let on_promoted: Vec<i64> = acked
        .iter()
        .filter(|&&(_, port)| port == promoted.port)
        .map(|&(n, _)| n)
        .collect();
    let direct = cluster.superuser(&promoted, "app").await;
    let found = count(
        &direct,
        "SELECT count(*) FROM w WHERE n = ANY($1)",
        &[&on_promoted],
    )
    .await;
    assert_eq!(found as usize, on_promoted.len());

    // Operators are told: SHOW NODES, an ERROR in the log, a metric.
    let row = node_row(&console, "primary").await;
    assert_eq!(row["role"], "false_primary", "{row:?}");
    assert_eq!(row["status"], "refused", "{row:?}");
    let row = node_row(&console, "replica1").await;
    assert_eq!(row["role"], "primary", "{row:?}");
    assert_eq!(row["timeline"], "2", "{row:?}");
    let logged = router
        .logs()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("false primary"))
        .count();
    assert_eq!(logged, 1, "one ERROR for the change: {:?}", router.logs());
    eventually(DEADLINE, "the false primary is counted", || async {
        let body = scrape_async(metrics_port).await;
        metric(
            &body,
            "pgrouter_false_primaries_total",
            &[("node", "primary")],
        ) == 1.0
            && metric(&body, "pgrouter_node_false_primary", &[("node", "primary")]) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_out_a_failover_and_two_primaries_on_one_timeline_get_none() {
    let cluster = writable_cluster(2).await;
    let old = cluster.primary().clone();
    let (first, second) = (cluster.replicas()[0].clone(), cluster.replicas()[1].clone());
    let nodes = [old.clone(), first.clone(), second.clone()];
    let holding = Pgrouter::start(
        &auto_config(&nodes)
            .routing("failover_hold = \"30s\"")
            .build(),
    );
    let console = holding.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let client = holding.connect("app", APP_PASSWORD, "app").await;
    let insert = |n: i64| format!("INSERT INTO w VALUES ({n}) RETURNING inet_server_port()");
    assert_eq!(served_by(&client, &insert(1)).await, old.port);

    tokio::task::block_in_place(|| cluster.stop_node(&old));
    eventually(DEADLINE, "pgrouter knows no primary", || async {
        rows(&console, "SHOW NODES")
            .await
            .iter()
            .all(|n| n["role"] != "primary")
    })
    .await;
    // A short hold ends in the same refusal a write gets at once without
    // one. (Its first node is up: a login takes its parameters there.)
    let reordered = [first.clone(), second.clone(), old.clone()];
    let short = Pgrouter::start(
        &auto_config(&reordered)
            .routing("failover_hold = \"500ms\"")
            .build(),
    );
    let impatient = short.connect("app", APP_PASSWORD, "app").await;
    let asked = Instant::now();
    let refused = impatient.simple_query(&insert(2)).await.unwrap_err();
    let waited = asked.elapsed();
    assert_eq!(
        refused.code(),
        Some(&SqlState::CONNECTION_FAILURE),
        "{refused}"
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(10),
        "refused after {waited:?}"
    );
    drop(short);

    // A write sent now is held, and runs on the replica promoted meanwhile.
    let held = tokio::spawn(async move {
        let messages = client.simple_query(&insert(3)).await;
        (client, messages)
    });
    tokio::task::block_in_place(|| cluster.promote_node(&first));
    let (client, messages) = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the held write is answered")
        .unwrap();
    let messages = messages.expect("the held write succeeds");
    assert_eq!(returned_port(&messages), Some(first.port));

    // The other replica, which followed the old primary, is promoted too:
    // it also takes timeline 2. pgrouter keeps the primary it has.
    tokio::task::block_in_place(|| cluster.promote_node(&second));
    eventually(DEADLINE, "the second claimant is refused", || async {
        node_row(&console, "replica2").await["role"] == "false_primary"
    })
    .await;
    assert_eq!(served_by(&client, &insert(4)).await, first.port);
    drop(holding);

    // A pgrouter that starts now has no current primary to keep: two nodes
    // claim timeline 2, and it refuses writes rather than guess.
    let config = auto_config(&[first.clone(), second.clone()]).build();
    let fresh = Pgrouter::start(&config);
    let console = fresh.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let client = fresh.connect("app", APP_PASSWORD, "app").await;
    let refused = client.simple_query(&insert(5)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::CONNECTION_FAILURE),
        "{refused}"
    );
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.is_some_and(|m| m.contains("claim to be the primary")),
        "{refused:?}"
    );
    for name in ["primary", "replica1"] {
        let row = node_row(&console, name).await;
        assert_eq!(row["role"], "contested", "{row:?}");
    }
    assert!(fresh.wait_for_log("claim to be the primary", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_replica_serves_reads_from_its_first_good_check() {
    let cluster = private_cluster(1).await;
    let replica = cluster.replicas()[0].clone();
    let config = RouterConfig::new(cluster.primary(), "app")
        .replicas(cluster.replicas())
        .routing("read_your_writes = \"off\"")
        .routing("monitor_interval = \"100ms\"")
        .routing("ban_time = \"3s\"")
        .admin()
        .build();
    let router = Pgrouter::start(&config);
    let console = router.connect("admin", ADMIN_PASSWORD, "pgrouter").await;
    let client = router.connect("app", APP_PASSWORD, "app").await;
    let read = "SELECT inet_server_port()";
    assert_eq!(served_by(&client, read).await, replica.port);

    tokio::task::block_in_place(|| cluster.stop_node(&replica));
    eventually(DEADLINE, "the stopped replica is banned", || async {
        node_row(&console, "replica1").await["banned"] == "true"
    })
    .await;
    // Its checks keep failing, but they do not re-arm the ban: ban_time
    // after the first failure, it only waits for a good check.
    eventually(
        DEADLINE,
        "the ban runs out while the replica is down",
        || async {
            let row = node_row(&console, "replica1").await;
            row["healthy"] == "false" && row["banned"] == "true" && row["ban_left"] == "0.0s"
        },
    )
    .await;

    tokio::task::block_in_place(|| cluster.start_node(&replica));
    eventually(DEADLINE, "the monitor's first good check", || async {
        node_row(&console, "replica1").await["healthy"] == "true"
    })
    .await;
    // Today's ban lasted ban_time after the last failed check; one monitor
    // interval (with room for a loaded machine) is the bound now.
    eventually(
        Duration::from_secs(1),
        "reads reach the replica right after its first good check",
        || async { served_by(&client, read).await == replica.port },
    )
    .await;
    let row = node_row(&console, "replica1").await;
    assert_eq!(row["status"], "up", "{row:?}");
    assert_eq!(row["bans"], "1", "one ban for one outage: {row:?}");
}
