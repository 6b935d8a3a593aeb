use std::collections::HashMap;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn with_secret() -> HashMap<String, String> {
    env(&[("FALGATE_AUTH__HS256_SECRET", SECRET)])
}

#[test]
fn shipped_default_config_is_valid_and_secure() {
    let text = include_str!("../../config/falgate.toml");
    let config = Config::from_toml(text, &with_secret()).unwrap();
    let allowed: Vec<_> = config.endpoints.keys().map(EndpointId::as_str).collect();
    assert_eq!(allowed, ["fal-ai/video-prompt-generator"]);
    assert_eq!(config.upstream.queue_url.as_str(), "https://queue.fal.run/");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
}

#[test]
fn default_config_without_a_secret_refuses_to_start() {
    let err = Config::from_toml(include_str!("../../config/falgate.toml"), &env(&[])).unwrap_err();
    assert!(err.0.contains("auth.hs256_secret"), "{err}");
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let err = Config::from_toml("[upstream]\nqueue_ur = \"https://x\"\n", &with_secret()).unwrap_err();
    assert!(err.0.contains("queue_ur"), "{err}");
    let err = Config::from_toml(
        "",
        &env(&[("FALGATE_AUTH__HS256_SECRET", SECRET), ("FALGATE_UPSTREAM__NOPE", "1")]),
    )
    .unwrap_err();
    assert!(err.0.contains("nope"), "{err}");
}

#[test]
fn env_overrides_win_over_the_file_and_are_typed() {
    let vars = env(&[
        ("FALGATE_AUTH__HS256_SECRET", SECRET),
        ("FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "250"),
        ("FALGATE_UPSTREAM__QUEUE_URL", "http://127.0.0.1:1"),
    ]);
    let config = Config::from_toml("[upstream]\nconnect_timeout_ms = 9000\n", &vars).unwrap();
    assert_eq!(config.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(config.upstream.queue_url.as_str(), "http://127.0.0.1:1/");
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let cases = [
        ("listen = \"nope\"", "listen"),
        ("[upstream]\nqueue_url = \"ftp://x\"", "upstream.queue_url"),
        ("[upstream]\nrun_url = \"https://u:p@x\"", "upstream.run_url"),
        ("[upstream]\nidle_timeout_ms = 0", "upstream.idle_timeout_ms"),
        ("[upstream]\nidle_timeout_ms = \"5s\"", "idle_timeout_ms"),
        ("[storage]\nuploads = \"maybe\"", "maybe"),
        ("[endpoints.\"nope\"]\nsync_run = true", "nope"),
        ("[request]\nmax_body_bytes = 0", "request.max_body_bytes"),
    ];
    for (text, key) in cases {
        let err = Config::from_toml(text, &with_secret()).unwrap_err();
        assert!(err.0.contains(key), "{text}: {err}");
    }
}

#[test]
fn short_hs256_secret_is_refused() {
    let err = Config::from_toml("", &env(&[("FALGATE_AUTH__HS256_SECRET", "short")])).unwrap_err();
    assert!(err.0.contains("32 bytes"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = Config::load(Some(Path::new("/nonexistent/falgate.toml")), &with_secret()).unwrap_err();
    assert!(err.0.contains("/nonexistent/falgate.toml"), "{err}");
}

#[test]
fn shipped_default_config_schemas_compile_relative_to_the_config_folder() {
    let text = include_str!("../../config/falgate.toml");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = Config::from_toml_in(text, &with_secret(), &base).unwrap();
    let schemas = crate::schema::Schemas::compile(config.schema_sources).unwrap();
    assert!(schemas.has("fal-ai/video-prompt-generator"));
}

#[test]
fn an_endpoint_without_a_schema_is_refused() {
    let err = Config::from_toml("[endpoints.\"a/b\"]\nsync_run = true\n", &with_secret()).unwrap_err();
    assert!(err.0.contains("endpoints.\"a/b\".schema"), "{err}");
}

#[test]
fn a_rate_faster_than_one_call_per_microsecond_is_refused() {
    let text = "[limits]\ndefault_tier = \"d\"\n[limits.tiers.d]\npoll = { burst = 1, per_minute = 60000001 }\n";
    let err = Config::from_toml(text, &with_secret()).unwrap_err();
    assert!(err.0.contains("per_minute"), "{err}");
}

#[test]
fn key_files_are_relative_to_the_config_folder() {
    let text = "[auth.issuers.x]\nissuer = \"https://x\"\nkey_files = [\"keys/x.json\"]\n";
    let config = Config::from_toml_in(text, &with_secret(), Path::new("/etc/falgate")).unwrap();
    let issuer = config.auth.issuers.iter().find(|i| i.name == "x").unwrap();
    assert_eq!(issuer.key_files, [Path::new("/etc/falgate/keys/x.json")]);
}

/// The error and where it was blamed: the file or the environment.
fn parse_err(text: &str, vars: &[(&str, &str)]) -> (Source, String) {
    let mut all = with_secret();
    all.extend(env(vars));
    let (source, ConfigError(message)) = Config::parse(text, &all).unwrap_err();
    (source, message)
}

#[test]
fn a_bad_environment_variable_is_reported_by_its_name_not_blamed_on_the_file() {
    let cases = [
        ("FALGATE_UPSTREAM__NOPE", "1"),
        ("FALGATE_UPSTREAM__IDLE_TIMEOUT_MS", "soon"),
        ("FALGATE_UPSTREAM__QUEUE_URL", "ftp://x"),
        ("FALGATE_LISTEN", "nope"),
        ("FALGATE_LIMITS__TRUSTED_PROXIES", r#"["not-a-cidr"]"#),
        ("FALGATE_LIMITS__DEFAULT_TIER", "gold"),
        ("FALGATE_ENDPOINTS", r#"{ "a/b" = { sync_run = true } }"#),
        ("FALGATE_REDIS__TIMEOUT_MS", "50"),
    ];
    let file = "[limits]\ndefault_tier = \"d\"\n[limits.tiers.d]\n";
    for (name, value) in cases {
        let (source, message) = parse_err(file, &[(name, value)]);
        assert!(matches!(source, Source::Env), "{name}: {message}");
        assert!(
            message.starts_with(&format!("environment variable {name}: ")),
            "{message}"
        );
    }
    // Variables that are not keys but are read by the config name themselves.
    let (source, message) = parse_err("", &[("HTTPS_PROXY", "ftp://proxy")]);
    assert!(
        matches!(source, Source::Env) && message.starts_with("`HTTPS_PROXY`"),
        "{message}"
    );
    let issuer = "[auth.issuers.b]\nissuer = \"https://b\"\nhs_secret_env = \"B_SECRET\"\nalgorithms = [\"HS256\"]\n";
    let (source, message) = parse_err(issuer, &[("B_SECRET", "short")]);
    assert!(
        matches!(source, Source::Env) && message.starts_with("`B_SECRET`"),
        "{message}"
    );
    assert!(
        message.contains("auth.issuers.b.hs_secret_env") && !message.contains("short"),
        "{message}"
    );
    let (source, message) = parse_err(
        "[upstream]\nidle_timeout_ms = 0\n",
        &[("FALGATE_UPSTREAM__QUEUE_URL", "https://x")],
    );
    assert!(matches!(source, Source::File), "{message}");
    assert!(message.contains("upstream.idle_timeout_ms"), "{message}");
}

#[test]
fn a_value_from_the_environment_is_never_echoed_in_an_error() {
    let (_, message) = parse_err("", &[("FALGATE_AUTH__AUDIENCE", "31337")]);
    assert!(
        message.contains("FALGATE_AUTH__AUDIENCE") && message.contains("integer"),
        "{message}"
    );
    assert!(!message.contains("31337"), "{message}");
}

#[test]
fn a_misspelt_table_is_named_before_the_missing_fields_it_causes() {
    let file = "[limitz]\ndefault_tier = \"d\"\n[limitz.tiers.d]\n[limits.unauthenticated_ip_rate]\nburst = 1\nper_minute = 1\n";
    let (source, message) = parse_err(file, &[]);
    assert!(matches!(source, Source::File), "{message}");
    assert!(message.contains("`limitz`: unknown key"), "{message}");
    // The same when the environment is what creates the half-empty `[limits]`.
    let (_, message) = parse_err(
        "[limitz]\ndefault_tier = \"d\"\n",
        &[("FALGATE_LIMITS__TRUSTED_PROXIES", "[]")],
    );
    assert!(message.contains("`limitz`: unknown key"), "{message}");
    let (_, message) = parse_err("[limits]\ndefault_tier = \"d\"\ntierz = {}\n", &[]);
    assert!(message.contains("`limits.tierz`: unknown key"), "{message}");
}

#[test]
fn lists_and_tables_are_set_from_the_environment_as_toml_inline_values() {
    let vars = env(&[
        ("FALGATE_AUTH__HS256_SECRET", SECRET),
        ("FALGATE_LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#),
        ("FALGATE_CORS__ALLOWED_ORIGINS", r#"["https://a.example"]"#),
        ("FALGATE_WEBHOOKS__ALLOWED_HOSTS", r#"["hooks.example.com"]"#),
        (
            "FALGATE_ENDPOINTS",
            r#"{ "a/b" = { schema = "b.json", sync_run = true } }"#,
        ),
        (
            "FALGATE_TIERS",
            r#"{ default = { operations = ["submit", "status"] } }"#,
        ),
        (
            "FALGATE_LIMITS__TIERS__DEFAULT__SUBMIT",
            "{ burst = 3, per_minute = 7 }",
        ),
        // The file prices its own endpoint, which the table above replaces: so must this.
        ("FALGATE_LIMITS__CREDITS__ENDPOINTS", r#"{ "a/b" = { cost = 2 } }"#),
    ]);
    let config = Config::from_toml_in(include_str!("../../config/falgate.toml"), &vars, Path::new("/cfg")).unwrap();
    assert_eq!(
        config.limits.trusted_proxies,
        ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(config.webhook_hosts.iter().collect::<Vec<_>>(), ["hooks.example.com"]);
    assert_eq!(
        config.cors.allowed_origins.iter().collect::<Vec<_>>(),
        ["https://a.example"]
    );
    // A table replaces the file's whole table: only a/b is allowed now.
    let allowed: Vec<_> = config.endpoints.keys().map(EndpointId::as_str).collect();
    assert_eq!(allowed, ["a/b"]);
    assert_eq!(config.schema_sources[0].path, Path::new("/cfg/b.json"));
    assert!(config.tiers.contains_key("default"));
    let Some(crate::limits::Limit::Max(submit)) = config.limits.tiers["default"].submit else {
        panic!("no submit rate")
    };
    assert_eq!((submit.burst, submit.per_minute), (3, 7));
}

#[test]
fn the_kubelets_service_links_start_with_one_warning_naming_them() {
    let mut vars = with_secret();
    vars.extend(env(&[
        ("FALGATE_SERVICE_HOST", "10.0.0.1"),
        ("FALGATE_SERVICE_PORT", "80"),
        ("FALGATE_SERVICE_PORT_HTTP", "80"),
        ("FALGATE_PORT", "tcp://10.0.0.1:80"),
        ("FALGATE_PORT_80_TCP", "tcp://10.0.0.1:80"),
        ("FALGATE_PORT_80_TCP_PROTO", "tcp"),
        ("FALGATE_PORT_80_TCP_PORT", "80"),
        ("FALGATE_PORT_80_TCP_ADDR", "10.0.0.1"),
        ("FALGATE_BIN", "/usr/bin/falgate"),
    ]));
    let config = Config::from_toml(include_str!("../../config/falgate.toml"), &vars).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("FALGATE_PORT_80_TCP_ADDR, FALGATE_PORT_80_TCP_PORT"));
    assert!(!config.warnings[0].contains("10.0.0.1"));
    assert!(
        Config::from_toml(include_str!("../../config/falgate.toml"), &with_secret())
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn a_config_that_starts_but_surprises_is_warned_about() {
    // Tiers without rates of their own inherit the default tier's: no warning for them.
    let text = "[limits]\ndefault_tier = \"free\"\n[limits.tiers.free]\nsubmit = { burst = 1, per_minute = 1 }\n\
                [limits.tiers.pro]\ndaily_requests = 5\n[limits.tiers.staff]\n\
                [endpoints.\"a/b\"]\nschema = \"b.json\"\n[tiers.pro]\n";
    let warnings = Config::from_toml(text, &with_secret()).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("does not list `default`") && warnings[0].contains("403"),
        "{warnings:?}"
    );
    // A default tier without rates is warned about, unless one is written "unlimited".
    let bare = "[limits]\ndefault_tier = \"free\"\n[limits.tiers.free]\nmax_inflight_jobs = 2\n";
    let warnings = Config::from_toml(bare, &with_secret()).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("`limits.tiers.free` (the default tier"),
        "{warnings:?}"
    );
    let meant = format!("{bare}submit = \"unlimited\"\n");
    assert!(Config::from_toml(&meant, &with_secret()).unwrap().warnings.is_empty());
    let listed = "[endpoints.\"a/b\"]\nschema = \"b.json\"\n[tiers.default]\n";
    assert!(Config::from_toml(listed, &with_secret()).unwrap().warnings.is_empty());
}

/// Issue 20: fal's key travels with every upstream call, so `[upstream]` URLs must be https;
/// plain http is accepted only on loopback (the emulator, `falgate dev`).
#[test]
fn upstream_urls_must_be_https_unless_loopback() {
    for (key, var) in [
        ("upstream.queue_url", "FALGATE_UPSTREAM__QUEUE_URL"),
        ("upstream.run_url", "FALGATE_UPSTREAM__RUN_URL"),
        ("upstream.storage_url", "FALGATE_UPSTREAM__STORAGE_URL"),
    ] {
        for url in [
            "http://queue.fal.run",
            "http://10.0.0.7:8000",
            "http://localhost.example.com",
        ] {
            let vars = env(&[("FALGATE_AUTH__HS256_SECRET", SECRET), (var, url)]);
            let err = Config::from_toml("", &vars).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("must be https"), "{url}: {err}");
        }
        for url in [
            "http://127.0.0.1:1",
            "http://127.8.0.1:1",
            "http://[::1]:1",
            "http://localhost:1",
            "https://x.example",
        ] {
            let vars = env(&[("FALGATE_AUTH__HS256_SECRET", SECRET), (var, url)]);
            assert!(Config::from_toml("", &vars).is_ok(), "{url}");
        }
    }
    // falgate's own address carries no fal key: an http `public_url` (TLS ends in front) stays
    // allowed off loopback.
    let vars = env(&[("FALGATE_AUTH__HS256_SECRET", SECRET)]);
    let config = Config::from_toml("public_url = \"http://falgate.internal:8080\"\n", &vars);
    assert!(config.is_ok(), "{:?}", config.err());
}

/// Issue 20: behind a TLS-terminating proxy (an https `public_url`) with the failed-auth rate on
/// and no trusted proxy, every client shares the proxy's bucket: a warning says so.
#[test]
fn a_failed_auth_rate_behind_an_untrusted_proxy_is_warned_about() {
    let vars = env(&[("FALGATE_AUTH__HS256_SECRET", SECRET)]);
    let rate = "[limits.unauthenticated_ip_rate]\nburst = 20\nper_minute = 60\n";
    let public = "public_url = \"https://gate.example.com\"\n";
    let behind = format!("{public}[limits]\n{rate}");
    let warned = |toml: &str| {
        Config::from_toml(toml, &vars)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("limits.trusted_proxies"))
    };
    assert!(warned(&behind));
    assert!(!warned(&format!(
        "{public}[limits]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{rate}"
    )));
    assert!(!warned(&format!("[limits]\n{rate}")), "no proxy in sight");
    assert!(!warned(public), "no failed-auth rate");
}

#[test]
fn the_webhook_receiver_is_configured_from_the_file_and_the_environment() {
    let text = include_str!("../../config/falgate.toml");
    let shipped = Config::from_toml(text, &with_secret()).unwrap();
    assert_eq!(
        shipped.webhooks,
        crate::webhooks::WebhooksConfig::off(),
        "off by default"
    );
    let vars = env(&[
        ("FALGATE_AUTH__HS256_SECRET", SECRET),
        ("FALGATE_WEBHOOKS__RECEIVE", "true"),
        ("FALGATE_PUBLIC_URL", "https://gate.example.com/base"),
        ("FALGATE_WEBHOOKS__FAL_USER_ID", "u-123"),
        ("FALGATE_WEBHOOKS__MAX_SKEW_SECONDS", "60"),
    ]);
    let config = Config::from_toml(text, &vars).unwrap();
    let hook = config.webhooks.hook_url.as_ref().map(|hook| hook.as_str().to_owned());
    assert_eq!(hook.as_deref(), Some("https://gate.example.com/base/api/fal/webhook"));
    assert_eq!(config.webhooks.fal_user_id.as_deref(), Some("u-123"));
    assert_eq!(config.webhooks.max_skew, Duration::from_secs(60));
    let without_url = env(&[
        ("FALGATE_AUTH__HS256_SECRET", SECRET),
        ("FALGATE_WEBHOOKS__RECEIVE", "true"),
    ]);
    let err = Config::from_toml(text, &without_url).unwrap_err();
    assert!(err.0.contains("public_url"), "{err}");
    let err = Config::from_toml("[webhooks]\nrecieve = true\n", &with_secret()).unwrap_err();
    assert!(err.0.contains("recieve"), "{err}");
}
