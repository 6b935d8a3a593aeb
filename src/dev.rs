//! `falgate dev`: the gate and the built-in fal emulator in one process, on the embedded default
//! config (or `--config`), with a random HS256 secret and a ready token. Needs no `FAL_KEY` and
//! no internet: fal's three hosts point at the emulator. SIGHUP reloads `--config` (same
//! overrides, same secret, so the printed token stays valid).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;

use crate::config::{Config, FalCredentials};
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::process::{announce, bind, reload_on_hangup, say};
use crate::{app, telemetry};

/// The default config and its schemas, embedded so `falgate dev` works from any directory.
const DEFAULT_CONFIG: &str = include_str!("../config/falgate.toml");
const DEFAULT_SCHEMAS: [(&str, &str); 1] = [(
    "schemas/video-prompt-generator.json",
    include_str!("../config/schemas/video-prompt-generator.json"),
)];
/// The key the gate sends to the emulator; no real fal key is involved.
const EMULATOR_KEY: &str = "falgate-dev-emulator-key";
/// How long the printed token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs the dev stack until `shutdown` resolves (Ctrl-C).
pub async fn run(
    listen: SocketAddr,
    config_path: Option<&Path>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let emulator_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let emulator_url = format!("http://{}", emulator_listener.local_addr()?);
    let secret = hex::encode(rand::rng().random::<[u8; 32]>());
    let overrides = dev_overrides(listen, &emulator_url, &secret);
    let source = match config_path {
        Some(path) => Source::File(path.to_path_buf()),
        None => Source::Embedded(unpack_default_schemas()?),
    };
    let config = source.load(&overrides)?;
    let _log_guard = telemetry::init(config.log_format, &config.telemetry);
    let public = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let token = crate::auth::mint_hs256(secret.as_bytes(), "dev-user", None, TOKEN_TTL)?;
    announce("falgate", &public, &admin)?;
    print_guide(&format!("http://{}", public.local_addr()?), &emulator_url, &token);
    let app = app::build(config, &FalCredentials::new(EMULATOR_KEY.to_owned()))?;
    reload_on_hangup(app.state.clone(), move || {
        source.load(&overrides).map_err(|err| format!("{err:#}"))
    })?;
    let emulator = Emulator::new(EmulatorConfig::default());
    let (stop, stopped) = tokio::sync::watch::channel(());
    let mut emulator_stopped = stopped.clone();
    let emulator_task = tokio::spawn(emulator::serve(emulator_listener, emulator, async move {
        emulator_stopped.changed().await.ok();
    }));
    app::serve(public, admin, app, shutdown).await?;
    // The emulator stops after the gate drained, so calls in flight can still reach it.
    stop.send(()).ok();
    drop(stopped);
    emulator_task.await??;
    Ok(())
}

/// Where the dev config comes from, read again on reload.
enum Source {
    /// `--config`: the file, its folder as the base of schema paths.
    File(PathBuf),
    /// The embedded default, its schemas unpacked into this folder.
    Embedded(PathBuf),
}

impl Source {
    fn load(&self, overrides: &HashMap<String, String>) -> anyhow::Result<Config> {
        let (text, base) = match self {
            Self::File(path) => (
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            Self::Embedded(base) => (DEFAULT_CONFIG.to_owned(), base.clone()),
        };
        let mut config = Config::from_toml_in(&text, overrides, &base)?;
        // No balancer in front of a dev stack: Ctrl-C need not wait for one to notice.
        config.drain.delay = Duration::ZERO;
        Ok(config)
    }
}

/// Writes the embedded schemas to a private temp folder and returns it as the config's base.
fn unpack_default_schemas() -> anyhow::Result<std::path::PathBuf> {
    let base = std::env::temp_dir().join(format!("falgate-dev-{}", std::process::id()));
    for (name, text) in DEFAULT_SCHEMAS {
        let path = base.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&base))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(base)
}

fn dev_overrides(listen: SocketAddr, emulator_url: &str, secret: &str) -> HashMap<String, String> {
    [
        ("FALGATE_LISTEN", listen.to_string()),
        ("FALGATE_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ("FALGATE_UPSTREAM__QUEUE_URL", emulator_url.to_owned()),
        ("FALGATE_UPSTREAM__RUN_URL", format!("{emulator_url}/fal.run")),
        ("FALGATE_UPSTREAM__STORAGE_URL", format!("{emulator_url}/rest.fal.ai")),
        ("FALGATE_AUTH__HS256_SECRET", secret.to_owned()),
        ("FALGATE_STORAGE__UPLOADS", "allow".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn print_guide(gate: &str, emulator: &str, token: &str) {
    say(&format!(
        r#"
falgate dev is ready: fal is emulated at {emulator} (no FAL_KEY, no internet needed).
Token for sub "dev-user", valid 24 h:

export TOKEN={token}

Submit, poll, read the result:
  curl -s -X POST {gate}/api/fal/queue/fal-ai/video-prompt-generator -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{{"input_concept":"a lighthouse in a storm"}}'
  curl -s {gate}/api/fal/queue/fal-ai/video-prompt-generator/requests/REQUEST_ID/status?logs=1 -H "authorization: Bearer $TOKEN"
  curl -s {gate}/api/fal/queue/fal-ai/video-prompt-generator/requests/REQUEST_ID -H "authorization: Bearer $TOKEN"
Synchronous run:
  curl -s -X POST {gate}/api/fal/run/fal-ai/video-prompt-generator -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{{"input_concept":"a lighthouse in a storm"}}'

@fal-ai/client (browser or Node):
  import {{ fal }} from "@fal-ai/client";
  fal.config({{
    proxyUrl: {{ url: "{gate}/api/fal/proxy", when: "always" }},
    requestMiddleware: async (req) => ({{ ...req, headers: {{ ...req.headers, authorization: "Bearer {token}" }} }}),
  }});
  const {{ data }} = await fal.subscribe("fal-ai/video-prompt-generator", {{ input: {{ input_concept: "a lighthouse in a storm" }}, logs: true }});
  console.log(data.prompt);
"#
    ));
}
