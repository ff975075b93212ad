//! One monitor per node, over a connection of its own: liveness, role,
//! timeline and WAL position every `monitor_interval`.

use super::{Lsn, Sample, Timeline, Topology};
use crate::config::Address;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};

/// One query answers everything, on a primary as on a replica, in one
/// round trip. pg_is_in_recovery() is asked once (the subquery is not
/// flattened: the function is volatile), so a promotion between two calls
/// cannot mix a replica's answers with a primary's.
///
/// The timeline of a node out of recovery is that of the WAL it writes
/// (the first 8 hex digits of the current segment's file name):
/// pg_control_checkpoint() still shows the old timeline after a promotion
/// until the first checkpoint completes, which a spread checkpoint can
/// take minutes to. In recovery only the last restartpoint's timeline is
/// there to read; it is only compared, never trusted to elect.
const CHECK: &str = "SELECT r, \
    (CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    (CASE WHEN r THEN NULL ELSE pg_current_wal_insert_lsn() END)::text, \
    CASE WHEN r THEN (pg_control_checkpoint()).timeline_id::int8 \
     ELSE ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int8 END \
    FROM (SELECT pg_is_in_recovery() AS r OFFSET 0) AS recovery";

pub struct MonitorTarget {
    pub index: usize,
    pub address: Address,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub interval: Duration,
    pub connect_timeout: Duration,
}

struct Session {
    client: Client,
    check: Statement,
}

pub struct Monitor {
    topology: Arc<Topology>,
    target: MonitorTarget,
    session: Option<Session>,
}

impl Monitor {
    pub fn new(topology: Arc<Topology>, target: MonitorTarget) -> Monitor {
        Monitor {
            topology,
            target,
            session: None,
        }
    }

    /// Checks the node every interval until a reload retires its
    /// topology; says when the first check is done.
    pub async fn run(mut self, first_done: tokio::sync::oneshot::Sender<()>) {
        let mut ticks = tokio::time::interval(self.target.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        self.check().await;
        let _ = first_done.send(());
        loop {
            ticks.tick().await;
            if self.topology.is_retired() {
                return;
            }
            self.check().await;
        }
    }

    /// One round: connect if needed, ask, and record the answer.
    pub async fn check(&mut self) {
        let limit = self.target.connect_timeout.max(self.target.interval * 5);
        let index = self.target.index;
        match tokio::time::timeout(limit, self.sample()).await {
            Ok(Ok(sample)) => self.topology.report(index, sample),
            Ok(Err(error)) => {
                self.session = None;
                self.topology.check_failed(index, &error);
            }
            Err(_) => {
                self.session = None;
                self.topology.check_failed(index, "health check timed out");
            }
        }
    }

    async fn sample(&mut self) -> Result<Sample, String> {
        if self.session.as_ref().is_none_or(|s| s.client.is_closed()) {
            self.session = Some(self.connect().await?);
        }
        let Some(session) = &self.session else {
            return Err("no monitor connection".into());
        };
        // Taken before the query is sent: the insert position the primary
        // reports is at or past every commit acknowledged before this.
        let asked_at = Instant::now();
        let row = session
            .client
            .query_one(&session.check, &[])
            .await
            .map_err(|e| format!("health check failed: {e}"))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
        let insert_lsn: Option<String> = row.try_get(2).map_err(|e| e.to_string())?;
        let timeline: Option<i64> = row.try_get(3).map_err(|e| e.to_string())?;
        // Without a timeline the node cannot be placed in the election:
        // a failed check, not a guess.
        let timeline = timeline
            .and_then(|t| Timeline::try_from(t).ok())
            .ok_or("health check: no timeline")?;
        Ok(Sample {
            in_recovery,
            lsn: lsn.as_deref().and_then(Lsn::parse).unwrap_or_default(),
            insert_lsn: insert_lsn.as_deref().and_then(Lsn::parse),
            timeline,
            asked_at,
        })
    }

    async fn connect(&self) -> Result<Session, String> {
        let target = &self.target;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.address.host)
            .port(target.address.port)
            .user(&target.user)
            .dbname(&target.database)
            .application_name("pgrouter-monitor")
            .connect_timeout(target.connect_timeout);
        if let Some(password) = &target.password {
            config.password(password);
        }
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let check = client
            .prepare(CHECK)
            .await
            .map_err(|e| format!("cannot prepare the health check: {e}"))?;
        Ok(Session { client, check })
    }
}
