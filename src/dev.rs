//! `falgate dev`: the gate and the built-in fal emulator in one process, on the embedded default
//! config (or `--config` / `FALGATE_CONFIG`), for frontend work. Needs no `FAL_KEY` and no
//! internet: fal's three hosts point at the emulator.
//!
//! The environment's `FALGATE_*` variables apply as in `serve`; on top of them dev sets what it
//! must (fal's hosts → the emulator, uploads allowed, the playground on) and what its flags
//! say: the listener, the HS256 secret (`--secret`, else `FALGATE_AUTH__HS256_SECRET`, else
//! random) and the browser origins (`--cors-origin`, else `FALGATE_CORS__ALLOWED_ORIGINS`, else
//! the usual local dev servers). Dev listens on loopback only unless `--listen` says otherwise:
//! an image's `FALGATE_LISTEN=0.0.0.0:8080` (or `FALGATE_ADMIN_LISTEN`) gives its port, on
//! 127.0.0.1, and a warning says so. The guide prints a secret only when dev generated it.
//!
//! The emulator's CDN is trusted by every URL rule, so files uploaded in dev work as inputs.
//!
//! The commands the guide prints run as printed: `falgate` is named the way it was started
//! (`cargo run --` under `cargo run`, else the binary's own path, quoted for a shell).
//!
//! Order: everything that can refuse to start (config, schemas, keys, the listeners) is done
//! before the first line is printed, so a bad config prints its cause once and nothing else
//! (exit 64). Then the listeners are announced, one request is submitted through the gate so
//! the printed examples name a real request id, and the guide is printed. The embedded
//! schemas are unpacked into `falgate-dev-<pid>` in the temp folder, removed on exit. SIGHUP
//! reloads the config (same overrides, same secret, so the printed tokens stay valid).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;

use crate::config::{Config, FalCredentials, ProcessEnv, Sources};
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::process::{announce, bind, reload_on_hangup, say, DrainClock};
use crate::{app, telemetry};

mod guide;
mod invocation;

use self::guide::Guide;
use self::invocation::{invocation, quoted};

/// The default config and its schemas, embedded so `falgate dev` works from any directory.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../config/falgate.toml");
const DEFAULT_SCHEMAS: [(&str, &str); 1] = [(
    "schemas/video-prompt-generator.json",
    include_str!("../config/schemas/video-prompt-generator.json"),
)];
/// The key the gate sends to the emulator; no real fal key is involved.
const EMULATOR_KEY: &str = "falgate-dev-emulator-key";
/// How long the printed tokens are valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The subjects of the two printed tokens.
const USER: &str = "dev-user";
const SECOND_USER: &str = "dev-user-2";
/// Browser origins allowed when neither `--cors-origin` nor the environment names any: the
/// default ports of Vite (5173, preview 4173), Next.js / CRA (3000) and Angular (4200).
pub const DEFAULT_DEV_ORIGINS: [&str; 8] = [
    "http://localhost:5173",
    "http://127.0.0.1:5173",
    "http://localhost:4173",
    "http://127.0.0.1:4173",
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:4200",
    "http://127.0.0.1:4200",
];
/// The endpoint the guide's examples use.
const EXAMPLE_ENDPOINT: &str = "fal-ai/video-prompt-generator";
const EXAMPLE_INPUT: &str = r#"{"input_concept":"a lighthouse in a storm"}"#;

/// Why `falgate dev` stopped; `cli` maps it to the exit code (64 for `Config`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The config (file, variables, flags, schemas, keys) cannot start.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `falgate dev`'s command-line options.
#[derive(Debug, Default)]
pub struct Options {
    /// `--listen`; else `FALGATE_LISTEN`; else 127.0.0.1:8080.
    pub listen: Option<SocketAddr>,
    /// `--config`; else `FALGATE_CONFIG`; else the embedded default.
    pub config: Option<PathBuf>,
    /// `--secret`; else `FALGATE_AUTH__HS256_SECRET`; else random.
    pub secret: Option<String>,
    /// `--cors-origin` (repeatable); else `FALGATE_CORS__ALLOWED_ORIGINS`; else [`DEFAULT_DEV_ORIGINS`].
    pub cors_origins: Vec<String>,
    /// `--emulator-job-ms`: how long an emulated job runs.
    pub emulator_job_ms: Option<u64>,
}

/// Runs the dev stack until `shutdown` resolves (Ctrl-C).
pub async fn run(options: Options, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Failure> {
    let env = process_env();
    let emulator_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "").await?;
    let emulator_url = format!("http://{}", emulator_listener.local_addr().context("emulator address")?);
    let mut settings = Settings::resolve(&options, &env, &emulator_url)?;
    // Bound before the config is read: the receiver of the emulator's webhooks is this address.
    let listen: SocketAddr = settings.overrides["FALGATE_LISTEN"]
        .parse()
        .map_err(|_| Failure::Config("FALGATE_LISTEN: expected an address like 127.0.0.1:8080".into()))?;
    let public = bind(
        listen,
        "--listen ADDR, e.g. `--listen 127.0.0.1:8090` (or FALGATE_LISTEN=127.0.0.1:8090)",
    )
    .await?;
    settings.receive_webhooks(&format!("http://{}", public.local_addr().context("local address")?));
    // Dropped on every way out of this function, so the folder never outlives the process.
    let mut _unpacked = None;
    let source = match options
        .config
        .clone()
        .or_else(|| env.get("FALGATE_CONFIG").map(PathBuf::from))
    {
        Some(path) => Source::File(path),
        None => {
            let dir = TempDir::unpack_default_schemas()?;
            let source = Source::Embedded(dir.0.clone());
            _unpacked = Some(dir);
            source
        }
    };
    let trusted = format!("{emulator_url}/_storage/files/");
    let config = source
        .load(&settings.overrides, &trusted)
        .map_err(|err| Failure::Config(format!("{err:#}")))?;
    let admin_listen = config.admin_listen;
    let app = app::build(config, &FalCredentials::new(EMULATOR_KEY.to_owned()))
        .map_err(|err| Failure::Config(err.to_string()))?;
    let admin = bind(admin_listen, "FALGATE_ADMIN_LISTEN=127.0.0.1:PORT").await?;
    let loaded = app.state.load();
    let _log_guard = telemetry::init(loaded.config.log_format, &loaded.config.telemetry);
    // What starts but may surprise, logged as `serve` logs it (e.g. ignored variables).
    for warning in loaded.config.warnings.iter().chain(&settings.notes) {
        tracing::warn!("{warning}");
    }
    drop(loaded);
    let token = mint(&settings.secret, USER)?;
    let second_token = mint(&settings.secret, SECOND_USER)?;
    let overrides = settings.overrides.clone();
    reload_on_hangup(app.state.clone(), move || {
        source.load(&overrides, &trusted).map_err(|err| format!("{err:#}"))
    })?;
    let mut emulator_config = EmulatorConfig::default();
    if let Some(ms) = options.emulator_job_ms {
        emulator_config.progress_ms = ms;
    }
    let emulator = Emulator::new(emulator_config);
    let (stop, stopped) = tokio::sync::watch::channel(());
    let mut emulator_stopped = stopped.clone();
    let emulator_task = tokio::spawn(emulator::serve(emulator_listener, emulator, async move {
        emulator_stopped.changed().await.ok();
    }));
    announce("falgate", &public, &admin)?;
    let gate = format!("http://{}", public.local_addr().context("local address")?);
    let mut token_command = format!("{} token --sub alice --tier default", invocation());
    if let Some(path) = options
        .config
        .as_deref()
        .and_then(|path| std::path::absolute(path).ok())
    {
        token_command = format!("{token_command} --config {}", quoted(&path));
    }
    let guide = Guide {
        gate,
        emulator: emulator_url,
        token,
        second_token,
        secret: settings.secret,
        secret_source: settings.secret_source,
        origins: settings.origins,
        token_command,
    };
    tokio::spawn(async move {
        let request_id = guide.submit_example().await;
        say(&guide.render(request_id.as_deref()));
    });
    let drain = DrainClock::default();
    app::serve(public, admin, app, drain.start_on(shutdown))
        .await
        .context("server failed")?;
    // The emulator stops after the gate drained, so calls in flight can still reach it.
    stop.send(()).ok();
    drop(stopped);
    emulator_task
        .await
        .context("emulator task")?
        .context("emulator failed")?;
    drain.stopped_cleanly("falgate dev");
    Ok(())
}

/// The process's `FALGATE_*` variables (the only ones the config reads, besides `FALGATE_CONFIG`).
fn process_env() -> HashMap<String, String> {
    ProcessEnv.vars_with_prefix("FALGATE_").into_iter().collect()
}

fn mint(secret: &str, sub: &str) -> Result<String, Failure> {
    crate::auth::mint_hs256(secret.as_bytes(), sub, None, TOKEN_TTL)
        .map_err(|err| Failure::Config(format!("cannot sign the dev token: {err}")))
}

/// What dev decided on top of the environment.
struct Settings {
    /// The environment's variables with dev's own over them.
    overrides: HashMap<String, String>,
    secret: String,
    secret_source: SecretSource,
    origins: Vec<String>,
    /// What dev changed in the environment's settings, logged as warnings.
    notes: Vec<String>,
}

impl Settings {
    fn resolve(options: &Options, env: &HashMap<String, String>, emulator_url: &str) -> Result<Self, Failure> {
        let mut overrides = env.clone();
        let (secret, secret_source) = match (&options.secret, env.get("FALGATE_AUTH__HS256_SECRET")) {
            (Some(secret), _) => (secret.clone(), SecretSource::Flag),
            (None, Some(secret)) => (secret.clone(), SecretSource::Environment),
            (None, None) => (hex::encode(rand::rng().random::<[u8; 32]>()), SecretSource::Random),
        };
        let origins = if !options.cors_origins.is_empty() {
            options.cors_origins.clone()
        } else if let Some(list) = env.get("FALGATE_CORS__ALLOWED_ORIGINS") {
            let value: toml::Value = format!("v = {list}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut table| table.remove("v"))
                .ok_or_else(|| {
                    Failure::Config("environment variable FALGATE_CORS__ALLOWED_ORIGINS: expected a TOML array".into())
                })?;
            value
                .as_array()
                .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        } else {
            DEFAULT_DEV_ORIGINS.iter().map(|&o| o.to_owned()).collect()
        };
        let mut notes = Vec::new();
        let listen = match options.listen {
            Some(listen) => listen.to_string(),
            None => loopback("FALGATE_LISTEN", env, 8080, &mut notes)?,
        };
        let admin_listen = loopback("FALGATE_ADMIN_LISTEN", env, 0, &mut notes)?;
        let origins_toml = toml::Value::Array(origins.iter().map(|o| toml::Value::String(o.clone())).collect());
        for (key, value) in [
            ("FALGATE_LISTEN", listen),
            ("FALGATE_ADMIN_LISTEN", admin_listen),
            ("FALGATE_UPSTREAM__QUEUE_URL", emulator_url.to_owned()),
            ("FALGATE_UPSTREAM__RUN_URL", format!("{emulator_url}/fal.run")),
            ("FALGATE_UPSTREAM__STORAGE_URL", format!("{emulator_url}/rest.fal.ai")),
            ("FALGATE_AUTH__HS256_SECRET", secret.clone()),
            ("FALGATE_STORAGE__UPLOADS", "allow".to_owned()),
            ("FALGATE_CORS__ALLOWED_ORIGINS", origins_toml.to_string()),
            ("FALGATE_PLAYGROUND__ENABLED", "true".to_owned()),
        ] {
            overrides.insert(key.to_owned(), value);
        }
        Ok(Self {
            overrides,
            secret,
            secret_source,
            origins,
            notes,
        })
    }
}

impl Settings {
    /// Turns falgate's webhook receiver on (`[webhooks] receive`), fal's deliveries (the
    /// emulator's) reaching the gate at `gate` unless `FALGATE_PUBLIC_URL` says otherwise.
    fn receive_webhooks(&mut self, gate: &str) {
        self.overrides
            .entry("FALGATE_PUBLIC_URL".to_owned())
            .or_insert_with(|| gate.to_owned());
        self.overrides
            .insert("FALGATE_WEBHOOKS__RECEIVE".to_owned(), "true".to_owned());
    }
}

/// A listener address from the environment's `name`, on loopback: dev serves one developer, and
/// an image's `0.0.0.0` must not put a gate with printed tokens on the network. A non-loopback
/// address keeps its port on 127.0.0.1, noted; `--listen` is the way to listen elsewhere.
fn loopback(name: &str, env: &HashMap<String, String>, port: u16, notes: &mut Vec<String>) -> Result<String, Failure> {
    let Some(raw) = env.get(name) else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)).to_string());
    };
    let addr: SocketAddr = raw.parse().map_err(|_| {
        Failure::Config(format!(
            "environment variable {name}: expected an address like 127.0.0.1:8080"
        ))
    })?;
    if addr.ip().is_loopback() {
        return Ok(addr.to_string());
    }
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    notes.push(format!(
        "{name} names {addr}, not a loopback address: falgate dev listens on {local} instead (only --listen makes dev listen on another interface)"
    ));
    Ok(local.to_string())
}

/// Where the HS256 secret came from; the guide prints it only when the developer gave it on the
/// command line or dev generated it.
#[derive(Clone, Copy, Debug)]
enum SecretSource {
    Flag,
    Environment,
    Random,
}

/// Where the dev config comes from, read again on reload.
enum Source {
    /// `--config`: the file, its folder as the base of schema paths.
    File(PathBuf),
    /// The embedded default, its schemas unpacked into this folder.
    Embedded(PathBuf),
}

impl Source {
    fn load(&self, overrides: &HashMap<String, String>, trusted_url_prefix: &str) -> anyhow::Result<Config> {
        let (text, base) = match self {
            Self::File(path) => (
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            Self::Embedded(base) => (DEFAULT_CONFIG.to_owned(), base.clone()),
        };
        let mut config = Config::from_toml_in(&text, overrides, &base).map_err(|err| match self {
            Self::File(path) => anyhow::anyhow!("{}: {err}", path.display()),
            Self::Embedded(_) => anyhow::anyhow!("{err}"),
        })?;
        // No balancer in front of a dev stack: Ctrl-C need not wait for one to notice.
        config.drain.delay = Duration::ZERO;
        // A refused token's 401 says why (issue 26); `serve` keeps one uniform message.
        config.auth.explain_refusals = true;
        for source in &mut config.schema_sources {
            source.trusted_url_prefixes = vec![trusted_url_prefix.to_owned()];
        }
        Ok(config)
    }
}

/// The folder the embedded schemas are unpacked into; removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn unpack_default_schemas() -> Result<Self, Failure> {
        let dir = Self(std::env::temp_dir().join(format!("falgate-dev-{}", std::process::id())));
        for (name, text) in DEFAULT_SCHEMAS {
            let path = dir.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap_or(&dir.0))
                .and_then(|()| std::fs::write(&path, text))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests;
