//! docker-compose.yml, the Dockerfile and config/pgrouter.docker.toml agree
//! with each other. Docker cannot run where the tests run, so these check
//! what can be checked without it: names, ports, paths, users, and that the
//! monitoring files refer to metrics pgrouter has.

use pgrouter::config::{Config, NodeRole};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

const POSTGRES_PORT: u16 = 5432;

/// Every metric the Grafana dashboard may use.
const METRICS: &[&str] = &[
    "pgrouter_clients",
    "pgrouter_server_connections",
    "pgrouter_node_up",
    "pgrouter_node_primary",
    "pgrouter_node_banned",
    "pgrouter_replica_lag_seconds",
    "pgrouter_replica_lag_bytes",
    "pgrouter_pinned_clients",
    "pgrouter_queries_total",
    "pgrouter_transactions_total",
    "pgrouter_routing_decisions_total",
    "pgrouter_errors_total",
    "pgrouter_checkout_timeouts_total",
    "pgrouter_bytes_received_total",
    "pgrouter_bytes_sent_total",
    "pgrouter_server_connections_opened_total",
    "pgrouter_server_connections_closed_total",
    "pgrouter_node_bans_total",
    "pgrouter_retries_total",
    "pgrouter_query_duration_seconds",
    "pgrouter_transaction_duration_seconds",
    "pgrouter_checkout_wait_seconds",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.remove(0)
}

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn docker_config() -> Config {
    let path = repo().join("config/pgrouter.docker.toml");
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => panic!("not a string: {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.as_hash().is_some(),
        "docker-compose.yml has no service {name:?}"
    );
    service
}

/// (host path, container path) of the service's bind mounts.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap_or_default().to_owned();
            let container = parts.next().unwrap_or_default().to_owned();
            (host, container)
        })
        .collect()
}

/// Container ports of "host_ip:host_port:container_port" entries, each
/// with its host port.
fn published(service: &Yaml) -> Vec<(u16, u16)> {
    strings(&service["ports"])
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            let port = |s: &str| s.parse::<u16>().unwrap_or_else(|e| panic!("{p}: {e}"));
            (port(parts[parts.len() - 2]), port(parts[parts.len() - 1]))
        })
        .collect()
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

#[test]
fn every_node_in_the_docker_config_is_a_postgres_service_on_its_port() {
    let compose = compose();
    let config = docker_config();
    assert_eq!(config.nodes.len(), 3, "a primary and two replicas");
    for node in &config.nodes {
        let name = node.name.get_ref();
        let service = service(&compose, &node.address.host);
        assert_eq!(
            node.address.port, POSTGRES_PORT,
            "node {name}: the postgres image listens on {POSTGRES_PORT}"
        );
        assert!(
            strings(&service["expose"]).contains(&POSTGRES_PORT.to_string()),
            "service {} exposes {POSTGRES_PORT}",
            node.address.host
        );
        assert!(
            service["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("postgres:")),
            "service {} runs the official postgres image",
            node.address.host
        );
        let command = strings(&service["command"]);
        assert!(
            !command.iter().any(|a| a.starts_with("port=") || a == "-p"),
            "service {} must not move postgres off {POSTGRES_PORT}: {command:?}",
            node.address.host
        );
        // The monitor finds the primary; a promoted replica takes the writes.
        assert_eq!(*node.role.get_ref(), NodeRole::Auto, "node {name}");
    }
}

#[test]
fn pgrouter_service_mounts_the_docker_config_and_publishes_its_ports() {
    let compose = compose();
    let config = docker_config();
    let pgrouter = service(&compose, "pgrouter");

    let entrypoint = dockerfile()
        .into_iter()
        .rfind(|(keyword, _)| keyword == "ENTRYPOINT")
        .map(|(_, args)| args)
        .expect("the Dockerfile has an ENTRYPOINT");
    let mut args = YamlLoader::load_from_str(&entrypoint)
        .map(|docs| strings(&docs[0]))
        .unwrap_or_else(|e| panic!("ENTRYPOINT {entrypoint}: {e}"));
    assert_eq!(
        args.first().map(String::as_str),
        Some("pgrouter"),
        "{args:?}"
    );
    let config_flag = args.iter().position(|a| a == "--config").expect("--config");
    let container_config = args.remove(config_flag + 1);

    let mounts = bind_mounts(pgrouter);
    let (host, _) = mounts
        .iter()
        .find(|(_, container)| *container == container_config)
        .unwrap_or_else(|| panic!("pgrouter mounts nothing at {container_config}: {mounts:?}"));
    assert_eq!(host, "./config/pgrouter.docker.toml");
    assert!(repo().join(host).is_file(), "{host} exists");

    // In a container pgrouter must listen on every interface, or the
    // published port leads nowhere.
    let ports = published(pgrouter);
    for (what, address) in [
        ("listen", Some(&config.server.listen)),
        ("metrics_listen", config.server.metrics_listen.as_ref()),
    ] {
        let address = address.unwrap_or_else(|| panic!("server.{what} is set"));
        assert_eq!(address.host, "0.0.0.0", "server.{what}");
        assert!(
            ports.contains(&(address.port, address.port)),
            "pgrouter publishes server.{what} port {}: {ports:?}",
            address.port
        );
    }
    // The URL: postgres://app:app@localhost:6432/app
    assert_eq!(config.server.listen.port, 6432);
    let app = config.user("app").expect("user app");
    assert_eq!(app.server_password(), Some("app"));
    assert!(config.database("app").is_some());
    assert!(config.user("admin").is_some_and(|u| u.admin));

    let exposed: Vec<String> = dockerfile()
        .into_iter()
        .filter(|(keyword, _)| keyword == "EXPOSE")
        .flat_map(|(_, ports)| {
            ports
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for (_, port) in &ports {
        assert!(
            exposed.contains(&port.to_string()),
            "{port} in EXPOSE {exposed:?}"
        );
    }
}

#[test]
fn the_dockerfile_builds_pgrouter_and_runs_it_unprivileged() {
    let compose = compose();
    let build = &service(&compose, "pgrouter")["build"];
    let context = build["context"].as_str().expect("build.context");
    let file = build["dockerfile"].as_str().unwrap_or("Dockerfile");
    let dockerfile_path = repo().join(context).join(file);
    assert!(
        dockerfile_path.is_file(),
        "{} exists",
        dockerfile_path.display()
    );

    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let bins = manifest["bin"].as_array().expect("[[bin]]");
    assert!(
        bins.iter()
            .any(|bin| bin["name"].as_str() == Some("pgrouter")),
        "Cargo.toml names the binary pgrouter"
    );

    let instructions = dockerfile();
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    let build_stage = stages[0]
        .split_whitespace()
        .next_back()
        .expect("FROM ... AS name");
    assert!(stages[0].starts_with("rust:"), "build stage: {}", stages[0]);
    let (before_runtime, runtime) = instructions.split_at(
        instructions
            .iter()
            .rposition(|(k, _)| k == "FROM")
            .expect("FROM"),
    );
    assert!(
        before_runtime.iter().any(|(k, v)| k == "RUN"
            && v.contains("cargo build --release --locked")
            && v.contains("--bin pgrouter")),
        "the build stage builds the pgrouter binary"
    );
    // What the build stage copies out of target/ is what the runtime copies in.
    let built = "/usr/local/bin/pgrouter";
    assert!(before_runtime
        .iter()
        .any(|(k, v)| k == "RUN" && v.contains(&format!("target/release/pgrouter {built}"))));
    assert!(
        runtime
            .iter()
            .any(|(k, v)| k == "COPY" && v.starts_with(&format!("--from={build_stage} {built} "))),
        "the runtime stage copies the binary from the {build_stage} stage"
    );
    // Every file the build copies is in the repository and not ignored.
    let ignored = read(".dockerignore");
    for (_, args) in instructions.iter().filter(|(k, _)| k == "COPY") {
        if args.starts_with("--from") {
            continue;
        }
        let mut sources: Vec<&str> = args.split_whitespace().collect();
        sources.pop();
        for source in sources {
            assert!(repo().join(source).exists(), "COPY {source}: missing");
            let top = source.split('/').next().unwrap_or(source);
            assert!(
                !ignored.lines().any(|l| l.trim_end_matches('/') == top),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
    assert!(ignored.lines().any(|l| l.trim() == "target/"));
    let user = runtime
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, v)| v.as_str())
        .expect("the runtime stage sets USER");
    assert!(
        user != "root" && user != "0",
        "runs as a non-root user: {user}"
    );
}

#[test]
fn every_service_has_a_health_check_and_pgrouter_waits_only_for_the_primary() {
    let compose = compose();
    let services = compose["services"].as_hash().expect("services");
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let test = strings(&service["healthcheck"]["test"]);
        assert!(
            matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() > 1,
            "service {name} has a health check: {test:?}"
        );
        for (host, _) in bind_mounts(service) {
            assert!(
                repo().join(&host).exists(),
                "service {name} mounts {host}, which does not exist"
            );
        }
    }

    let pgrouter = service(&compose, "pgrouter");
    let depends = pgrouter["depends_on"].as_hash().expect("depends_on");
    let names: Vec<&str> = depends.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        names,
        ["primary"],
        "pgrouter tolerates replicas coming up later"
    );
    assert_eq!(
        pgrouter["depends_on"]["primary"]["condition"].as_str(),
        Some("service_healthy")
    );

    let primary = service(&compose, "primary");
    let password = primary["environment"]["REPLICATION_PASSWORD"].as_str();
    assert!(password.is_some(), "the primary's replication password");
    for replica in ["replica1", "replica2"] {
        let service = service(&compose, replica);
        assert_eq!(
            service["depends_on"]["primary"]["condition"].as_str(),
            Some("service_healthy"),
            "{replica} waits for the primary"
        );
        assert_eq!(
            service["environment"]["REPLICATION_PASSWORD"].as_str(),
            password,
            "{replica} clones the primary with the password the primary sets"
        );
        assert_eq!(
            service["environment"]["REPLICA_NAME"].as_str(),
            Some(replica)
        );
        let entrypoint = strings(&service["entrypoint"]);
        let script = bind_mounts(service)
            .into_iter()
            .find(|(_, container)| entrypoint.first() == Some(container))
            .map(|(host, _)| host)
            .unwrap_or_else(|| panic!("{replica}'s entrypoint {entrypoint:?} is mounted"));
        assert_executable(&repo().join(script));
        assert_eq!(
            strings(&service["command"]),
            strings(&primary["command"]),
            "{replica} runs with the primary's settings (a hot standby needs at least its values)"
        );
    }
    for (host, _) in bind_mounts(primary) {
        assert_executable(&repo().join(host));
    }
}

fn assert_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode();
    assert!(
        mode & 0o111 != 0,
        "{} is executable (the container runs it)",
        path.display()
    );
}

#[test]
fn the_primary_creates_every_user_of_the_docker_config() {
    let config = docker_config();
    let compose = compose();
    let (init, _) = bind_mounts(service(&compose, "primary"))
        .into_iter()
        .find(|(_, container)| container.starts_with("/docker-entrypoint-initdb.d/"))
        .expect("the primary mounts an init script");
    let script = std::fs::read_to_string(repo().join(&init)).expect("init script");
    for user in &config.users {
        let name = user.name.get_ref();
        let password = user.server_password().expect("a plain password");
        let create = format!("CREATE ROLE {name} LOGIN PASSWORD '{password}';");
        assert!(script.contains(&create), "{init} runs {create}");
    }
    for db in &config.databases {
        let create = format!("CREATE DATABASE {}", db.server_database());
        assert!(script.contains(&create), "{init} runs {create}");
    }
    let monitor = config.monitor_user().expect("a monitor user");
    assert_eq!(monitor.name.get_ref(), "app");
    assert!(script.contains("host replication replicator all"));
}

#[test]
fn monitoring_scrapes_pgrouter_and_the_dashboard_uses_its_metrics() {
    let compose = compose();
    let config = docker_config();
    let metrics = config
        .server
        .metrics_listen
        .as_ref()
        .expect("metrics_listen");

    let prometheus = service(&compose, "prometheus");
    let grafana = service(&compose, "grafana");
    for monitoring in [prometheus, grafana] {
        assert_eq!(strings(&monitoring["profiles"]), ["monitoring"]);
    }
    let (prometheus_yml, _) = bind_mounts(prometheus)
        .into_iter()
        .find(|(_, container)| container == "/etc/prometheus/prometheus.yml")
        .expect("prometheus.yml mounted");
    let scrape = yaml(prometheus_yml.trim_start_matches("./"));
    let targets = strings(&scrape["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, [format!("pgrouter:{}", metrics.port)]);

    let mounts = bind_mounts(grafana);
    let host_of = |container: &str| {
        mounts
            .iter()
            .find(|(_, c)| c == container)
            .map(|(h, _)| h.trim_start_matches("./").to_owned())
            .unwrap_or_else(|| panic!("grafana mounts nothing at {container}"))
    };
    let provisioning = host_of("/etc/grafana/provisioning");
    let datasource = yaml(&format!("{provisioning}/datasources/prometheus.yml"));
    assert_eq!(
        datasource["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let uid = datasource["datasources"][0]["uid"].as_str().expect("uid");
    let provider = yaml(&format!("{provisioning}/dashboards/pgrouter.yml"));
    let dashboards_in = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let dashboards = host_of(dashboards_in);
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    let home = home
        .strip_prefix(&format!("{dashboards_in}/"))
        .expect("home dashboard in the mounted directory");

    // JSON is YAML, so one parser reads both.
    let dashboard = yaml(&format!("{dashboards}/{home}"));
    let panels = dashboard["panels"].as_vec().expect("panels");
    let mut used = Vec::new();
    for panel in panels.iter().filter(|p| p["type"].as_str() != Some("row")) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "{title}");
        let targets = panel["targets"].as_vec().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has queries");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            for metric in metric_names(expr) {
                let base = metric.strip_suffix("_bucket").unwrap_or(&metric);
                assert!(
                    METRICS.contains(&base),
                    "panel {title}: unknown metric {metric}"
                );
                used.push(base.to_owned());
            }
        }
    }
    // The issue asks for pool usage, routing split, replica lag and errors.
    for metric in [
        "pgrouter_server_connections",
        "pgrouter_queries_total",
        "pgrouter_replica_lag_seconds",
        "pgrouter_errors_total",
    ] {
        assert!(used.iter().any(|m| m == metric), "no panel shows {metric}");
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("pgrouter_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
