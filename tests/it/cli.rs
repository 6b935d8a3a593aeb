//! The binary's commands: check-config and token, run as a user would.

use std::process::Command;

use crate::support::{wait_listening, OutputWithin, FAL_KEY, SECRET};

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
        .env("FAL_KEY", FAL_KEY)
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    // The shared state's mode is named (issue 25).
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("shared state: in process"), "{stdout}");
}

#[test]
fn check_config_names_the_redis_mode_and_refuses_two() {
    let run = |vars: &[(&str, &str)]| {
        let mut command = falgate();
        command
            .args(["check-config", "--config", "config/falgate.toml"])
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY);
        for (name, value) in vars {
            command.env(name, value);
        }
        command.output_within().unwrap()
    };
    let cluster = run(&[("FALGATE_REDIS__CLUSTER", r#"["rediss://u:secret-pw@c1:6379"]"#)]);
    let stdout = String::from_utf8_lossy(&cluster.stdout);
    assert!(cluster.status.success(), "{}", String::from_utf8_lossy(&cluster.stderr));
    assert!(stdout.contains("shared state: cluster"), "{stdout}");
    assert!(!stdout.contains("secret-pw"), "{stdout}");
    let both = run(&[
        ("FALGATE_REDIS__URL", "redis://a:6379"),
        ("FALGATE_REDIS__SENTINELS", r#"["redis://s:26379"]"#),
        ("FALGATE_REDIS__SENTINEL_MASTER", "m"),
    ]);
    assert_eq!(both.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&both.stderr).contains("only one of"));
}

#[test]
fn check_config_exits_64_naming_the_bad_key() {
    let path = std::env::temp_dir().join(format!("falgate-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[upstream]\nqueue_ur = \"https://x\"\n").unwrap();
    let output = falgate()
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output_within()
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
        .output_within()
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
        .output_within()
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
    assert_eq!((&*caller.subject, &*caller.tier), ("user-7", "pro"));
}

#[test]
fn token_without_an_hs256_secret_exits_64() {
    let output = falgate()
        .args(["token", "--sub", "u", "--config", "config/falgate.toml"])
        .output_within()
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
        .output_within()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("bad.json") && stderr.contains("/properties/a"),
        "{stderr}"
    );
}

/// A temp folder holding `falgate.toml` with `text`; removed when dropped.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("falgate-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("falgate.toml"), text).unwrap();
        Self(dir)
    }

    fn path(&self) -> String {
        self.0.join("falgate.toml").to_str().unwrap().to_owned()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_double_underscore_variable_naming_no_key_exits_64_naming_the_variable() {
    for command in ["check-config", "serve"] {
        let output = falgate()
            .args([command, "--config", "config/falgate.toml"])
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY)
            .env("FALGATE_LISTEN", "127.0.0.1:0")
            .env("FALGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("FALGATE_UPSTREAM__QUEUE_URI", "http://127.0.0.1:1")
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("environment variable FALGATE_UPSTREAM__QUEUE_URI"),
            "{stderr}"
        );
        // Not blamed on the file.
        assert!(!stderr.contains("falgate.toml"), "{stderr}");
    }
}

/// What the kubelet injects into every pod of the namespace for the Service `falgate` of
/// `deploy/kubernetes` (port `http` 80) and a Service `falgate-redis`, and a script's own.
const KUBELET: [(&str, &str); 17] = [
    ("FALGATE_SERVICE_HOST", "10.96.0.17"),
    ("FALGATE_SERVICE_PORT", "80"),
    ("FALGATE_SERVICE_PORT_HTTP", "80"),
    ("FALGATE_PORT", "tcp://10.96.0.17:80"),
    ("FALGATE_PORT_80_TCP", "tcp://10.96.0.17:80"),
    ("FALGATE_PORT_80_TCP_PROTO", "tcp"),
    ("FALGATE_PORT_80_TCP_PORT", "80"),
    ("FALGATE_PORT_80_TCP_ADDR", "10.96.0.17"),
    ("FALGATE_REDIS_SERVICE_HOST", "10.96.0.18"),
    ("FALGATE_REDIS_SERVICE_PORT", "6379"),
    ("FALGATE_REDIS_SERVICE_PORT_REDIS", "6379"),
    ("FALGATE_REDIS_PORT", "tcp://10.96.0.18:6379"),
    ("FALGATE_REDIS_PORT_6379_TCP", "tcp://10.96.0.18:6379"),
    ("FALGATE_REDIS_PORT_6379_TCP_PROTO", "tcp"),
    ("FALGATE_REDIS_PORT_6379_TCP_PORT", "6379"),
    ("FALGATE_REDIS_PORT_6379_TCP_ADDR", "10.96.0.18"),
    ("FALGATE_BIN", "/usr/local/bin/falgate"),
];

#[tokio::test]
async fn the_kubelets_service_links_are_ignored_with_one_warning_and_the_server_starts() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_falgate"))
        .args(["serve", "--config", "config/falgate.toml"])
        .env_clear()
        .envs(KUBELET)
        .env("FALGATE_LISTEN", "127.0.0.1:0")
        .env("FALGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = wait_listening(&mut child, || None).await.url;
    let health = crate::support::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let line = stderr
                .next_line()
                .await
                .unwrap()
                .expect("stderr closed before the warning");
            if line.contains("FALGATE_") {
                break line;
            }
        }
    })
    .await
    .expect("no warning about the ignored variables");
    assert!(
        warning.contains("WARN") && warning.contains("ignored environment variables"),
        "{warning}"
    );
    for (name, value) in KUBELET {
        assert!(warning.contains(name), "{name} not in {warning}");
        // Values are never logged (the ports also appear inside the names, so check the others).
        assert!(
            value.len() < 5 || !warning.contains(value),
            "the value of {name} is in {warning}"
        );
    }
    child.kill().await.unwrap();
    // That one line named them all: nothing else on stderr mentions them.
    while let Ok(Ok(Some(line))) = tokio::time::timeout(std::time::Duration::from_secs(5), stderr.next_line()).await {
        assert!(!line.contains("FALGATE_"), "{line}");
    }
}

#[test]
fn check_config_refuses_what_serve_would_refuse_fal_credentials_and_key_files() {
    let no_credentials = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output_within()
        .unwrap();
    assert_eq!(no_credentials.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_credentials.stderr).contains("no fal credentials"));
    let two = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .env("FAL_KEY_FILE", "/nonexistent/fal.key")
        .output_within()
        .unwrap();
    assert_eq!(two.status.code(), Some(64));
    let unreadable = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY_FILE", "/nonexistent/fal.key")
        .output_within()
        .unwrap();
    assert_eq!(unreadable.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unreadable.stderr).contains("/nonexistent/fal.key"));
    let config = TempConfig::new("[auth]\nkey_files = [\"keys/idp.pem\"]\nalgorithms = [\"RS256\"]\n");
    let missing_key = falgate()
        .args(["check-config", "--config", &config.path()])
        .env("FAL_KEY", FAL_KEY)
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing_key.stderr);
    assert_eq!(missing_key.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("keys/idp.pem"), "{stderr}");
}

#[test]
fn check_config_warns_about_a_config_that_starts_but_surprises() {
    let config = TempConfig::new(
        "[limits]\ndefault_tier = \"free\"\n[limits.tiers.free]\n\
         [endpoints.\"fal-ai/video-prompt-generator\"]\nschema = \"vpg.json\"\n[tiers.free]\n",
    );
    std::fs::copy("config/schemas/video-prompt-generator.json", config.0.join("vpg.json")).unwrap();
    let output = falgate()
        .args(["check-config", "--config", &config.path()])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warnings: Vec<_> = stderr.lines().filter(|l| l.starts_with("falgate: warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[0].contains("`limits.tiers.free`"), "{stderr}");
    assert!(warnings[1].contains("does not list `default`"), "{stderr}");
}

#[test]
fn token_refuses_a_lifetime_the_config_would_refuse() {
    let token = |ttl: &str| {
        falgate()
            .args(["token", "--sub", "u", "--ttl", ttl, "--config", "config/falgate.toml"])
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FALGATE_AUTH__MAX_LIFETIME_SECONDS", "3600")
            .output_within()
            .unwrap()
    };
    let refused = token("61m");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("auth.max_lifetime_seconds") && stderr.contains("3600"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());
    assert!(token("1h").status.success());
    assert_eq!(token("0s").status.code(), Some(64));
}

/// Issue 20: an `http://` fal URL would carry FAL_KEY in clear text: `serve` and `check-config`
/// both exit 64 naming the key and saying https; loopback (the emulator) stays allowed.
#[test]
fn serve_and_check_config_refuse_an_http_fal_url_off_loopback() {
    for command in ["check-config", "serve"] {
        let output = falgate()
            .args([command, "--config", "config/falgate.toml"])
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY)
            .env("FALGATE_LISTEN", "127.0.0.1:0")
            .env("FALGATE_UPSTREAM__RUN_URL", "http://fal.run")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("upstream.run_url") && stderr.contains("must be https"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(FAL_KEY), "{stderr}");
    }
    let loopback = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .env("FALGATE_UPSTREAM__RUN_URL", "http://127.0.0.1:9/fal.run")
        .output()
        .unwrap();
    assert!(
        loopback.status.success(),
        "{}",
        String::from_utf8_lossy(&loopback.stderr)
    );
}

#[test]
fn check_config_lists_every_problem_at_once() {
    // No secret and no fal credentials: both named in one run.
    let output = falgate()
        .args(["check-config", "--config", "config/falgate.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(
        stderr.contains("FALGATE_AUTH__HS256_SECRET") && stderr.contains("no fal credentials"),
        "{stderr}"
    );
    // A bad schema, a missing key file and no credentials: three.
    let config = TempConfig::new(
        "[auth]\nkey_files = [\"keys/idp.pem\"]\nalgorithms = [\"RS256\"]\n\
         [endpoints.\"a/b\"]\nschema = \"bad.json\"\n",
    );
    std::fs::write(
        config.0.join("bad.json"),
        r#"{"type": "object", "properties": {"a": {"type": "strnig"}}}"#,
    )
    .unwrap();
    let output = falgate()
        .args(["check-config", "--config", &config.path()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    for each in ["/properties/a", "keys/idp.pem", "no fal credentials"] {
        assert!(stderr.contains(each), "{each} not in {stderr}");
    }
    assert!(output.stdout.is_empty());
}

#[test]
fn serve_outside_the_repository_says_how_to_name_the_config() {
    let folder = TempConfig::new("");
    for command in ["serve", "check-config"] {
        let output = falgate()
            .arg(command)
            .current_dir(&folder.0)
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("config/falgate.toml") && stderr.contains("pass --config PATH or set FALGATE_CONFIG"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn every_commands_help_describes_its_flags() {
    for (command, flags) in [
        ("serve", &["--config"][..]),
        ("check-config", &["--config"]),
        ("token", &["--sub", "--tier", "--ttl", "--config"]),
        ("emulator", &["--listen"]),
        (
            "dev",
            &["--listen", "--config", "--secret", "--cors-origin", "--emulator-job-ms"],
        ),
    ] {
        let output = falgate().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command}");
        for flag in flags {
            // Each flag is followed by a description, on its line or the next ones (long help).
            let lines: Vec<&str> = help.lines().map(str::trim).collect();
            let at = lines
                .iter()
                .position(|l| l.starts_with(flag))
                .unwrap_or_else(|| panic!("{command}: no {flag} in {help}"));
            let mut said = lines[at]
                .split_once("  ")
                .map(|(_, rest)| rest.trim())
                .unwrap_or_default()
                .to_owned();
            for next in &lines[at + 1..] {
                if next.is_empty() || next.starts_with('-') {
                    break;
                }
                said.push_str(next);
            }
            assert!(said.len() > 10, "{command} {flag} is not described: {help}");
        }
    }
}

#[test]
fn token_from_any_folder_uses_the_built_in_default_config() {
    let folder = TempConfig::new("");
    let output = falgate()
        .args(["token", "--sub", "alice"])
        .current_dir(&folder.0)
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim().split('.').count(), 3);
}

#[tokio::test]
async fn a_clean_shutdown_of_serve_logs_a_final_line_with_the_drain_figures() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_falgate"))
        .args(["serve", "--config", "config/falgate.toml"])
        .env_clear()
        .env("FALGATE_LISTEN", "127.0.0.1:0")
        .env("FALGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("FALGATE_DRAIN__DELAY_MS", "0")
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line.starts_with("falgate admin listening on ") {
                return;
            }
        }
        panic!("falgate exited before listening");
    })
    .await
    .expect("falgate listens");
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("falgate exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("INFO") && last.contains("falgate stopped cleanly") && last.contains("drain_ms="),
        "{stderr}"
    );
}

#[test]
fn serve_on_a_busy_port_says_which_setting_chooses_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = falgate()
        .args(["serve", "--config", "config/falgate.toml"])
        .env("FALGATE_LISTEN", &addr)
        .env("FALGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use") && stderr.contains("FALGATE_LISTEN"),
        "{stderr}"
    );
}
