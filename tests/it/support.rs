//! `TestGate`: falgate and the fal emulator on `127.0.0.1:0`, a client, a token minter, and the
//! emulator's record of what fal saw.

use std::collections::HashMap;
use std::time::Duration;

use falgate::config::{Config, FalCredentials};
use falgate::emulator::{Emulator, EmulatorConfig, Fault, FaultAction, Op, RecordedRequest};
use tokio::net::TcpListener;

pub(crate) const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub(crate) const FAL_KEY: &str = "fk-canary-7c1e0b9d";
pub(crate) const VPG: &str = "fal-ai/video-prompt-generator";

/// The config every test gate starts from; builders add to it.
const BASE_CONFIG: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
connect_timeout_ms = 500
first_byte_timeout_ms = 1500
idle_timeout_ms = 1500
[auth]
leeway_seconds = 0
[request]
max_body_bytes = 4096
[storage]
uploads = "allow"
[endpoints."fal-ai/video-prompt-generator"]
sync_run = true
schema = "config/schemas/video-prompt-generator.json"
[endpoints."fal-ai/echo"]
sync_run = false
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
"#;

pub(crate) struct TestGate {
    pub(crate) url: String,
    /// The admin listener (`/metrics`).
    pub(crate) admin_url: String,
    pub(crate) emulator: Emulator,
    /// The emulator's base URL (fal's queue host).
    pub(crate) fal_url: String,
    pub(crate) client: reqwest::Client,
    /// The gate's drain state (a test may abandon waits as the drain timeout would).
    pub(crate) lifecycle: std::sync::Arc<falgate::lifecycle::Lifecycle>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
pub(crate) struct Builder {
    queue_url: Option<String>,
    /// Another gate's fal: two gates on one emulator are two replicas of one deployment.
    fal: Option<(Emulator, String)>,
    extra_config: String,
    env: Vec<(String, String)>,
    /// The emulator's (queue_ms, progress_ms) when not the quick default.
    job_ms: Option<(u64, u64)>,
    /// The clock of the gate's expiring stores, when a test moves time itself.
    clock: Option<falgate::clock::Clock>,
}

impl Builder {
    /// Points the queue host somewhere else (e.g. a closed port).
    pub(crate) fn queue_url(mut self, url: &str) -> Self {
        self.queue_url = Some(url.to_owned());
        self
    }

    /// Uses `other`'s fal emulator instead of a new one.
    pub(crate) fn share_fal(mut self, other: &TestGate) -> Self {
        self.fal = Some((other.emulator.clone(), other.fal_url.clone()));
        self
    }

    /// Appends TOML tables (`[tiers.free]`, `[auth.issuers.x]`, `[cors]`...) to the base config.
    pub(crate) fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self
    }

    /// Jobs stay queued `queue_ms`, then run `progress_ms` (status streams stay open as long).
    pub(crate) fn job_ms(mut self, queue_ms: u64, progress_ms: u64) -> Self {
        self.job_ms = Some((queue_ms, progress_ms));
        self
    }

    /// Runs the gate's expiring stores (token cache, ownership, limits, idempotency) on
    /// `manual`, so a test advances time instead of sleeping.
    pub(crate) fn clock(mut self, manual: &falgate::clock::ManualClock) -> Self {
        self.clock = Some(manual.clock());
        self
    }

    /// Adds an environment override.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) async fn spawn(self) -> TestGate {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (emu_stop, emu_stopped) = tokio::sync::oneshot::channel::<()>();
        let (emulator, emu) = match self.fal {
            Some(shared) => shared,
            None => {
                let (queue_ms, progress_ms) = self.job_ms.unwrap_or((150, 300));
                let emulator = Emulator::new(EmulatorConfig {
                    queue_ms,
                    progress_ms,
                    log_lines: 2,
                    stream_interval_ms: 50,
                });
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(falgate::emulator::serve(listener, emulator.clone(), async move {
                    emu_stopped.await.ok();
                }));
                (emulator, url)
            }
        };
        let vars: HashMap<String, String> = [
            ("FALGATE_AUTH__HS256_SECRET", SECRET.to_owned()),
            (
                "FALGATE_UPSTREAM__QUEUE_URL",
                self.queue_url.unwrap_or_else(|| emu.clone()),
            ),
            ("FALGATE_UPSTREAM__RUN_URL", format!("{emu}/fal.run")),
            ("FALGATE_UPSTREAM__STORAGE_URL", format!("{emu}/rest.fal.ai")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.env)
        .collect();
        let config = Config::from_toml(&format!("{BASE_CONFIG}{}", self.extra_config), &vars).unwrap();
        let public = TcpListener::bind(config.listen).await.unwrap();
        let admin = TcpListener::bind(config.admin_listen).await.unwrap();
        let url = format!("http://{}", public.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let credentials = FalCredentials::new(FAL_KEY.to_owned());
        let app = falgate::app::build_with_clock(config, &credentials, self.clock.unwrap_or_default()).unwrap();
        let lifecycle = app.lifecycle.clone();
        tokio::spawn(falgate::app::serve(public, admin, app, async move {
            stopped.await.ok();
            emu_stop.send(()).ok();
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        TestGate {
            url,
            admin_url,
            emulator,
            fal_url: emu,
            client,
            lifecycle,
            _stop: stop,
        }
    }
}

impl TestGate {
    pub(crate) async fn spawn() -> Self {
        Builder::default().spawn().await
    }

    pub(crate) fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn token(&self, sub: &str) -> String {
        falgate::auth::mint_hs256(SECRET.as_bytes(), sub, None, Duration::from_secs(600)).unwrap()
    }

    /// A token for `sub` in `tier`.
    pub(crate) fn tier_token(&self, sub: &str, tier: &str) -> String {
        falgate::auth::mint_hs256(SECRET.as_bytes(), sub, Some(tier), Duration::from_secs(600)).unwrap()
    }

    /// A request to the gate carrying a valid token for `alice`.
    pub(crate) fn as_alice(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token("alice"))
    }

    /// GET `path` as alice.
    pub(crate) async fn get_as_alice(&self, path: &str) -> reqwest::Response {
        self.as_alice(reqwest::Method::GET, path).send().await.unwrap()
    }

    /// POST `body` as JSON to `path` as alice.
    pub(crate) async fn post_as_alice(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.as_alice(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POST `body` as JSON through the proxy route to `target` (`x-fal-target-url`) as alice.
    pub(crate) async fn proxy_post_as_alice(&self, target: &str, body: &serde_json::Value) -> reqwest::Response {
        self.as_alice(reqwest::Method::POST, "/api/fal/proxy")
            .header("x-fal-target-url", target)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submits `input` to the video prompt generator through the REST route, returning the id.
    pub(crate) async fn submit(&self, sub: &str, input: serde_json::Value) -> String {
        let response = self
            .client
            .post(format!("{}/api/fal/queue/{VPG}", self.url))
            .bearer_auth(self.token(sub))
            .json(&input)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["request_id"].as_str().unwrap().to_owned()
    }

    /// What fal saw.
    pub(crate) fn fal_saw(&self) -> Vec<RecordedRequest> {
        self.emulator.requests()
    }

    pub(crate) fn fault(&self, op: Op, action: FaultAction) {
        self.emulator.add_fault(Fault {
            op: Some(op),
            path_contains: None,
            action,
            times: None,
        });
    }

    /// Asserts a refusal: status, contract code, JSON body with request id, error header.
    pub(crate) async fn assert_refused(
        &self,
        response: reqwest::Response,
        status: u16,
        code: &str,
    ) -> serde_json::Value {
        assert_eq!(response.status(), status, "status for {code}");
        assert_eq!(response.headers()["x-falgate-error"], code);
        assert_eq!(response.headers()["content-type"], "application/json");
        let request_id = response.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert_eq!(body["request_id"], request_id.as_str());
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        body
    }

    /// Asserts that fal saw nothing and falgate still answers.
    pub(crate) async fn assert_nothing_reached_fal_and_still_serving(&self) {
        assert!(self.fal_saw().is_empty(), "fal saw {:?}", self.fal_saw());
        let health = self.client.get(format!("{}/healthz", self.url)).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
}

/// A real `falgate serve` child process on the shipped config and `fal`; killed when dropped.
pub(crate) struct Process {
    pub(crate) url: String,
    pub(crate) child: tokio::process::Child,
}

impl Process {
    /// Starts `falgate serve` with the shipped config, `fal` as every fal host, and `env`.
    pub(crate) async fn serve(fal: &str, env: &[(&str, &str)]) -> Self {
        Self::serve_with_stderr(fal, env, std::process::Stdio::null()).await
    }

    /// [`Process::serve`], with the log lines (stderr) going to `stderr` (`Stdio::piped()` to
    /// read them from `child.stderr`).
    pub(crate) async fn serve_with_stderr(fal: &str, env: &[(&str, &str)], stderr: std::process::Stdio) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_falgate"))
            .args(["serve", "--config", "config/falgate.toml"])
            .env_clear()
            .env("FALGATE_LISTEN", "127.0.0.1:0")
            .env("FALGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("FALGATE_UPSTREAM__QUEUE_URL", fal)
            .env("FALGATE_UPSTREAM__RUN_URL", format!("{fal}/fal.run"))
            .env("FALGATE_AUTH__HS256_SECRET", SECRET)
            .env("FAL_KEY", FAL_KEY)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("falgate listening on ") {
                // Keep reading, so the process never writes into a closed pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Self {
                    url: url.to_owned(),
                    child,
                };
            }
        }
        panic!("falgate exited before listening");
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process runs").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit code.
    pub(crate) async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the process exits")
            .unwrap()
            .code()
    }
}

/// Polls status as alice until COMPLETED (bounded).
pub(crate) async fn wait_completed(gate: &TestGate, id: &str) {
    wait_completed_as(gate, "alice", id).await;
}

/// Polls status as `sub` until COMPLETED (bounded).
pub(crate) async fn wait_completed_as(gate: &TestGate, sub: &str, id: &str) {
    for _ in 0..100 {
        let status: serde_json::Value = gate
            .client
            .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", gate.url))
            .bearer_auth(gate.token(sub))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "COMPLETED" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} never completed");
}
