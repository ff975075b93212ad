//! pgrouter configs for tests: one database in front of a test cluster's
//! nodes, with the three users the cluster creates, and whatever keys a
//! test adds.

use super::cluster::{NodeInfo, APP_PASSWORD, MD5_PASSWORD};

pub const ADMIN_PASSWORD: &str = "console-secret";

pub struct RouterConfig {
    server: Vec<String>,
    pool: Vec<String>,
    routing: Vec<String>,
    /// (name, address, role, weight)
    nodes: Vec<(String, String, String, u32)>,
    database: String,
    database_lines: Vec<String>,
    users: String,
}

impl RouterConfig {
    /// `database` both as clients name it and on the server, in front of
    /// `primary` alone.
    pub fn new(primary: &NodeInfo, database: &str) -> RouterConfig {
        RouterConfig {
            server: vec!["listen = \"127.0.0.1:0\"".into()],
            pool: vec!["min_connections = 0".into(), "max_connections = 5".into()],
            routing: Vec::new(),
            nodes: vec![("primary".into(), primary.addr(), "primary".into(), 1)],
            database: database.into(),
            database_lines: Vec::new(),
            users: format!(
                r#"
[[users]]
name = "app"
password = "{APP_PASSWORD}"

[[users]]
name = "md5user"
password = "{MD5_PASSWORD}"
auth = "md5"

[[users]]
name = "trustuser"
auth = "trust"
"#
            ),
        }
    }

    /// Adds the replicas as nodes "replica1", "replica2"... of weight 1.
    pub fn replicas(mut self, replicas: &[NodeInfo]) -> Self {
        for (i, replica) in replicas.iter().enumerate() {
            self.nodes.push((
                format!("replica{}", i + 1),
                replica.addr(),
                "replica".into(),
                1,
            ));
        }
        self
    }

    /// Sets a node's role ("primary", "replica", "auto") by name.
    pub fn role(mut self, node: &str, role: &str) -> Self {
        for entry in &mut self.nodes {
            if entry.0 == node {
                entry.2 = role.into();
            }
        }
        self
    }

    /// Sets a node's weight by name.
    pub fn weight(mut self, node: &str, weight: u32) -> Self {
        for entry in &mut self.nodes {
            if entry.0 == node {
                entry.3 = weight;
            }
        }
        self
    }

    /// Adds a `[server]` line such as `max_client_connections = 2`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }

    /// Adds a `[pool]` line such as `mode = "session"`; a later line for
    /// the same key replaces an earlier one.
    pub fn pool(mut self, line: &str) -> Self {
        replace_key(&mut self.pool, line);
        self
    }

    /// Adds a `[routing]` line such as `balance = "round_robin"`.
    pub fn routing(mut self, line: &str) -> Self {
        replace_key(&mut self.routing, line);
        self
    }

    /// Adds a line to the `[[databases]]` table, e.g. `route = "replica"`.
    pub fn database_line(mut self, line: &str) -> Self {
        self.database_lines.push(line.into());
        self
    }

    /// Adds the console user `admin` (password `ADMIN_PASSWORD`).
    pub fn admin(mut self) -> Self {
        self.users.push_str(&format!(
            "\n[[users]]\nname = \"admin\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n"
        ));
        self
    }

    /// Replaces the `[[users]]` tables.
    pub fn users(mut self, toml: &str) -> Self {
        self.users = toml.into();
        self
    }

    /// Points the primary at another address (e.g. a closed port).
    pub fn primary_address(mut self, address: &str) -> Self {
        self.nodes[0].1 = address.into();
        self
    }

    pub fn build(&self) -> String {
        let mut out = format!(
            "[server]\n{}\n\n[pool]\n{}\n\n[routing]\n{}\n",
            self.server.join("\n"),
            self.pool.join("\n"),
            self.routing.join("\n"),
        );
        for (name, address, role, weight) in &self.nodes {
            out.push_str(&format!(
                "\n[[nodes]]\nname = \"{name}\"\naddress = \"{address}\"\nrole = \"{role}\"\nweight = {weight}\n"
            ));
        }
        out.push_str(&self.users);
        out.push_str(&format!(
            "\n[[databases]]\nname = \"{}\"\n{}\n",
            self.database,
            self.database_lines.join("\n")
        ));
        out
    }
}

fn replace_key(lines: &mut Vec<String>, line: &str) {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    let new_key = key(line);
    lines.retain(|existing| key(existing) != new_key);
    lines.push(line.into());
}
