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

/// A change to the parsed config ([`Builder::edit`]).
type ConfigEdit = Box<dyn FnOnce(&mut Config) + Send>;

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
    /// `public_url` is the gate's own address (fal's webhooks reach it there).
    own_public_url: bool,
    /// Changes to the parsed config (settings no file key reaches).
    edit: Option<ConfigEdit>,
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

    /// Sets `public_url` to the gate's own address (as `[webhooks] receive` needs).
    pub(crate) fn own_public_url(mut self) -> Self {
        self.own_public_url = true;
        self
    }

    /// Changes the parsed config before the gate is built.
    pub(crate) fn edit(mut self, edit: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.edit = Some(Box::new(edit));
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
        // Bound before the config is read when the config names the gate's own address.
        let early = match self.own_public_url {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let mut env = self.env;
        if let Some(listener) = &early {
            env.push((
                "FALGATE_PUBLIC_URL".into(),
                format!("http://{}", listener.local_addr().unwrap()),
            ));
        }
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
        .chain(env)
        .collect();
        let mut config = Config::from_toml(&format!("{BASE_CONFIG}{}", self.extra_config), &vars).unwrap();
        if let Some(edit) = self.edit {
            edit(&mut config);
        }
        let public = match early {
            Some(listener) => listener,
            None => TcpListener::bind(config.listen).await.unwrap(),
        };
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

/// How long a started `falgate` may take to say where it listens. Past it the test fails with
/// what the process wrote: a binary stuck at start must not run on to CI's limit.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(30);

/// The longest a `falgate` command run to its end (`check-config`, `token`, a refused start) may
/// take before the test fails (and the process is killed).
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Where a started `falgate` listens, as it printed it on stdout.
pub(crate) struct Listening {
    pub(crate) url: String,
    pub(crate) admin_url: String,
}

/// Reads `child`'s stdout until its two listening lines (`… listening on`, `… admin listening
/// on`), within [`START_DEADLINE`], then keeps draining stdout so the process never writes into
/// a closed pipe. On a timeout or an early exit it fails with the lines read, the exit status
/// and the process's stderr: `said()` when the caller keeps stderr itself, else what the
/// child's stderr pipe holds (read for at most a few seconds; nothing when not piped).
pub(crate) async fn wait_listening(
    child: &mut tokio::process::Child,
    said: impl FnOnce() -> Option<String>,
) -> Listening {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let (mut url, mut admin_url, mut read) = (None, None, Vec::new());
    let wait = async {
        while url.is_none() || admin_url.is_none() {
            let Ok(Some(line)) = lines.next_line().await else {
                return false;
            };
            if let Some(rest) = line.strip_prefix("falgate listening on ") {
                url = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("falgate admin listening on ") {
                admin_url = Some(rest.to_owned());
            }
            read.push(line);
        }
        true
    };
    let why = match tokio::time::timeout(START_DEADLINE, wait).await {
        Ok(true) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Listening {
                url: url.unwrap(),
                admin_url: admin_url.unwrap(),
            };
        }
        Ok(false) => "exited before listening".to_owned(),
        Err(_) => format!("did not listen within {START_DEADLINE:?}"),
    };
    let stderr = match said() {
        Some(text) => text,
        None => match child.stderr.take() {
            Some(mut pipe) => {
                let mut bytes = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(3), pipe.read_to_end(&mut bytes)).await;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => "(not captured)".to_owned(),
        },
    };
    let status = child.try_wait().ok().flatten();
    panic!("falgate {why} (exit: {status:?}); stdout: {read:#?}; stderr:\n{stderr}");
}

/// `std::process::Command::output`, bounded by [`COMMAND_DEADLINE`]: past it the process is
/// killed and the test fails with its stderr.
pub(crate) trait OutputWithin {
    fn output_within(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputWithin for std::process::Command {
    fn output_within(&mut self) -> std::io::Result<std::process::Output> {
        use std::io::Read;
        use std::process::Stdio;
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).ok();
                bytes
            })
        }
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        let deadline = std::time::Instant::now() + COMMAND_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                let said = stderr.join().unwrap_or_default();
                panic!(
                    "{self:?} still running after {COMMAND_DEADLINE:?}; stderr:\n{}",
                    String::from_utf8_lossy(&said)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(std::process::Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

/// The longest one HTTP call of a test to a local server may take, answer included: a server
/// that accepts and never answers fails the test instead of holding it.
pub(crate) const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// A client whose every call is bounded by [`CALL_DEADLINE`] (`reqwest::Client::new()` has no
/// timeout). Not for a test that expects a call to end by itself: that one must bound its wait
/// well below the client's timeout, so the timeout cannot be what ends it.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CALL_DEADLINE).build().unwrap()
}

/// `reqwest::get`, bounded by [`CALL_DEADLINE`].
pub(crate) async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}

/// A real `falgate serve` child process on the shipped config and `fal`; killed when dropped.
pub(crate) struct Process {
    pub(crate) url: String,
    /// The admin listener (`/metrics`).
    pub(crate) admin_url: String,
    pub(crate) child: tokio::process::Child,
}

impl Process {
    /// Starts `falgate serve` with the shipped config, `fal` as every fal host, and `env`. Its
    /// log lines are read and dropped once it listens (shown if it fails to start).
    pub(crate) async fn serve(fal: &str, env: &[(&str, &str)]) -> Self {
        let mut process = Self::serve_with_stderr(fal, env, std::process::Stdio::piped()).await;
        let mut stderr = process.child.stderr.take().unwrap();
        tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
        process
    }

    /// [`Process::serve`], with the log lines (stderr) going to `stderr` (`Stdio::piped()` to
    /// read them from `child.stderr`).
    pub(crate) async fn serve_with_stderr(fal: &str, env: &[(&str, &str)], stderr: std::process::Stdio) -> Self {
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
        let Listening { url, admin_url } = wait_listening(&mut child, || None).await;
        Self { url, admin_url, child }
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
