//! The binary's commands: check-config and token, run as a user would.

use std::process::Command;

use crate::support::SECRET;

fn falgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_falgate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn check_config_accepts_the_shipped_default_with_a_secret() {
    let output = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn check_config_exits_64_naming_the_bad_key() {
    let path = std::env::temp_dir().join(format!("falgate-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[upstream]\nqueue_ur = \"https://x\"\n").unwrap();
    let output = falgate()
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("queue_ur"));
}

#[test]
fn serve_without_fal_credentials_refuses_to_start() {
    let output = falgate()
        .args(["serve", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("FAL_KEY"));
}

#[tokio::test]
async fn minted_token_verifies_against_the_configured_secret() {
    let output = falgate()
        .args([
            "token",
            "--sub",
            "user-7",
            "--tier",
            "pro",
            "--ttl",
            "5m",
            "--config",
            "config/falgate.toml",
        ])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let env = std::collections::HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    let auth = falgate::config::Config::from_toml("", &env).unwrap().auth;
    let caller = falgate::auth::Authenticator::new(&auth)
        .unwrap()
        .authenticate(token.trim())
        .await
        .unwrap();
    assert_eq!((caller.subject.as_str(), caller.tier.as_str()), ("user-7", "pro"));
}

#[test]
fn token_without_an_hs256_secret_exits_64() {
    let output = falgate()
        .args(["token", "--sub", "u", "--config", "config/falgate.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn check_config_names_the_schema_file_and_pointer_of_a_bad_schema() {
    let dir = std::env::temp_dir().join(format!("falgate-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.json"),
        r#"{"type": "object", "properties": {"a": {"type": "strnig"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("falgate.toml"), "[endpoints.\"a/b\"]\nschema = \"bad.json\"\n").unwrap();
    let output = falgate()
        .args(["check-config", "--config", dir.join("falgate.toml").to_str().unwrap()])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("bad.json") && stderr.contains("/properties/a"),
        "{stderr}"
    );
}
