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
