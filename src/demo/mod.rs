//! `pgrouter demo`: a PostgreSQL primary and two streaming replicas started
//! from the server programs installed on this machine, in a temporary
//! directory, with pgrouter in front of them. Ctrl-C stops everything and
//! removes the directory.
//!
//! The roles and database are the ones docker-compose.yml creates: `app`
//! (password `app`) owning database `app`, and `admin` (password `admin`),
//! pgrouter's admin console user.
//!
//! This module starts the servers and writes pgrouter's config file into the
//! directory; main.rs runs pgrouter from that file the way it runs any
//! other, with [`Demo::announce`] alongside, and drops the [`Demo`] when
//! pgrouter stops.

mod binaries;
mod cluster;

pub use binaries::BINDIR_VARIABLE;

use crate::config::Address;
use cluster::{Cluster, Node, DATABASE, ROLES};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const REPLICAS: usize = 2;
/// How long [`Demo::announce`] waits for a read served by a replica.
const READY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl DemoError {
    fn io(what: String, source: std::io::Error) -> DemoError {
        DemoError::Io { what, source }
    }
}

pub struct Options {
    /// Where pgrouter listens, "host:port"; port 0 picks a free one.
    pub listen: String,
}

/// The running servers and pgrouter's config for them. Dropping it stops
/// the servers and removes the directory.
pub struct Demo {
    cluster: Cluster,
    listen: Address,
    config_path: PathBuf,
}

impl Demo {
    /// Starts the servers, waits until the replicas stream, and writes
    /// pgrouter's config. Blocking.
    pub fn start(options: &Options) -> Result<Demo, DemoError> {
        let mut listen = Address::parse(&options.listen).map_err(DemoError::Setup)?;
        // Before the servers: a taken port should not cost their start-up.
        check_listen(&listen)?;
        let bin = binaries::find()?;
        tracing::info!(
            bindir = %bin.dir.display(),
            "starting a PostgreSQL primary and {REPLICAS} streaming replicas"
        );
        let cluster = Cluster::start(bin, REPLICAS, listen.port)?;
        if listen.port == 0 {
            // Chosen now rather than left to the listener, so that the
            // announcement can say it. Another process could take it before
            // pgrouter binds; pgrouter then stops with the bind error.
            listen.port = std::net::TcpListener::bind((listen.host.as_str(), 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| DemoError::io(format!("finding a free port on {}", listen.host), e))?
                .port();
        }
        let config_path = cluster.dir.join("pgrouter.toml");
        std::fs::write(&config_path, config_text(&listen, &cluster.nodes))
            .map_err(|e| DemoError::io(format!("writing {}", config_path.display()), e))?;
        Ok(Demo {
            cluster,
            listen,
            config_path,
        })
    }

    /// pgrouter's config for the demo (in the demo's directory).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Waits until pgrouter answers a read from a replica, then prints how
    /// to connect. Runs beside pgrouter, which it reaches like any client.
    pub async fn announce(&self) {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        let replica_reads = loop {
            match self.read_from_replica().await {
                Ok(true) => break true,
                _ if tokio::time::Instant::now() >= deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        say(&self.banner(replica_reads));
    }

    /// Whether a read through pgrouter ran on a replica.
    async fn read_from_replica(&self) -> Result<bool, tokio_postgres::Error> {
        let (user, password) = ROLES[0];
        let (client, connection) = tokio_postgres::Config::new()
            .host(self.client_host())
            .port(self.listen.port)
            .user(user)
            .password(password)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(2))
            .connect(tokio_postgres::NoTls)
            .await?;
        let connection = tokio::spawn(connection);
        let answer = client.simple_query("SELECT pg_is_in_recovery()").await;
        drop(client);
        let _ = connection.await;
        Ok(answer?.iter().any(|message| {
            matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))
        }))
    }

    /// Where clients reach pgrouter: the listen address, or loopback when
    /// pgrouter listens on every interface.
    fn client_host(&self) -> String {
        match self.listen.host.as_str() {
            "0.0.0.0" => "127.0.0.1".into(),
            "::" => "::1".into(),
            host => host.into(),
        }
    }

    fn url(&self, user: &str, password: &str, database: &str) -> String {
        let address = Address {
            host: self.client_host(),
            port: self.listen.port,
        };
        format!("postgres://{user}:{password}@{address}/{database}")
    }

    fn banner(&self, replica_reads: bool) -> String {
        let (user, password) = ROLES[0];
        let (admin, admin_password) = ROLES[1];
        let app = self.url(user, password, DATABASE);
        let mut text = String::new();
        let _ = writeln!(text, "\npgrouter demo ready: {app}\n");
        let _ = writeln!(text, "  connect        psql \"{app}\"");
        let _ = writeln!(
            text,
            "  admin console  psql \"{}\"\n",
            self.url(admin, admin_password, "pgrouter")
        );
        let _ = writeln!(text, "  {:<10} {:<6} data directory", "node", "port");
        for node in &self.cluster.nodes {
            let _ = writeln!(
                text,
                "  {:<10} {:<6} {}",
                node.name,
                node.port,
                node.data_dir.display()
            );
        }
        if !replica_reads {
            let _ = writeln!(
                text,
                "\n  (no read reached a replica within {READY_DEADLINE:?}: reads go to the primary \
                 until a replica is up and caught up; see the log above)"
            );
        }
        let _ = writeln!(
            text,
            "\nA write runs on the primary, a read on a replica (compare the ports above):\n\
             \x20 psql \"{app}\" -c \"CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text)\" \
             -c \"INSERT INTO demo (note) VALUES ('hello') RETURNING inet_server_port(), pg_is_in_recovery()\"\n\
             \x20 psql \"{app}\" -c \"SELECT inet_server_port(), pg_is_in_recovery(), count(*) FROM demo\"\n\
             \nCtrl-C stops pgrouter and the servers, and removes {}.",
            self.cluster.dir.display()
        );
        text
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        say(&format!(
            "stopping the demo's servers and removing {}\n",
            self.cluster.dir.display()
        ));
        self.cluster.stop();
    }
}

/// Prints to stdout. Unlike print!, a closed stdout (`pgrouter demo | head`)
/// is no reason to panic, least of all while the servers are being stopped.
fn say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn check_listen(listen: &Address) -> Result<(), DemoError> {
    match std::net::TcpListener::bind((listen.host.as_str(), listen.port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(DemoError::Setup(format!(
            "cannot listen on {listen}: {e}\n\
             Is another pgrouter or pooler using it? Choose another address with \
             --listen, e.g. pgrouter demo --listen 127.0.0.1:6433"
        ))),
    }
}

/// pgrouter's config for the demo's servers.
fn config_text(listen: &Address, nodes: &[Node]) -> String {
    let mut text = format!(
        "# Written by `pgrouter demo`; config/pgrouter.toml documents every key.\n\n\
         [server]\nlisten = \"{listen}\"\n\n\
         [pool]\nmode = \"transaction\"\nmax_connections = 20\n"
    );
    for node in nodes {
        // "auto": the monitor asks each node whether it is in recovery, as
        // in docker-compose; no node is named the primary here.
        let _ = write!(
            text,
            "\n[[nodes]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\nrole = \"auto\"\n",
            node.name, node.port
        );
    }
    for (i, (user, password)) in ROLES.iter().enumerate() {
        let admin = if i == 1 { "admin = true\n" } else { "" };
        let _ = write!(
            text,
            "\n[[users]]\nname = \"{user}\"\npassword = \"{password}\"\n{admin}"
        );
    }
    let _ = write!(text, "\n[[databases]]\nname = \"{DATABASE}\"\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NodeRole};

    fn node(name: &str, port: u16) -> Node {
        Node {
            name: name.into(),
            port,
            data_dir: PathBuf::from("/tmp/x").join(name),
            log: PathBuf::from("/tmp/x.log"),
        }
    }

    #[test]
    fn the_generated_config_is_valid() {
        let listen = Address::parse("127.0.0.1:6432").unwrap();
        let text = config_text(&listen, &[node("primary", 5000), node("replica1", 5001)]);
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(config.nodes.len(), 2);
        assert!(config
            .nodes
            .iter()
            .all(|n| *n.role.get_ref() == NodeRole::Auto));
        assert_eq!(config.nodes[1].address.port, 5001);
        assert_eq!(
            config.monitor_user().map(|u| u.name.get_ref().as_str()),
            Some("app")
        );
        assert!(config.user("admin").is_some_and(|u| u.admin));
        assert!(config.database("app").is_some());
    }
}
