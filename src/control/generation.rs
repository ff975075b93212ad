//! One generation of the configuration and everything built from it:
//! pools, topology, router, the clients' credentials. A reload builds the
//! next generation beside the current one; sessions move over between
//! transactions, so nobody's connection is dropped.

use crate::auth::ClientCheck;
use crate::config::Config;
use crate::pool::{self, Pools};
use crate::prepared::Registry;
use crate::router::Router;
use crate::stats::Stats;
use crate::topology::monitor::{Monitor, MonitorTarget};
use crate::topology::Topology;
use std::collections::HashMap;
use std::sync::Arc;

/// What every session of one generation shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub pools: Pools,
    /// By user name.
    pub checks: HashMap<String, ClientCheck>,
    pub topology: Arc<Topology>,
    pub router: Arc<Router>,
    /// Carried from generation to generation: server connections that
    /// outlive a reload hold statements under its names.
    pub registry: Arc<Registry>,
}

impl Shared {
    /// The generation `config` describes, taking over from `previous`
    /// what is still valid: its connections, what it knows of the nodes,
    /// and the prepared statements' names.
    pub fn build(config: Arc<Config>, previous: Option<&Shared>, stats: &Stats) -> Shared {
        let checks = config
            .users
            .iter()
            .map(|user| (user.name.get_ref().clone(), ClientCheck::for_user(user)))
            .collect();
        let topology = Arc::new(Topology::new(&config));
        if let Some(previous) = previous {
            topology.inherit(&previous.topology);
        }
        let limit = *config.pool.max_distinct_prepared_statements.get_ref();
        let registry = match previous {
            Some(previous) => {
                previous.registry.set_limit(limit);
                previous.registry.clone()
            }
            None => Arc::new(Registry::new(limit)),
        };
        Shared {
            pools: Pools::new(&config, previous.map(|p| &p.pools), stats),
            checks,
            router: Arc::new(Router::new(&config, topology.clone())),
            registry,
            topology,
            config,
        }
    }

    /// Starts the monitors and waits for their first round, so that roles,
    /// health and positions are known before the first client is served;
    /// with `warm_up`, opens every pool's min_connections too. Then starts
    /// the pools' upkeep.
    pub async fn start(&self, warm_up: bool) {
        let first_rounds: Vec<_> = self
            .monitors()
            .into_iter()
            .map(|monitor| {
                let (done, first_round) = tokio::sync::oneshot::channel();
                tokio::spawn(monitor.run(done));
                first_round
            })
            .collect();
        for first_round in first_rounds {
            let _ = first_round.await;
        }
        if warm_up {
            let warm_ups: Vec<_> = self
                .pools
                .all()
                .map(|pool| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool::top_up(&pool).await })
                })
                .collect();
            for (pool, warm_up) in self.pools.all().zip(warm_ups) {
                if !matches!(warm_up.await, Ok(true)) {
                    tracing::warn!(pool = %pool.name, "starting without min_connections: server unreachable");
                }
            }
        }
        for pool in self.pools.all() {
            tokio::spawn(pool::maintain(pool.clone()));
        }
    }

    /// Stops this generation's background work; sessions still using it
    /// finish their transactions on it.
    pub fn retire(&self) {
        self.topology.retire();
        for pool in self.pools.all() {
            pool.retire();
        }
    }

    fn monitors(&self) -> Vec<Monitor> {
        let config = &self.config;
        let user = config.monitor_user();
        config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                Monitor::new(
                    self.topology.clone(),
                    MonitorTarget {
                        index,
                        address: node.address.clone(),
                        user: user.map(|u| u.name.get_ref().clone()).unwrap_or_default(),
                        password: user.and_then(|u| u.server_password().map(str::to_owned)),
                        database: config.monitor_database().to_owned(),
                        interval: config.routing.monitor_interval.get_ref().0,
                        connect_timeout: config.pool.server_connect_timeout.0,
                    },
                )
            })
            .collect()
    }
}
