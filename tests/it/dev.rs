//! `falgate dev` run as a user would: what it prints, what it honours, what it leaves behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::support::{COMMAND_DEADLINE, SECRET};

const VPG: &str = "fal-ai/video-prompt-generator";

/// A running `falgate dev`, killed when dropped.
struct Dev {
    child: tokio::process::Child,
    url: String,
    /// Every stdout line up to the end of the guide.
    guide: Vec<String>,
    /// Every stderr line so far (the log).
    log: Arc<Mutex<Vec<String>>>,
}

fn dev_command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_falgate"));
    command
        .arg("dev")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", std::env::temp_dir())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

impl Dev {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = dev_command(args, env)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let logged = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                logged.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut guide = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let end = line.contains("console.log");
                guide.push(line);
                if end {
                    return;
                }
            }
            panic!("falgate dev exited before its guide ended: {guide:#?}");
        })
        .await
        .expect("the guide is printed");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = guide
            .iter()
            .find_map(|l| l.strip_prefix("falgate listening on "))
            .expect("listening line")
            .to_owned();
        Self { child, url, guide, log }
    }

    /// The first log line `matches` accepts, waiting for it (bounded).
    async fn logged(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such log line in {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of `export NAME=value` in the guide.
    fn export(&self, name: &str) -> String {
        let prefix = format!("export {name}=");
        self.guide
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {:#?}", self.guide))
            .to_owned()
    }

    fn text(&self) -> String {
        self.guide.join("\n")
    }

    fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        crate::support::client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
    }

    fn temp_folder(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("falgate-dev-{}", self.child.id().unwrap()))
    }

    async fn stop(self) -> Option<i32> {
        self.stop_with_log().await.0
    }

    /// Stops with SIGTERM; the exit code and every log line.
    async fn stop_with_log(mut self) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("falgate dev exits")
            .unwrap()
            .code();
        // The log is complete once stderr closes; wait for that, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.log) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = self.log.lock().unwrap().clone();
        (code, log)
    }
}

async fn preflight(url: &str, origin: &str) -> Option<String> {
    let answer = crate::support::client()
        .request(reqwest::Method::OPTIONS, format!("{url}/api/fal/proxy"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-fal-target-url",
        )
        .send()
        .await
        .unwrap();
    answer
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn dev_prints_two_users_a_real_request_and_the_playground_and_removes_its_temp_folder() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    let text = dev.text();
    let (token, token2, secret) = (
        dev.export("TOKEN"),
        dev.export("TOKEN2"),
        dev.export("FALGATE_AUTH__HS256_SECRET"),
    );
    // The printed secret signs the printed tokens, and the tokens are two users.
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), secret.clone())]);
    let auth = falgate::config::Config::from_toml("", &env).unwrap().auth;
    let authenticator = falgate::auth::Authenticator::new(&auth).unwrap();
    let first = authenticator.authenticate(&token).await.unwrap();
    let second = authenticator.authenticate(&token2).await.unwrap();
    assert_eq!((&*first.subject, &*second.subject), ("dev-user", "dev-user-2"));
    // The examples name a real request, in quoted URLs; it is the first user's alone.
    let status_line = text
        .lines()
        .find(|l| l.contains("/status?logs=1"))
        .expect("a status example");
    let queue = format!("'{}/api/fal/queue/{VPG}/requests/", dev.url);
    let id = status_line
        .split(&queue)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no quoted URL in {status_line}"));
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{status_line}");
    assert!(status_line.contains("/status?logs=1'"), "{status_line}");
    assert!(!text.contains("REQUEST_ID"), "{text}");
    let path = format!("/api/fal/queue/{VPG}/requests/{id}/status");
    assert_eq!(dev.get(&path, &token).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        dev.get(&path, &token2).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // The JS says how to run it.
    assert!(text.contains(".mjs"), "{text}");
    // The playground is served and its URL printed with the token in the fragment.
    assert!(text.contains(&format!("{}/#token={token}", dev.url)), "{text}");
    let page = crate::support::get(format!("{}/", dev.url)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    // The usual local dev servers may call it from the browser; others may not.
    assert!(text.contains("http://localhost:5173"), "{text}");
    assert_eq!(
        preflight(&dev.url, "http://localhost:5173").await.as_deref(),
        Some("http://localhost:5173")
    );
    assert_eq!(
        preflight(&dev.url, "http://127.0.0.1:3000").await.as_deref(),
        Some("http://127.0.0.1:3000")
    );
    assert_eq!(preflight(&dev.url, "https://evil.example").await, None);
    let folder = dev.temp_folder();
    assert!(folder.join("schemas").is_dir(), "{}", folder.display());
    assert_eq!(dev.stop().await, Some(0));
    assert!(!folder.exists(), "{} was left behind", folder.display());
}

#[tokio::test]
async fn dev_honours_the_environment_and_its_flags() {
    let dev = Dev::start(
        &["--cors-origin", "http://app.test:8000"],
        &[
            ("FALGATE_LISTEN", "127.0.0.1:0"),
            ("FALGATE_AUTH__HS256_SECRET", SECRET),
            ("FALGATE_REQUEST__MAX_BODY_BYTES", "100"),
        ],
    )
    .await;
    // A secret dev did not generate is never printed.
    assert!(!dev.text().contains(SECRET), "{}", dev.text());
    assert!(
        !dev.text().contains("export FALGATE_AUTH__HS256_SECRET"),
        "{}",
        dev.text()
    );
    // A token minted elsewhere with the same secret works.
    let token = falgate::auth::mint_hs256(SECRET.as_bytes(), "someone", None, Duration::from_secs(60)).unwrap();
    let big = json!({ "input_concept": "x".repeat(200) });
    let refused = crate::support::client()
        .post(format!("{}/api/fal/queue/{VPG}", dev.url))
        .bearer_auth(&token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        preflight(&dev.url, "http://app.test:8000").await.as_deref(),
        Some("http://app.test:8000")
    );
    assert_eq!(preflight(&dev.url, "http://localhost:5173").await, None);
    assert!(dev.text().contains("http://app.test:8000"));

    let flagged = Dev::start(
        &["--listen", "127.0.0.1:0", "--secret", &"s".repeat(40)],
        &[("FALGATE_AUTH__HS256_SECRET", SECRET)],
    )
    .await;
    assert_eq!(flagged.export("FALGATE_AUTH__HS256_SECRET"), "s".repeat(40));
}

#[tokio::test]
async fn dev_reports_a_config_that_cannot_start_once_and_prints_nothing_else() {
    let dir = std::env::temp_dir().join(format!("falgate-dev-bad-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.json"),
        r#"{"type": "object", "properties": {"a": {"type": "strnig"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("falgate.toml"), "[endpoints.\"a/b\"]\nschema = \"bad.json\"\n").unwrap();
    let config = dir.join("falgate.toml");
    let mut child = dev_command(&["--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()], &[])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let refused = async {
        out.read_to_string(&mut stdout).await.unwrap();
        err.read_to_string(&mut stderr).await.unwrap();
        child.wait().await.unwrap().code()
    };
    let code = tokio::time::timeout(COMMAND_DEADLINE, refused)
        .await
        .expect("falgate dev exits on a bad schema");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(stdout, "", "printed before failing");
    assert_eq!(stderr.matches("/properties/a").count(), 1, "{stderr}");
    assert!(stderr.contains("bad.json"), "{stderr}");

    // A bad variable is reported the same way.
    let output = dev_command(&["--listen", "127.0.0.1:0"], &[("FALGATE_UPSTREAM__QUEUE_URI", "x")])
        .stderr(std::process::Stdio::piped())
        .output();
    let output = tokio::time::timeout(COMMAND_DEADLINE, output)
        .await
        .expect("falgate dev exits on a bad variable")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(stderr.contains("FALGATE_UPSTREAM__QUEUE_URI"), "{stderr}");
}

#[tokio::test]
async fn a_file_uploaded_in_dev_works_as_an_input_under_the_shipped_rules() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    let token = dev.export("TOKEN");
    let client = crate::support::client();
    let initiate: Value = client
        .post(format!("{}/api/fal/proxy", dev.url))
        .bearer_auth(&token)
        .header(
            "x-fal-target-url",
            "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
        )
        .json(&json!({"content_type": "image/png", "file_name": "a.png"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (upload, file) = (
        initiate["upload_url"].as_str().unwrap(),
        initiate["file_url"].as_str().unwrap(),
    );
    assert!(file.starts_with("http://127.0.0.1:"), "{file}");
    let put = client
        .put(upload)
        .header("content-type", "image/png")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let submit = |image_url: String| {
        client
            .post(format!("{}/api/fal/queue/{VPG}", dev.url))
            .bearer_auth(&token)
            .json(&json!({ "input_concept": "a", "image_url": image_url }))
            .send()
    };
    assert_eq!(submit(file.to_owned()).await.unwrap().status(), StatusCode::OK);
    // Only the emulator's CDN is trusted: other local or plain-http URLs are still refused.
    let origin = file.split("/_storage/").next().unwrap();
    for refused in [
        format!("{origin}/elsewhere/a.png"),
        "http://127.0.0.1:1/_storage/files/x/a.png".to_owned(),
    ] {
        let answer = submit(refused.clone()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    }
}

#[tokio::test]
async fn dev_logs_what_serve_would_warn_about() {
    let mut child = dev_command(&["--listen", "127.0.0.1:0"], &[("FALGATE_SERVICE_HOST", "10.0.0.1")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("FALGATE_SERVICE_HOST") {
                return line;
            }
        }
        panic!("stderr closed without the warning");
    })
    .await
    .expect("the ignored variable is named");
    assert!(
        warning.contains("WARN") && warning.contains("ignored environment variables"),
        "{warning}"
    );
    child.kill().await.unwrap();
}

/// Tokens refused for two different reasons: signed with another secret, and naming a key the
/// gate does not hold.
fn refused_tokens() -> [(&'static str, String); 2] {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let other_secret = falgate::auth::mint_hs256(
        b"another-secret-another-secret-another-secret",
        "dev-user",
        None,
        Duration::from_secs(600),
    )
    .unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","kid":"no-such-key"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"dev-user","exp":4102444800}"#);
    let unknown_key = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(b"sig"));
    [("bad signature", other_secret), ("unknown signing key", unknown_key)]
}

/// Issue 26: under `falgate dev` a refused token's 401 says why; the token itself is not echoed.
#[tokio::test]
async fn dev_says_why_a_token_was_refused() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    for (why, token) in refused_tokens() {
        let answer = dev.get("/api/fal/usage", &token).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
        assert!(!message.contains(&token[token.len() - 10..]), "{message}");
    }
}

/// Issue 26: `serve` answers every refused token with one message (the reason is logged only).
#[tokio::test]
async fn serve_answers_every_refused_token_the_same() {
    let gate = crate::support::TestGate::spawn().await;
    let mut messages = Vec::new();
    for (_, token) in refused_tokens() {
        let answer = gate
            .client
            .get(format!("{}/api/fal/usage", gate.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let body = gate.assert_refused(answer, 401, "unauthenticated").await;
        messages.push(body["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(messages, ["the bearer token is not valid"; 2]);
}

/// The shell commands the guide prints, in order: its `export` lines, then every indented line
/// whose program is `curl` or this falgate binary.
fn printed_commands(dev: &Dev) -> (Vec<String>, Vec<String>) {
    let exports = dev.guide.iter().filter(|l| l.starts_with("export ")).cloned().collect();
    let commands = dev
        .guide
        .iter()
        .filter(|l| l.starts_with("  "))
        .filter(|l| {
            let program = shlex::split(l).and_then(|words| words.into_iter().next());
            matches!(program.as_deref(), Some(p) if p == "curl" || p == env!("CARGO_BIN_EXE_falgate"))
        })
        .map(|l| l.trim().to_owned())
        .collect();
    (exports, commands)
}

/// Runs every command the guide prints as a user would paste it: in `sh`, after the guide's
/// exports, from a folder that is not the repository, with nothing in the environment but
/// `PATH` and `env`. Each must succeed and answer what the guide says; the `token` command's
/// token must be one the running gate accepts.
async fn run_printed_commands(dev: &Dev, env: &[(&str, &str)]) {
    let (exports, commands) = printed_commands(dev);
    let tokens = commands.iter().filter(|c| c.contains(" token --sub ")).count();
    let curls = commands.iter().filter(|c| c.starts_with("curl ")).count();
    assert_eq!((tokens, curls), (1, 5), "{commands:#?}\n{}", dev.text());
    let folder = std::env::temp_dir().join(format!("falgate-dev-cmds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&folder).unwrap();
    for command in &commands {
        let script = format!("set -e\n{}\n{command}\n", exports.join("\n"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let output = tokio::process::Command::new("sh")
                .args(["-c", &script])
                .current_dir(&folder)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().copied())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{command}\n{stderr}");
            if command.contains(" token --sub ") {
                let usage = dev.get("/api/fal/usage", &stdout).send().await.unwrap();
                assert_eq!(usage.status(), StatusCode::OK, "{command} printed {stdout}");
                break;
            }
            let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{command}: {stdout}"));
            if command.contains("$TOKEN2") {
                assert_eq!(answer["code"], "request_not_found", "{command}: {stdout}");
                break;
            }
            assert!(answer.get("code").is_none(), "{command}: {stdout}");
            let expected = ["request_id", "status", "prompt"];
            if expected.iter().any(|key| answer.get(key).is_some()) {
                break;
            }
            // The result of a job still running: asked again until it is done.
            assert!(tokio::time::Instant::now() < deadline, "{command}: {stdout}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    std::fs::remove_dir_all(&folder).unwrap();
}

#[tokio::test]
async fn every_command_dev_prints_runs_as_printed_from_any_folder() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    // The binary is named by its own path (nothing called `falgate` need be on PATH).
    let (_, commands) = printed_commands(&dev);
    let token = commands.iter().find(|c| c.contains(" token --sub ")).unwrap();
    assert!(
        token.starts_with(&format!("{} token ", env!("CARGO_BIN_EXE_falgate"))),
        "{token}"
    );
    run_printed_commands(&dev, &[]).await;
}

#[tokio::test]
async fn dev_never_prints_a_secret_from_the_environment_and_its_commands_still_run() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[("FALGATE_AUTH__HS256_SECRET", SECRET)]).await;
    let text = dev.text();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("not printed"), "{text}");
    run_printed_commands(&dev, &[("FALGATE_AUTH__HS256_SECRET", SECRET)]).await;
    assert!(
        !dev.log.lock().unwrap().iter().any(|l| l.contains(SECRET)),
        "the secret is in the log"
    );
}

#[tokio::test]
async fn dev_listens_on_loopback_whatever_the_environment_says_unless_listen_is_given() {
    let dev = Dev::start(
        &[],
        &[("FALGATE_LISTEN", "0.0.0.0:0"), ("FALGATE_ADMIN_LISTEN", "0.0.0.0:0")],
    )
    .await;
    assert!(dev.url.starts_with("http://127.0.0.1:"), "{}", dev.url);
    let admin = dev
        .guide
        .iter()
        .find_map(|l| l.strip_prefix("falgate admin listening on "))
        .unwrap();
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    for name in ["FALGATE_LISTEN", "FALGATE_ADMIN_LISTEN"] {
        let warning = dev.logged(|l| l.contains(&format!("{name} names 0.0.0.0:0"))).await;
        assert!(warning.contains("WARN") && warning.contains("--listen"), "{warning}");
    }
    // Only --listen puts dev on another interface.
    let explicit = Dev::start(&["--listen", "0.0.0.0:0"], &[]).await;
    assert!(explicit.url.starts_with("http://0.0.0.0:"), "{}", explicit.url);
}

#[tokio::test]
async fn a_busy_port_says_how_to_pick_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = dev_command(&["--listen", &addr], &[])
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        stderr.contains(&addr)
            && stderr.contains("in use")
            && stderr.contains("--listen")
            && stderr.contains("FALGATE_LISTEN"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unmatched_path_is_logged_cut_to_a_bound() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    let long = format!("/no/such/route/{}", "x".repeat(1000));
    for path in ["/api/fal/typo", long.as_str()] {
        let answer = reqwest::get(format!("{}{path}?secret=1", dev.url)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(answer.headers()["x-falgate-error"], "route_not_found");
    }
    // fal (the emulator) saw only the request dev submitted at startup.
    let emulator = dev
        .text()
        .split("fal is emulated at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    let seen: Vec<Value> = reqwest::get(format!("{emulator}/_emulator/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = seen.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, [format!("/{VPG}")], "{seen:#?}");
    let typo = dev.logged(|l| l.contains("no route serves this path")).await;
    assert!(typo.contains("path=/api/fal/typo"), "{typo}");
    assert!(typo.contains("request_id="), "{typo}");
    let cut = dev.logged(|l| l.contains("path=/no/such/route/")).await;
    assert!(cut.contains(&format!("/no/such/route/{}…", "x".repeat(185))), "{cut}");
    assert!(!cut.contains(&"x".repeat(300)), "{cut}");
    assert!(!cut.contains("secret=1"), "{cut}");
}

#[tokio::test]
async fn the_playground_names_its_icon_so_the_browser_asks_for_no_favicon_ico() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    let page = reqwest::get(format!("{}/", dev.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let icon = page
        .lines()
        .find(|l| l.contains(r#"<link rel="icon""#))
        .unwrap_or_else(|| panic!("no icon link in {page}"));
    let href = icon
        .split(r#"href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no href in {icon}"));
    // From this origin, which the page's CSP allows (`img-src 'self'`), and served.
    assert!(href.starts_with('/'), "{icon}");
    let answer = reqwest::get(format!("{}{href}", dev.url)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "{href}");
    assert_eq!(answer.headers()["content-type"], "image/svg+xml");
    assert!(answer.text().await.unwrap().starts_with("<svg"));
}

#[tokio::test]
async fn a_clean_stop_ends_the_log_with_a_final_line() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    let (code, log) = dev.stop_with_log().await;
    assert_eq!(code, Some(0));
    let last = log.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("INFO") && last.contains("stopped cleanly") && last.contains("drain_ms="),
        "{log:#?}"
    );
}

#[tokio::test]
async fn with_a_config_file_the_printed_token_command_names_it_from_any_folder() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0", "--config", "config/falgate.toml"], &[]).await;
    let (_, commands) = printed_commands(&dev);
    let token = commands.iter().find(|c| c.contains(" token --sub ")).unwrap();
    let absolute = std::path::absolute("config/falgate.toml").unwrap();
    assert!(token.ends_with(&format!(" --config {}", absolute.display())), "{token}");
    run_printed_commands(&dev, &[]).await;
}

#[tokio::test]
async fn dev_receives_the_emulators_webhooks() {
    let dev = Dev::start(&["--listen", "127.0.0.1:0"], &[]).await;
    // The receiver is on (an unsigned delivery is refused as such, not as an unknown route).
    let unsigned = crate::support::client()
        .post(format!("{}/api/fal/webhook", dev.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unsigned.headers()["x-falgate-error"], "malformed_request");
    assert_eq!(dev.stop().await, Some(0));
}
