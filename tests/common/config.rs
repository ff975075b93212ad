//! pgrouter configs for tests: one database in front of a test node, with
//! the three users the cluster creates, and whatever keys a test adds.

use super::cluster::{NodeInfo, APP_PASSWORD, MD5_PASSWORD};

pub struct RouterConfig {
    server: Vec<String>,
    pool: Vec<String>,
    primary: String,
    database: String,
    users: String,
}

impl RouterConfig {
    /// `database` both as clients name it and on the server.
    pub fn new(primary: &NodeInfo, database: &str) -> RouterConfig {
        RouterConfig {
            server: vec!["listen = \"127.0.0.1:0\"".into()],
            pool: vec!["min_connections = 0".into(), "max_connections = 5".into()],
            primary: primary.addr(),
            database: database.into(),
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

    /// Adds a `[server]` line such as `max_client_connections = 2`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }

    /// Adds a `[pool]` line such as `mode = "session"`; a later line for
    /// the same key replaces an earlier one.
    pub fn pool(mut self, line: &str) -> Self {
        let key = line.split('=').next().unwrap_or("").trim().to_owned();
        self.pool
            .retain(|existing| existing.split('=').next().unwrap_or("").trim() != key);
        self.pool.push(line.into());
        self
    }

    /// Replaces the `[[users]]` tables.
    pub fn users(mut self, toml: &str) -> Self {
        self.users = toml.into();
        self
    }

    /// Points the primary at another address (e.g. a closed port).
    pub fn primary_address(mut self, address: &str) -> Self {
        self.primary = address.into();
        self
    }

    pub fn build(&self) -> String {
        format!(
            "[server]\n{}\n\n[pool]\n{}\n\n[[nodes]]\nname = \"primary\"\naddress = \"{}\"\nrole = \"primary\"\n{}\n[[databases]]\nname = \"{}\"\n",
            self.server.join("\n"),
            self.pool.join("\n"),
            self.primary,
            self.users,
            self.database
        )
    }
}
