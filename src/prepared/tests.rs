use super::*;

fn intern(registry: &Registry, sql: &str) -> Arc<Statement> {
    registry
        .intern(sql.as_bytes(), &[0, 0], || None)
        .unwrap_or_else(|full| panic!("{sql}: {full}"))
}

#[test]
fn equal_content_shares_a_server_name() {
    let registry = Registry::default();
    let a = intern(&registry, "select 1");
    let b = intern(&registry, "select 1");
    let c = intern(&registry, "select 2");
    assert!(Arc::ptr_eq(&a, &b));
    assert_ne!(a.server_name, c.server_name);
    let parsed = extended::parse(&a.parse).unwrap();
    assert_eq!(parsed.name, &*a.server_name);
    assert_eq!(parsed.query, b"select 1");
    assert_eq!(parsed.types, &[0, 0]);
    // The key is the Parse's own tail, not a second copy.
    assert_eq!(&a.content[..], b"select 1\0\0\0");
    assert_eq!(registry.len(), 2);
}

#[test]
fn a_statement_leaves_when_no_client_names_it() {
    let registry = Registry::default();
    let mut alice = ClientStatements::default();
    let mut bob = ClientStatements::default();
    alice.insert("a", intern(&registry, "select 1"));
    bob.insert("b", intern(&registry, "select 1"));
    let first_name = alice.get("a").unwrap().server_name.clone();
    assert_eq!(registry.len(), 1);

    alice.remove("a");
    assert_eq!(registry.len(), 1, "bob still names it");
    // Replacing a name drops what it named.
    bob.insert("b", intern(&registry, "select 2"));
    assert_eq!(registry.len(), 1);
    bob.clear();
    assert!(registry.is_empty());

    // Parsed again: a new server-side name, since a server connection may
    // still hold the old one.
    alice.insert("a", intern(&registry, "select 1"));
    assert_ne!(alice.get("a").unwrap().server_name, first_name);
    drop(alice);
    assert!(registry.is_empty(), "a departing client's statements go");
}

#[test]
fn a_statement_in_flight_outlives_its_name() {
    let registry = Registry::default();
    let mut client = ClientStatements::default();
    client.insert("a", intern(&registry, "select 1"));
    let bound = client.get("a").cloned();
    client.remove("a");
    assert_eq!(registry.len(), 1);
    let again = intern(&registry, "select 1");
    assert!(Arc::ptr_eq(bound.as_ref().unwrap(), &again));
    drop((bound, again));
    assert!(registry.is_empty());
}

#[test]
fn the_limit_refuses_new_statements_only() {
    let registry = Registry::new(2);
    let a = intern(&registry, "select 1");
    let b = intern(&registry, "select 2");
    assert_eq!(
        registry
            .intern(b"select 3", &[0, 0], || None)
            .map(|_| ())
            .unwrap_err(),
        RegistryFull { limit: 2 }
    );
    assert_eq!(registry.refused(), 1);
    // Known statements are still shared.
    assert!(Arc::ptr_eq(&intern(&registry, "select 1"), &a));
    drop(b);
    intern(&registry, "select 3");
    // A reload may raise it.
    registry.set_limit(3);
    let _d = intern(&registry, "select 4");
    assert_eq!(registry.len(), 2);
}

#[test]
fn the_classifier_is_asked_once_per_new_statement() {
    let registry = Registry::default();
    let mut asked = 0;
    let a = registry.intern(b"select 1", &[0, 0], || {
        asked += 1;
        None
    });
    let b = registry.intern(b"select 1", &[0, 0], || {
        asked += 1;
        None
    });
    assert_eq!(asked, 1);
    drop((a, b));
}

#[test]
fn an_invalidated_statement_is_replaced_and_its_drop_spares_the_new_one() {
    let registry = Registry::default();
    let stale = intern(&registry, "select * from t");
    registry.invalidate(&stale);
    assert!(registry.is_empty());
    let fresh = intern(&registry, "select * from t");
    assert_ne!(stale.server_name, fresh.server_name);
    drop(stale);
    assert_eq!(registry.len(), 1);
    assert!(Arc::ptr_eq(&intern(&registry, "select * from t"), &fresh));
}

#[test]
fn a_flood_of_statements_leaves_nothing_behind() {
    let registry = Registry::default();
    let mut client = ClientStatements::new(1_000);
    for i in 0..50_000 {
        let sql = format!("select {i}");
        client.insert(&format!("s{i}"), intern(&registry, &sql));
        assert!(client.len() <= 1_000);
    }
    assert_eq!(client.len(), 1_000);
    assert_eq!(client.evicted(), 49_000);
    assert_eq!(registry.len(), 1_000, "evicted names free their statements");
    drop(client);
    assert!(registry.is_empty());
    assert!(
        registry.shelf.by_content.lock().capacity() < 1024,
        "the map gives its room back"
    );
}

#[test]
fn the_least_recently_used_name_goes_first() {
    let registry = Registry::default();
    let mut client = ClientStatements::new(3);
    for name in ["a", "b", "c"] {
        client.insert(name, intern(&registry, name));
    }
    // "a" is in use: "b", the oldest unused, goes.
    assert!(client.get("a").is_some());
    client.insert("d", intern(&registry, "d"));
    assert!(client.get("b").is_none());
    for name in ["a", "c", "d"] {
        assert!(client.get(name).is_some(), "{name}");
    }
    assert_eq!(client.len(), 3);
    assert_eq!(registry.len(), 3);
}

#[test]
fn client_names_follow_a_model_through_random_operations() {
    // Seeded: the same sequence every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let registry = Registry::default();
    let limit = 8;
    let mut client = ClientStatements::new(limit);
    let mut model: HashMap<String, Arc<str>> = HashMap::new();
    for _ in 0..20_000 {
        let name = format!("n{}", next(12));
        match next(4) {
            0 | 1 => {
                let statement = intern(&registry, &format!("select {}", next(6)));
                let full = model.len() == limit && !model.contains_key(&name);
                model.insert(name.clone(), statement.server_name.clone());
                client.insert(&name, statement);
                if full {
                    // One other name was forgotten: follow the client.
                    model.retain(|name, _| client.get(name).is_some());
                }
            }
            2 => assert_eq!(client.remove(&name), model.remove(&name).is_some()),
            _ => assert_eq!(
                client.get(&name).map(|s| s.server_name.clone()),
                model.get(&name).cloned()
            ),
        }
        assert_eq!(client.len(), model.len());
        assert!(client.len() <= limit);
        client.assert_consistent();
    }
    drop(client);
    assert!(registry.is_empty());
}

#[test]
fn concurrent_interns_and_drops_keep_the_registry_exact() {
    let registry = Arc::new(Registry::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                for i in 0..5_000 {
                    let statement = intern(&registry, &format!("select {}", (i + t) % 7));
                    if i % 3 == 0 {
                        registry.invalidate(&statement);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(registry.is_empty());
}
