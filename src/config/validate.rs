//! Checks that types alone cannot express. Every problem is reported, each
//! at the line of the value it concerns.

use super::{position, AuthMethod, Config, ConfigError, NodeRole};
use crate::auth::secret::Secret;
use std::collections::HashSet;
use std::ops::Range;
use toml::Spanned;

/// The database name reserved for the admin console.
pub const ADMIN_DATABASE: &str = "pgrouter";

struct Report<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    fn at(&mut self, span: Range<usize>, message: String) {
        // Defaults carry an empty span: they have no place in the file.
        let position = (span != (0..0)).then(|| position(self.text, span.start));
        self.errors.push(ConfigError { position, message });
    }
}

pub fn check(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut report = Report {
        text,
        errors: Vec::new(),
    };
    check_server(config, &mut report);
    check_nodes(config, &mut report);
    check_users(config, &mut report);
    check_routing(config, &mut report);
    check_databases(config, &mut report);
    report.errors
}

fn check_server(config: &Config, report: &mut Report) {
    let server = &config.server;
    if *server.max_client_connections.get_ref() == 0 {
        report.at(
            server.max_client_connections.span(),
            "server.max_client_connections must be at least 1".into(),
        );
    }
    if server.max_message_size.get_ref().0 < 8192 {
        report.at(
            server.max_message_size.span(),
            "server.max_message_size must be at least 8kB".into(),
        );
    }
    let pool = &config.pool;
    check_pool_sizes(&pool.min_connections, &pool.max_connections, "pool", report);
    for (value, key) in [
        (
            &pool.max_client_prepared_statements,
            "pool.max_client_prepared_statements",
        ),
        (
            &pool.max_distinct_prepared_statements,
            "pool.max_distinct_prepared_statements",
        ),
    ] {
        if *value.get_ref() == 0 {
            report.at(value.span(), format!("{key} must be at least 1"));
        }
    }
}

fn check_pool_sizes(min: &Spanned<usize>, max: &Spanned<usize>, place: &str, report: &mut Report) {
    if *max.get_ref() == 0 {
        report.at(
            max.span(),
            format!("{place}.max_connections must be at least 1"),
        );
    }
    if min.get_ref() > max.get_ref() {
        report.at(
            min.span(),
            format!(
                "{place}.min_connections ({}) exceeds max_connections ({})",
                min.get_ref(),
                max.get_ref()
            ),
        );
    }
}

fn check_unique<'a>(
    names: impl Iterator<Item = &'a Spanned<String>>,
    what: &str,
    report: &mut Report,
) {
    let mut seen = HashSet::new();
    for name in names {
        if name.get_ref().is_empty() {
            report.at(name.span(), format!("{what} name must not be empty"));
        } else if !seen.insert(name.get_ref().as_str()) {
            report.at(
                name.span(),
                format!("{what} {:?} is defined twice", name.get_ref()),
            );
        }
    }
}

fn check_nodes(config: &Config, report: &mut Report) {
    if config.nodes.is_empty() {
        report.at(0..0, "no [[nodes]]: at least a primary is needed".into());
        return;
    }
    check_unique(config.nodes.iter().map(|n| &n.name), "node", report);
    let primaries: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| *n.role.get_ref() == NodeRole::Primary)
        .collect();
    let auto = config
        .nodes
        .iter()
        .any(|n| *n.role.get_ref() == NodeRole::Auto);
    match primaries.as_slice() {
        [] if auto => {}
        [] => report.at(
            config.nodes[0].name.span(),
            "no node has role = \"primary\" (or \"auto\")".into(),
        ),
        [_] => {}
        [_, extra @ ..] => {
            for node in extra {
                report.at(
                    node.role.span(),
                    format!(
                        "node {:?} is a second primary: only one node may have role = \"primary\"",
                        node.name.get_ref()
                    ),
                );
            }
        }
    }
}

fn check_routing(config: &Config, report: &mut Report) {
    let routing = &config.routing;
    if routing.monitor_interval.get_ref().0 < std::time::Duration::from_millis(10) {
        report.at(
            routing.monitor_interval.span(),
            "routing.monitor_interval must be at least 10ms".into(),
        );
    }
    if *routing.ban_after.get_ref() == 0 {
        report.at(
            routing.ban_after.span(),
            "routing.ban_after must be at least 1".into(),
        );
    }
    if let Some(name) = &routing.monitor_user {
        if config.user(name.get_ref()).is_none() {
            report.at(
                name.span(),
                format!(
                    "routing.monitor_user {:?} is not in [[users]]",
                    name.get_ref()
                ),
            );
        }
    }
    if routing.statement_cache_size == 0 {
        report.at(
            0..0,
            "routing.statement_cache_size must be at least 1".into(),
        );
    }
    let threads = &routing.classify_threads;
    if !(1..=64).contains(threads.get_ref()) {
        report.at(
            threads.span(),
            "routing.classify_threads must be between 1 and 64".into(),
        );
    }
    let (offload, max) = (&routing.classify_offload_size, &routing.classify_max_size);
    if offload.get_ref().0 > max.get_ref().0 {
        report.at(
            offload.span(),
            format!(
                "routing.classify_offload_size ({}) exceeds routing.classify_max_size ({})",
                offload.get_ref().0,
                max.get_ref().0
            ),
        );
    }
}

fn check_users(config: &Config, report: &mut Report) {
    if config.users.is_empty() {
        report.at(0..0, "no [[users]]: clients could not log in".into());
    }
    check_unique(config.users.iter().map(|u| &u.name), "user", report);
    for user in &config.users {
        let name = user.name.get_ref();
        let auth = *user.auth.get_ref();
        match (auth, user.password.as_ref().map(|p| p.get_ref())) {
            (AuthMethod::Trust, _) => {}
            (_, None) => report.at(
                user.name.span(),
                format!("user {name:?} needs a password for its auth method"),
            ),
            (AuthMethod::Md5, Some(Secret::Scram(_))) => report.at(
                user.auth.span(),
                format!(
                    "user {name:?}: md5 authentication needs a plain or md5 password, not a SCRAM verifier"
                ),
            ),
            (AuthMethod::ScramSha256, Some(Secret::Md5(_))) => report.at(
                user.auth.span(),
                format!(
                    "user {name:?}: scram-sha-256 authentication needs a plain password or a SCRAM verifier, not an md5 hash"
                ),
            ),
            _ => {}
        }
    }
}

fn check_databases(config: &Config, report: &mut Report) {
    if config.databases.is_empty() {
        report.at(0..0, "no [[databases]]: clients could not connect".into());
    }
    check_unique(config.databases.iter().map(|d| &d.name), "database", report);
    for db in &config.databases {
        let name = db.name.get_ref();
        if name == ADMIN_DATABASE {
            report.at(
                db.name.span(),
                format!("database name {ADMIN_DATABASE:?} is reserved for the admin console"),
            );
        }
        // Sizes inherited whole from [pool] were checked there already.
        if db.min_connections.is_some() || db.max_connections.is_some() {
            let min = db
                .min_connections
                .as_ref()
                .unwrap_or(&config.pool.min_connections);
            let max = db
                .max_connections
                .as_ref()
                .unwrap_or(&config.pool.max_connections);
            check_pool_sizes(min, max, &format!("database {name:?}"), report);
        }
    }
}
