//! SIGHUP reloads a running `falgate serve`: the real binary, a config file rewritten between
//! calls, the signal sent with `kill -HUP`, the outcome read from its log lines and `/metrics`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::support::{wait_listening, FAL_KEY, SECRET, VPG};

const ECHO: &str = "fal-ai/echo";

/// The config file each test starts from (and rewrites): one endpoint, a submit burst of 3 that
/// refills far slower than a test runs.
fn config(extra: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
[endpoints."{VPG}"]
schema = "{root}/config/schemas/video-prompt-generator.json"
[limits]
default_tier = "free"
[limits.tiers.free]
submit = {{ burst = 3, per_minute = 1 }}
{extra}"#
    )
}

const ECHO_ENDPOINT: &str = r#"[endpoints."fal-ai/echo"]
schema = "ROOT/tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
"#;

fn echo_endpoint() -> String {
    ECHO_ENDPOINT.replace("ROOT", env!("CARGO_MANIFEST_DIR"))
}

/// A `falgate serve` child on a config file of its own; killed when dropped.
struct Served {
    url: String,
    admin: String,
    file: PathBuf,
    child: Child,
    /// Every stderr line so far.
    log: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
    token: String,
}

impl Served {
    async fn start(text: &str) -> Self {
        let fal = emulator().await;
        let file = std::env::temp_dir().join(format!("falgate-reload-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&file, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_falgate"))
            .args(["serve", "--config", file.to_str().unwrap()])
            .env_clear()
            .env("FALGATE_UPSTREAM__QUEUE_URL", &fal)
            .env("FALGATE_UPSTREAM__RUN_URL", format!("{fal}/fal.run"))
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        // Bounded, failing with the log so far; stdout is drained from here on.
        let said = log.clone();
        let listening = wait_listening(&mut child, move || Some(said.lock().unwrap().join("\n"))).await;
        let token = falgate::auth::mint_hs256(SECRET.as_bytes(), "alice", None, Duration::from_secs(600)).unwrap();
        Self {
            url: listening.url,
            admin: listening.admin_url,
            file,
            child,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            token,
        }
    }

    /// Rewrites the config file, sends SIGHUP and waits for the log line that ends the reload
    /// (`config reloaded` or `config reload failed`); returns it.
    async fn reload(&self, text: &str) -> String {
        std::fs::write(&self.file, text).unwrap();
        let seen = self.log.lock().unwrap().len();
        let pid = self.child.id().expect("falgate is running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP failed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log.lock().unwrap()[seen..]
                .iter()
                .find(|line| line.contains("config reload"))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reload line after SIGHUP; log: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn submit(&self, endpoint: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/fal/queue/{endpoint}", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"input_concept": "a lighthouse"}))
            .send()
            .await
            .unwrap()
    }

    async fn metric(&self, series: &str) -> Option<String> {
        let text = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|line| line.starts_with(series))
            .map(|line| line[series.len()..].trim().to_owned())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        std::fs::remove_file(&self.file).ok();
    }
}

/// A fal emulator whose jobs run for a few seconds (a stream stays open across a reload).
async fn emulator() -> String {
    let emulator = falgate::emulator::Emulator::new(falgate::emulator::EmulatorConfig {
        queue_ms: 100,
        progress_ms: 2500,
        log_lines: 2,
        stream_interval_ms: 50,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(falgate::emulator::serve(listener, emulator, std::future::pending()));
    url
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn sighup_adds_an_endpoint_while_spent_rate_ownership_and_open_streams_survive() {
    let gate = Served::start(&config("")).await;
    let first = gate.submit(VPG).await;
    assert_eq!(first.status(), 200);
    let id = first.json::<serde_json::Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(gate.submit(VPG).await.status(), 200);
    assert_eq!(
        code(gate.submit(ECHO).await).await,
        (403, "endpoint_not_allowed".into())
    );
    let stream = gate
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status/stream", gate.url))
        .bearer_auth(&gate.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut stream = stream.bytes_stream();
    let opened = stream.next().await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&opened).contains("COMPLETED"));

    // A new endpoint, and a rate changed elsewhere (another tier).
    let line = gate
        .reload(&config(&format!(
            "[limits.tiers.pro]\nsubmit = {{ burst = 50, per_minute = 60 }}\n{}",
            echo_endpoint()
        )))
        .await;
    assert!(line.contains("config reloaded") && !line.contains("restart"), "{line}");

    // The new endpoint serves; the burst of 3 already had 2 spent: one more, then 429.
    assert_eq!(gate.submit(ECHO).await.status(), 200);
    assert_eq!(code(gate.submit(VPG).await).await, (429, "rate_limited".into()));
    // The request submitted before the reload is still the caller's own.
    let status = gate
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", gate.url))
        .bearer_auth(&gate.token)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    // The stream opened before the reload runs to its end.
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.expect("the stream broke off")));
    }
    assert!(rest.contains("COMPLETED"), "{rest}");
    assert_eq!(
        gate.metric("falgate_config_reloads_total{result=\"ok\"}")
            .await
            .as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn sighup_lowers_a_limit_against_what_was_spent() {
    let gate = Served::start(&config("")).await;
    assert_eq!(gate.submit(VPG).await.status(), 200);
    // Appended inside `[limits.tiers.free]`: one request spent today, two allowed now.
    let line = gate.reload(&config("daily_requests = 2\n")).await;
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(gate.submit(VPG).await.status(), 200);
    assert_eq!(code(gate.submit(VPG).await).await, (403, "quota_exceeded".into()));
}

#[tokio::test]
async fn a_broken_config_keeps_the_running_one_and_logs_why() {
    let gate = Served::start(&config("")).await;
    let file = gate.file.display().to_string();
    let broken = [
        // Not TOML: named by its file.
        ("listen = [".to_owned(), file.as_str()),
        // An unknown table.
        (config("[limitz]\nx = 1\n"), "limitz"),
        // A schema file that is not there.
        (
            config("[endpoints.\"fal-ai/echo\"]\nschema = \"/no/such/schema.json\"\n"),
            "/no/such/schema.json",
        ),
    ];
    for (text, named) in &broken {
        let line = gate.reload(text).await;
        assert!(
            line.contains("config reload failed") && line.contains(named),
            "{named}: {line}"
        );
        assert_eq!(gate.submit(VPG).await.status(), 200, "the running config still serves");
    }
    // The endpoint of the refused config was never added.
    assert_eq!(
        code(gate.submit(ECHO).await).await,
        (403, "endpoint_not_allowed".into())
    );
    assert_eq!(
        gate.metric("falgate_config_reloads_total{result=\"error\"}")
            .await
            .as_deref(),
        Some("3")
    );
}

#[tokio::test]
async fn a_restart_only_change_is_warned_about_and_keeps_its_running_value() {
    let gate = Served::start(&config("")).await;
    let moved = config("")
        .replace("workers = 1", "workers = 2")
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"127.0.0.1:1\"");
    let line = gate.reload(&moved).await;
    assert!(line.contains("config reloaded") && line.contains("restart"), "{line}");
    assert!(line.contains("workers") && line.contains("admin_listen"), "{line}");
    assert_eq!(gate.submit(VPG).await.status(), 200);
    // The admin listener did not move: it still answers where it was.
    assert_eq!(
        gate.metric("falgate_config_reloads_total{result=\"ok\"}")
            .await
            .as_deref(),
        Some("1")
    );
}

/// A JWKS endpoint serving the `rsa1` fixture key.
async fn jwks_server() -> String {
    let jwk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/rsa1.jwk.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let body = json!({ "keys": [jwk] });
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || std::future::ready(axum::Json(body.clone()))),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_new_issuers_jwks_is_loaded_before_it_serves_and_an_unreachable_one_is_refused() {
    let gate = Served::start(&config("")).await;
    // An issuer whose JWKS cannot be fetched: the reload fails, naming it.
    let unreachable =
        "[auth.issuers.idp]\nissuer = \"https://idp.test\"\njwks_url = \"http://127.0.0.1:9/jwks.json\"\nany_audience = true\n";
    let line = gate.reload(&config(unreachable)).await;
    assert!(
        line.contains("config reload failed") && line.contains("issuer `idp`"),
        "{line}"
    );

    let jwks = jwks_server().await;
    let issuer =
        format!("[auth.issuers.idp]\nissuer = \"https://idp.test\"\njwks_url = \"{jwks}\"\nany_audience = true\n");
    let line = gate.reload(&config(&issuer)).await;
    assert!(line.contains("config reloaded"), "{line}");
    // The first call after the reload already verifies against the new issuer's keys.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa1".into());
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa1.pem")).unwrap();
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "bob", "iss": "https://idp.test", "exp": now + 300, "iat": now}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(token)
        .json(&json!({"input_concept": "a lighthouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ready = gate.client.get(format!("{}/readyz", gate.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn the_reconciler_runs_on_after_a_reload_and_frees_a_job_that_ended_unpolled() {
    let text = |extra: &str| {
        config(&format!("max_inflight_jobs = 1\n{extra}")).replace(
            "[limits]\n",
            "[limits]\nreconcile_interval_ms = 20\nreconcile_idle_ms = 0\n",
        )
    };
    let gate = Served::start(&text("")).await;
    assert_eq!(gate.submit(VPG).await.status(), 200);
    let line = gate.reload(&text("daily_requests = 100\n")).await;
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(code(gate.submit(VPG).await).await, (429, "concurrency_limited".into()));
    // The job ends in fal about 2.6 s after its submit; nobody polls it.
    for _ in 0..300 {
        let response = gate.submit(VPG).await;
        if response.status() == 200 {
            return;
        }
        assert_eq!(code(response).await, (429, "concurrency_limited".into()));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the job's slot was never freed after the reload");
}

#[tokio::test]
async fn a_limits_key_naming_no_endpoint_is_refused_on_reload_and_the_running_config_kept() {
    let gate = Served::start(&config("")).await;
    // A typo of the only endpoint: it would price nothing. The reload fails, naming the key.
    let typo = config("[limits.credits.endpoints.\"fal-ai/video-prompt-generater\"]\ncost = 5\n");
    let line = gate.reload(&typo).await;
    assert!(
        line.contains("config reload failed") && line.contains("video-prompt-generater"),
        "{line}"
    );
    // The running config still serves its burst of 3, and its rate still counts.
    for _ in 0..3 {
        assert_eq!(gate.submit(VPG).await.status(), 200);
    }
    assert_eq!(code(gate.submit(VPG).await).await, (429, "rate_limited".into()));
}
