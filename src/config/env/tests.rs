use super::*;

const TOP: [&str; 5] = ["listen", "admin_listen", "upstream", "limits", "endpoints"];

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn apply(pairs: &[(&str, &str)]) -> Result<(Table, Overrides), String> {
    let mut table = Table::new();
    let overrides = apply_overrides(&mut table, &env(pairs), &TOP)?;
    Ok((table, overrides))
}

/// What the kubelet injects into every pod of the namespace for a Service `falgate` (port
/// `http` 80 and `admin` 9090) and a Service `falgate-redis` (6379), plus a script's own.
const KUBELET: [(&str, &str); 23] = [
    ("FALGATE_SERVICE_HOST", "10.0.0.1"),
    ("FALGATE_SERVICE_PORT", "80"),
    ("FALGATE_SERVICE_PORT_HTTP", "80"),
    ("FALGATE_SERVICE_PORT_ADMIN", "9090"),
    ("FALGATE_PORT", "tcp://10.0.0.1:80"),
    ("FALGATE_PORT_80_TCP", "tcp://10.0.0.1:80"),
    ("FALGATE_PORT_80_TCP_PROTO", "tcp"),
    ("FALGATE_PORT_80_TCP_PORT", "80"),
    ("FALGATE_PORT_80_TCP_ADDR", "10.0.0.1"),
    ("FALGATE_PORT_9090_TCP", "tcp://10.0.0.1:9090"),
    ("FALGATE_PORT_9090_TCP_PROTO", "tcp"),
    ("FALGATE_PORT_9090_TCP_PORT", "9090"),
    ("FALGATE_PORT_9090_TCP_ADDR", "10.0.0.1"),
    ("FALGATE_REDIS_SERVICE_HOST", "10.0.0.2"),
    ("FALGATE_REDIS_SERVICE_PORT", "6379"),
    ("FALGATE_REDIS_SERVICE_PORT_REDIS", "6379"),
    ("FALGATE_REDIS_PORT", "tcp://10.0.0.2:6379"),
    ("FALGATE_REDIS_PORT_6379_TCP", "tcp://10.0.0.2:6379"),
    ("FALGATE_REDIS_PORT_6379_TCP_PROTO", "tcp"),
    ("FALGATE_REDIS_PORT_6379_TCP_PORT", "6379"),
    ("FALGATE_REDIS_PORT_6379_TCP_ADDR", "10.0.0.2"),
    ("FALGATE_BIN", "/usr/local/bin/falgate"),
    ("FALGATE_CONFIG", "/etc/falgate/falgate.toml"),
];

#[test]
fn the_kubelets_service_links_are_ignored_and_listed_by_name_only() {
    let mut pairs = KUBELET.to_vec();
    pairs.push(("FALGATE_LISTEN", "127.0.0.1:0"));
    let (table, overrides) = apply(&pairs).unwrap();
    assert_eq!(table.keys().collect::<Vec<_>>(), ["listen"]);
    let mut expected: Vec<_> = KUBELET[..22].iter().map(|(k, _)| (*k).to_owned()).collect();
    expected.sort();
    assert_eq!(overrides.ignored, expected);
    let warning = overrides.warning().unwrap();
    assert!(
        !warning.contains("10.0.0.1") && !warning.contains("FALGATE_CONFIG"),
        "{warning}"
    );
    assert!(warning.contains("FALGATE_PORT_80_TCP_ADDR"), "{warning}");
    assert!(apply(&[("FALGATE_LISTEN", "x")]).unwrap().1.warning().is_none());
}

#[test]
fn nested_override_sets_typed_scalar_and_string() {
    let (table, _) = apply(&[
        ("FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "2000"),
        ("FALGATE_LISTEN", "127.0.0.1:0"),
        ("FALGATE_UPSTREAM__QUEUE_URL", "[not toml"),
    ])
    .unwrap();
    assert_eq!(table["upstream"]["connect_timeout_ms"].as_integer(), Some(2000));
    assert_eq!(table["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(table["upstream"]["queue_url"].as_str(), Some("[not toml"));
}

#[test]
fn lists_and_tables_are_toml_inline_values() {
    let (table, _) = apply(&[
        ("FALGATE_LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8", "fd00::/8"]"#),
        (
            "FALGATE_ENDPOINTS",
            r#"{ "a/b" = { schema = "s.json", sync_run = true } }"#,
        ),
    ])
    .unwrap();
    let proxies = table["limits"]["trusted_proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    assert_eq!(table["endpoints"]["a/b"]["sync_run"].as_bool(), Some(true));
}

#[test]
fn a_table_is_set_before_the_keys_inside_it() {
    let (table, _) = apply(&[
        ("FALGATE_LIMITS__DEFAULT_TIER", "gold"),
        (
            "FALGATE_LIMITS",
            r#"{ default_tier = "free", max_tracked_callers = 5 }"#,
        ),
    ])
    .unwrap();
    assert_eq!(table["limits"]["default_tier"].as_str(), Some("gold"));
    assert_eq!(table["limits"]["max_tracked_callers"].as_integer(), Some(5));
}

#[test]
fn a_double_underscore_name_outside_the_config_is_refused_with_the_variable_named() {
    for name in [
        "FALGATE_UPSTREAM____X",
        "FALGATE_LIMITZ__DEFAULT_TIER",
        "FALGATE__LISTEN",
    ] {
        let err = apply(&[(name, "1")]).unwrap_err();
        assert!(err.contains(name), "{err}");
    }
    let mut table: Table = "listen = \"x\"".parse().unwrap();
    let err = apply_overrides(&mut table, &env(&[("FALGATE_LISTEN__X", "1")]), &TOP).unwrap_err();
    assert!(
        err.contains("FALGATE_LISTEN__X") && err.contains("not a section"),
        "{err}"
    );
}

#[test]
fn an_error_is_blamed_on_the_variable_that_holds_or_created_its_key() {
    let mut table: Table = "[limits]\ndefault_tier = \"d\"\n".parse().unwrap();
    let vars = env(&[
        ("FALGATE_LIMITS__TRUSTED_PROXIES", "[\"x\"]"),
        ("FALGATE_UPSTREAM__QUEUE_URL", "http://x"),
    ]);
    let overrides = apply_overrides(&mut table, &vars, &TOP).unwrap();
    let path = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let blame = |parts: &[&str]| overrides.blame(&path(parts));
    assert_eq!(
        blame(&["limits", "trusted_proxies", "0"]),
        Some("FALGATE_LIMITS__TRUSTED_PROXIES")
    );
    // `[limits]` came from the file: a missing field there is the file's.
    assert_eq!(blame(&["limits"]), None);
    // `[upstream]` was created by the variable.
    assert_eq!(blame(&["upstream"]), Some("FALGATE_UPSTREAM__QUEUE_URL"));
    assert_eq!(blame(&["listen"]), None);
}
