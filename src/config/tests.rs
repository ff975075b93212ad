use super::*;

const MINIMAL: &str = r#"
[[nodes]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"

[[users]]
name = "app"
password = "secret"

[[databases]]
name = "app"
"#;

fn rejected(text: &str) -> Vec<ConfigError> {
    match Config::parse(text) {
        Ok(_) => panic!("config was accepted"),
        Err(errors) => errors,
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../config/pgrouter.toml");
    let config = Config::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.server.listen.port, 6432);
    assert_eq!(*config.server.max_client_connections.get_ref(), 5000);
    let settings = config.pool_settings(&config.databases[0]);
    assert_eq!(settings.mode, PoolMode::Transaction);
    assert_eq!(settings.min_connections, 2);
    assert_eq!(settings.max_connections, 20);
    assert_eq!(settings.checkout_timeout, std::time::Duration::from_secs(5));
    assert_eq!(
        settings.server_lifetime,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(settings.reset_query, "DISCARD ALL");
}

#[test]
fn defaults_apply_and_databases_override() {
    let text = format!("{MINIMAL}mode = \"session\"\nmax_connections = 3\n");
    let config = Config::parse(&text).unwrap();
    let settings = config.pool_settings(&config.databases[0]);
    assert_eq!(settings.mode, PoolMode::Session);
    assert_eq!(settings.max_connections, 3);
    assert_eq!(settings.min_connections, 0);
    assert_eq!(config.databases[0].server_database(), "app");
    assert_eq!(
        config.user("app").unwrap().server_password(),
        Some("secret")
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let errors = rejected(&format!(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n{MINIMAL}"
    ));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("listen_port"), "{errors:?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(3));
}

#[test]
fn bad_values_are_named_with_their_line() {
    let errors = rejected(&format!(
        "[pool]\ncheckout_timeout = \"5 parsecs\"\n{MINIMAL}"
    ));
    assert!(errors[0].message.contains("invalid duration"), "{errors:?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(2));

    let errors = rejected(&format!("[pool]\nmode = \"statement\"\n{MINIMAL}"));
    assert!(errors[0].message.contains("statement"), "{errors:?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(2));
}

#[test]
fn every_semantic_error_is_reported() {
    let text = r#"
[pool]
min_connections = 30
max_connections = 20

[[nodes]]
name = "a"
address = "127.0.0.1:5432"
role = "replica"

[[users]]
name = "app"
auth = "md5"

[[databases]]
name = "pgrouter"
"#;
    let errors = rejected(text);
    let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("exceeds max_connections")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("role = \"primary\"")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("needs a password")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("reserved")),
        "{messages:?}"
    );
    let min_line = errors
        .iter()
        .find(|e| e.message.contains("exceeds"))
        .and_then(|e| e.position);
    assert_eq!(min_line.map(|p| p.0), Some(3));
}

#[test]
fn duplicate_names_are_reported() {
    let text = format!("{MINIMAL}\n[[databases]]\nname = \"app\"\n");
    let errors = rejected(&text);
    assert!(errors[0].message.contains("defined twice"), "{errors:?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(15));
}

#[test]
fn bounds_have_defaults_and_are_checked() {
    let config = Config::parse(MINIMAL).unwrap();
    let (pool, routing) = (&config.pool, &config.routing);
    assert_eq!(*pool.max_client_prepared_statements.get_ref(), 2000);
    assert_eq!(*pool.max_distinct_prepared_statements.get_ref(), 100_000);
    assert_eq!(routing.function_cache_size, 10_000);
    assert_eq!(
        routing.function_cache_ttl.0,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(routing.classify_offload_size.get_ref().0, 8 << 10);
    assert_eq!(routing.classify_max_size.get_ref().0, 1 << 20);
    assert_eq!(*routing.classify_threads.get_ref(), 1);
    assert_eq!(routing.classify_queue, 32);
    let settings = config.pool_settings(&config.databases[0]);
    assert_eq!(settings.max_client_prepared_statements, 2000);

    let text = format!(
        "[pool]\nmax_client_prepared_statements = 0\nmax_distinct_prepared_statements = 0\n\
         [routing]\nclassify_threads = 0\nclassify_offload_size = \"2MB\"\n{MINIMAL}"
    );
    let errors: Vec<String> = rejected(&text)
        .into_iter()
        .map(|e| format!("{:?} {}", e.position.map(|p| p.0), e.message))
        .collect();
    assert_eq!(
        errors,
        [
            "Some(2) pool.max_client_prepared_statements must be at least 1",
            "Some(3) pool.max_distinct_prepared_statements must be at least 1",
            "Some(5) routing.classify_threads must be between 1 and 64",
            "Some(6) routing.classify_offload_size (2097152) exceeds routing.classify_max_size (1048576)",
        ]
    );
}

#[test]
fn failover_keys_have_defaults_and_ban_after_is_at_least_one() {
    let config = Config::parse(MINIMAL).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(*config.routing.ban_after.get_ref(), 2);
    assert_eq!(config.routing.failover_hold.0, std::time::Duration::ZERO);

    let text = format!("[routing]\nban_after = 3\nfailover_hold = \"5s\"\n{MINIMAL}");
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(*config.routing.ban_after.get_ref(), 3);
    assert_eq!(
        config.routing.failover_hold.0,
        std::time::Duration::from_secs(5)
    );

    let errors = rejected(&format!("[routing]\nban_after = 0\n{MINIMAL}"));
    assert!(errors[0].message.contains("ban_after"), "{errors:?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(2));
}
