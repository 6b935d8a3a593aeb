//! The command line (`serve | dev | emulator | token | check-config`) and what each runs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::{Config, FalCredentials, ProcessEnv, Sources, DEFAULT_PATH};
use crate::process::{announce, bind, reload_on_hangup, say, DrainClock};
use crate::{app, dev, emulator, telemetry};

/// falgate: the proxy in front of fal.ai.
#[derive(Debug, Parser)]
#[command(name = "falgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the production proxy (the default).
    ///
    /// Listens where the config says (`listen`, `admin_listen`; or FALGATE_LISTEN,
    /// FALGATE_ADMIN_LISTEN) and needs fal credentials (FAL_KEY, FAL_KEY_ID + FAL_KEY_SECRET, or
    /// FAL_KEY_FILE). Every config key can be set from a FALGATE_* variable (README).
    Serve {
        /// The config file [default: FALGATE_CONFIG, else config/falgate.toml in the current folder].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run the proxy, the built-in fal emulator and the playground together, for frontend work:
    /// prints the playground's URL, two users' tokens and the secret.
    Dev {
        /// Public listener for the proxy [default: 127.0.0.1:8080, or FALGATE_LISTEN's port on
        /// loopback: only this flag makes dev listen on another interface].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// A config file to start from instead of the embedded default [default: FALGATE_CONFIG].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The HS256 secret tokens are signed with [default: FALGATE_AUTH__HS256_SECRET, else random].
        /// One from the environment is never printed.
        #[arg(long)]
        secret: Option<String>,
        /// A browser origin allowed to call falgate (repeatable) [default:
        /// FALGATE_CORS__ALLOWED_ORIGINS, else localhost and 127.0.0.1 on ports 5173, 4173, 3000, 4200].
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// How long an emulated job runs (IN_PROGRESS), in milliseconds [default: 700].
        #[arg(long, value_name = "MS")]
        emulator_job_ms: Option<u64>,
    },
    /// Run the fal queue emulator alone.
    Emulator {
        /// Where the emulator listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Mint an HS256 token with the configured secret (local testing).
    Token {
        /// The token's subject: the user (requests, limits and quotas belong to it).
        #[arg(long)]
        sub: String,
        /// The tier claim (`auth.tier_claim`); without it the gate gives `auth.default_tier`.
        #[arg(long)]
        tier: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The config file whose secret signs [default: FALGATE_CONFIG, else
        /// config/falgate.toml, else the built-in default config].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate a config and exit non-zero with a clear message when it is not usable.
    CheckConfig {
        /// The config file [default: FALGATE_CONFIG, else config/falgate.toml in the current folder].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// Why the process exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Configuration or credentials are unusable (exit 64).
    #[error("{0}")]
    Config(String),
    /// Anything else (exit 1).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config).await,
        Command::Dev {
            listen,
            config,
            secret,
            cors_origins,
            emulator_job_ms,
        } => {
            let options = dev::Options {
                listen,
                config,
                secret,
                cors_origins,
                emulator_job_ms,
            };
            dev::run(options, drain_signal()?)
                .await
                .map_err(|failure| match failure {
                    dev::Failure::Config(message) => Failure::Config(message),
                    dev::Failure::Other(err) => Failure::Other(err),
                })
        }
        Command::Emulator { listen } => run_emulator(listen).await,
        Command::Token { sub, tier, ttl, config } => {
            let config = load_for_token(config.as_deref())?;
            let secret = config.auth.default_hs_secret().ok_or_else(|| {
                Failure::Config("`falgate token` needs auth.hs256_secret (FALGATE_AUTH__HS256_SECRET)".into())
            })?;
            token_lifetime(ttl, config.auth.max_lifetime)?;
            let token = crate::auth::mint_hs256(secret.expose_secret().as_bytes(), &sub, tier.as_deref(), ttl)
                .context("cannot sign the token")?;
            println!("{token}");
            Ok(())
        }
        Command::CheckConfig { config } => check_config(config.as_deref()),
    }
}

/// Everything `serve` would refuse before listening, without listening: the config, its
/// schemas and key files, and the fal credentials. Every problem found is listed at once (a
/// config that does not parse hides its schemas and keys, but never the credentials). What
/// starts but may surprise is printed as warnings on stderr and does not fail the check.
fn check_config(path: Option<&Path>) -> Result<(), Failure> {
    let mut problems = Vec::new();
    let mut problem = |failure: Failure| problems.push(failure.to_string());
    let mut store = None;
    match load(path) {
        Ok(config) => {
            if let Err(err) = crate::schema::Schemas::compile(config.schema_sources.clone()) {
                problem(Failure::Config(format!("invalid schema: {err}")));
            }
            if let Err(err) = crate::auth::Authenticator::new(&config.auth) {
                problem(Failure::Config(err.to_string()));
            }
            for warning in &config.warnings {
                eprintln!("falgate: warning: {warning}");
            }
            // The store's mode, so a deployment sees which one one setting picked.
            match config.redis.as_ref().map(crate::redis::RedisConfig::mode) {
                None => store = Some("in process (no [redis]): limits are per replica".to_owned()),
                Some(Ok(mode)) => store = Some(format!("{} ({})", mode.name(), mode.describe())),
                Some(Err(err)) => problem(Failure::Config(format!("[redis]: {err}"))),
            }
        }
        Err(failure) => problem(failure),
    }
    if let Err(message) = FalCredentials::from_sources(&ProcessEnv) {
        problem(Failure::Config(message));
    }
    match problems.as_slice() {
        [] => {
            if let Some(store) = store {
                println!("shared state: {store}");
            }
            println!("configuration is valid");
            Ok(())
        }
        [one] => Err(Failure::Config(one.clone())),
        many => Err(Failure::Config(format!(
            "{} problems:\n{}",
            many.len(),
            many.iter()
                .enumerate()
                .map(|(n, problem)| format!("  {}. {problem}", n + 1))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
    }
}

/// The gate refuses a token whose lifetime (`exp` minus `iat`) exceeds
/// `auth.max_lifetime_seconds`; minting one would only hand out a token that never works.
fn token_lifetime(ttl: Duration, max: Duration) -> Result<(), Failure> {
    if ttl.as_secs() == 0 {
        return Err(Failure::Config("`--ttl` must be at least 1s".into()));
    }
    if ttl.as_secs() > max.as_secs() {
        return Err(Failure::Config(format!(
            "`--ttl` {} is longer than auth.max_lifetime_seconds ({} s, {}): the gate would refuse the token",
            humantime::format_duration(Duration::from_secs(ttl.as_secs())),
            max.as_secs(),
            humantime::format_duration(max),
        )));
    }
    Ok(())
}

fn load(path: Option<&Path>) -> Result<Config, Failure> {
    if path.is_none() && ProcessEnv.var("FALGATE_CONFIG").is_none() && !Path::new(DEFAULT_PATH).exists() {
        let here = std::env::current_dir()
            .map(|dir| format!(" ({})", dir.display()))
            .unwrap_or_default();
        return Err(Failure::Config(format!(
            "no {DEFAULT_PATH} in the current folder{here}: pass --config PATH or set FALGATE_CONFIG"
        )));
    }
    Config::load(path, &ProcessEnv).map_err(|err| Failure::Config(err.to_string()))
}

/// `token` needs only the auth settings: without a config file named or in the current folder it
/// reads the built-in default config (the one `falgate dev` starts from) with the environment's
/// variables, so the command `falgate dev` prints runs from any folder.
fn load_for_token(path: Option<&Path>) -> Result<Config, Failure> {
    if path.is_none() && ProcessEnv.var("FALGATE_CONFIG").is_none() && !Path::new(DEFAULT_PATH).exists() {
        return Config::from_toml(dev::DEFAULT_CONFIG, &ProcessEnv).map_err(|err| Failure::Config(err.to_string()));
    }
    load(path)
}

async fn serve(path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load(path.as_deref())?;
    let credentials = FalCredentials::from_sources(&ProcessEnv).map_err(Failure::Config)?;
    let _log_guard = telemetry::init(config.log_format, &config.telemetry);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let public = bind(config.listen, "FALGATE_LISTEN=ADDR or `listen` in the config").await?;
    let admin = bind(
        config.admin_listen,
        "FALGATE_ADMIN_LISTEN=ADDR or `admin_listen` in the config",
    )
    .await?;
    let app = app::build(config, &credentials).map_err(|err| Failure::Config(err.to_string()))?;
    reload_on_hangup(app.state.clone(), move || {
        Config::load(path.as_deref(), &ProcessEnv).map_err(|err| err.to_string())
    })?;
    let shutdown = drain_signal()?;
    announce("falgate", &public, &admin)?;
    let drain = DrainClock::default();
    app::serve(public, admin, app, drain.start_on(shutdown))
        .await
        .context("server failed")?;
    drain.stopped_cleanly("falgate");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT (the drain begins); a second one ends the process at
/// once, with status 130. Both are caught from this call on, not from the future's first poll:
/// a signal in between (a supervisor stopping a process that just announced itself) would
/// otherwise take the default action and end the process without a drain.
pub(crate) fn drain_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    let mut signals = ShutdownSignals::new()?;
    Ok(async move {
        signals.recv().await;
        tracing::info!("shutdown signal received; a second signal exits at once");
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second shutdown signal: exiting without finishing calls in flight");
            std::process::exit(130);
        });
    })
}

async fn run_emulator(listen: SocketAddr) -> Result<(), Failure> {
    let _log_guard = telemetry::init(crate::config::LogFormat::Text, &crate::config::Telemetry::default());
    let listener = bind(listen, "--listen ADDR").await?;
    let mut signals = ShutdownSignals::new()?;
    say(&format!(
        "falgate emulator listening on http://{}",
        listener.local_addr().context("local address")?
    ));
    let emulator = emulator::Emulator::new(emulator::EmulatorConfig::default());
    emulator::serve(listener, emulator, async move { signals.recv().await })
        .await
        .context("emulator failed")?;
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), caught from creation on.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.ok();
    }
}
