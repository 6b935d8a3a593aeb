//! Configuration: a TOML file plus `FALGATE_<SECTION>__<KEY>` overrides (`env`), parsed and
//! validated once at start into typed values (durations, URLs, enums). The request path only
//! reads it. An error names its key and its source: the file (by path) or the environment
//! variable that set the key; what starts but may surprise comes back as `warnings`.

mod access;
mod auth;
mod endpoints;
mod env;
mod file;
mod keys;
mod secrets;
mod serving;
mod telemetry;
mod upstream;
mod warnings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use crate::auth::{Auth, IssuerConfig, DEFAULT_ISSUER};
pub use crate::cors::Cors;
pub use crate::fal::Priority;
pub use crate::ownership::OwnershipConfig;
pub use crate::policy::{EndpointPolicy, FalHeaderRules, Forward, StoreIo, Tier};
pub use crate::upstream::{EgressProxy, Settings as UpstreamSettings};
pub use access::Operation;
pub use env::{ProcessEnv, Sources};
pub use file::Toggle;
pub use secrets::FalCredentials;
pub use serving::Drain;

use self::endpoints::{endpoints, schema_sources};
use self::serving::{connections, socket, workers};
use self::upstream::upstream;

// The log settings are telemetry's own; re-exported here, where the file's sections are.
pub use crate::telemetry::{LogFormat, Telemetry};

use crate::fal::EndpointId;
use crate::limits::LimitsConfig;
use crate::redis::RedisConfig;
use crate::schema::{JsonLimits, SchemaSource};
use crate::server::Connections;

/// The config file used when neither `--config` nor `FALGATE_CONFIG` names one.
pub const DEFAULT_PATH: &str = "config/falgate.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where callers reach falgate (scheme, host, optional path prefix): the base of the REST
    /// links falgate writes into fal's answers (`routes::links`). None = derived per request.
    pub public_url: Option<Url>,
    /// Server threads (each a single-threaded runtime owning its connections and its own fal
    /// connection pool; see `server`); resolved at load, so never 0.
    pub workers: usize,
    pub upstream: UpstreamSettings,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, all calls together.
    pub body_budget_bytes: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Request bodies one caller may be sending at once (per replica).
    pub body_reads_per_caller: u32,
    /// Largest single request header value, and all request headers together.
    pub max_header_bytes: usize,
    pub max_headers_total_bytes: usize,
    /// Bounds on a JSON body beyond its size (keys per object, values, string length).
    pub json: JsonLimits,
    /// Timeouts and caps of client connections on the public listener.
    pub connections: Connections,
    /// What SIGTERM / SIGINT do before exit.
    pub drain: Drain,
    pub storage_uploads: Toggle,
    pub log_format: LogFormat,
    /// The key of the principal hash in log lines (`log.principal_hash_key`); None = derived
    /// from the fal key ([`FalCredentials::derived_key`]).
    pub principal_hash_key: Option<secrecy::SecretString>,
    pub endpoints: BTreeMap<EndpointId, EndpointPolicy>,
    /// Named tiers; empty = one implicit tier that may do everything `endpoints` allows.
    pub tiers: BTreeMap<String, Tier>,
    /// Hosts `fal_webhook` URLs may point at; empty = webhooks refused.
    pub webhook_hosts: std::collections::BTreeSet<String>,
    /// The receiver of fal's signed deliveries (`[webhooks]` but `allowed_hosts`).
    pub webhooks: crate::webhooks::WebhooksConfig,
    pub cors: Cors,
    pub ownership: OwnershipConfig,
    /// The per-caller event stream (`GET /api/fal/events`).
    pub events: crate::events::EventsConfig,
    /// Every endpoint's schema settings, compiled at startup (`schema::Schemas::compile`).
    pub schema_sources: Vec<SchemaSource>,
    /// Rates, quotas, concurrency and idempotency (unlimited without a `[limits]` section).
    pub limits: LimitsConfig,
    /// Shared state across replicas; None = in process.
    pub redis: Option<RedisConfig>,
    /// What starts but may surprise (ignored environment variables, a tier without rates, a
    /// tier list without the default tier): printed by `check-config`, logged by `serve`.
    pub warnings: Vec<String>,
    /// OpenTelemetry trace export (off unless an OTLP endpoint is configured).
    pub telemetry: Telemetry,
    /// `[playground] enabled`: serve the playground page at `/` (its API needs a caller's token).
    pub playground_enabled: bool,
}

/// A configuration that cannot be used, with a message naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Where a configuration error comes from: the file (`load` prefixes its path) or an
/// environment variable (the message already names it).
#[derive(Debug)]
enum Source {
    File,
    Env,
}

impl Config {
    /// The policy's settings, from `[endpoints]`, `[tiers]`, `[webhooks]` and `[storage]`.
    pub fn policy(&self) -> crate::policy::Settings<'_> {
        crate::policy::Settings {
            endpoints: &self.endpoints,
            tiers: &self.tiers,
            webhook_hosts: &self.webhook_hosts,
            uploads: self.storage_uploads == Toggle::Allow,
        }
    }

    /// Reads the file named by `--config`, `FALGATE_CONFIG` or the default, then applies env.
    pub fn load(path: Option<&Path>, sources: &dyn Sources) -> Result<Self, ConfigError> {
        let path = resolve_path(path, sources);
        let text = std::fs::read_to_string(&path)
            .map_err(|err| ConfigError(format!("cannot read {}: {err}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, sources)
            .map(|config| config.rebased(&base))
            .map_err(|(source, ConfigError(msg))| match source {
                Source::File => ConfigError(format!("{}: {msg}", path.display())),
                Source::Env => ConfigError(msg),
            })
    }

    /// Like [`Config::from_toml`], with schema and key-file paths resolved against `base` (the
    /// config's folder).
    pub fn from_toml_in(text: &str, sources: &dyn Sources, base: &Path) -> Result<Self, ConfigError> {
        Ok(Self::from_toml(text, sources)?.rebased(base))
    }

    /// Parses TOML text plus env overrides into a validated config. Pure: no file or network.
    pub fn from_toml(text: &str, sources: &dyn Sources) -> Result<Self, ConfigError> {
        Self::parse(text, sources).map_err(|(_, err)| err)
    }

    fn rebased(mut self, base: &Path) -> Self {
        for source in &mut self.schema_sources {
            source.path = base.join(&source.path);
        }
        for issuer in &mut self.auth.issuers {
            for file in &mut issuer.key_files {
                *file = base.join(&*file);
            }
        }
        self
    }

    /// File, then environment, then unknown keys (before serde, so a misspelt section is named
    /// before the missing fields it causes), then serde, then validation; each error is blamed
    /// on the variable that set its key, else on the file.
    fn parse(text: &str, sources: &dyn Sources) -> Result<Self, (Source, ConfigError)> {
        let file_error = |msg: String| (Source::File, ConfigError(msg));
        let mut table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| file_error(err.message().to_owned()))?;
        let overrides = env::apply_overrides(&mut table, sources, keys::top_level())
            .map_err(|msg| (Source::Env, ConfigError(msg)))?;
        let blame = |path: &[String], msg: String| match overrides.blame(path) {
            // A value from the environment may be a secret: its kind is said, never its text.
            Some(var) => (
                Source::Env,
                ConfigError(format!("environment variable {var}: {}", keys::without_value(&msg))),
            ),
            None => file_error(msg),
        };
        if let Some((path, msg)) = keys::find_unknown(&table) {
            return Err(blame(&path, msg));
        }
        // The path names the key in the message; serde's own text follows.
        let raw: file::RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let (path, msg) = keys::serde_error(err);
            blame(&path, msg)
        })?;
        let limits_set = raw.limits.is_some();
        let mut config = Self::validate(raw, sources).map_err(|ConfigError(msg)| {
            // A message that names a variable first (`HTTPS_PROXY`, an issuer's secret) is about it.
            match keys::variable(&msg).filter(|name| sources.var(name).is_some()) {
                Some(_) => (Source::Env, ConfigError(msg)),
                None => blame(&keys::mentioned(&msg), msg),
            }
        })?;
        config.warnings = overrides.warning().into_iter().collect();
        config.warnings.extend(warnings::surprises(&config, limits_set));
        Ok(config)
    }

    fn validate(raw: file::RawConfig, sources: &dyn Sources) -> Result<Self, ConfigError> {
        let schema_sources = schema_sources(&raw.endpoints)?;
        let limits = raw.limits.unwrap_or_else(LimitsConfig::unlimited);
        limits.validate().map_err(|err| ConfigError(err.0))?;
        let endpoints = endpoints(raw.endpoints)?;
        limits
            .check_endpoint_keys(|key| {
                EndpointId::parse(key).is_ok_and(|id| endpoints.keys().any(|entry| entry.covers(&id)))
            })
            .map_err(|err| ConfigError(err.0))?;
        let public_url = raw
            .public_url
            .as_deref()
            .map(|raw| base_url("public_url", raw))
            .transpose()?;
        let webhooks =
            crate::webhooks::WebhooksConfig::parse(&raw.webhooks, public_url.as_ref()).map_err(ConfigError)?;
        Ok(Self {
            listen: socket("listen", &raw.listen)?,
            admin_listen: socket("admin_listen", &raw.admin_listen)?,
            public_url,
            webhooks,
            workers: workers(raw.workers)?,
            upstream: upstream(&raw.upstream, sources)?,
            auth: auth::auth(raw.auth, sources)?,
            max_body_bytes: positive("request.max_body_bytes", raw.request.max_body_bytes)?,
            body_budget_bytes: body_budget(&raw.request)?,
            body_timeout: millis("request.body_timeout_ms", raw.request.body_timeout_ms)?,
            body_reads_per_caller: positive(
                "request.body_reads_per_caller",
                raw.request.body_reads_per_caller as usize,
            )? as u32,
            max_header_bytes: positive("request.max_header_bytes", raw.request.max_header_bytes)?,
            max_headers_total_bytes: positive("request.max_headers_total_bytes", raw.request.max_headers_total_bytes)?,
            json: JsonLimits {
                max_object_keys: positive("request.max_json_object_keys", raw.request.max_json_object_keys)?,
                max_values: positive("request.max_json_values", raw.request.max_json_values)?,
                max_string_bytes: positive("request.max_json_string_bytes", raw.request.max_json_string_bytes)?,
            },
            connections: connections(&raw.connections)?,
            drain: Drain {
                delay: Duration::from_millis(raw.drain.delay_ms),
                timeout: Duration::from_millis(raw.drain.timeout_ms),
            },
            storage_uploads: raw.storage.uploads,
            log_format: raw.log.format,
            principal_hash_key: principal_hash_key(raw.log.principal_hash_key)?,
            tiers: access::tiers(raw.tiers, &endpoints)?,
            webhook_hosts: access::webhooks(raw.webhooks)?,
            cors: access::cors(raw.cors)?,
            ownership: access::ownership(&raw.ownership)?,
            events: {
                raw.events.check().map_err(ConfigError)?;
                raw.events
            },
            endpoints,
            schema_sources,
            limits,
            redis: raw.redis,
            warnings: Vec::new(),
            telemetry: telemetry::telemetry(raw.telemetry, sources)?,
            playground_enabled: raw.playground.enabled,
        })
    }
}

fn resolve_path(path: Option<&Path>, sources: &dyn Sources) -> PathBuf {
    path.map(Path::to_path_buf)
        .or_else(|| sources.var("FALGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// `log.principal_hash_key`: a secret of at least 16 bytes when set.
fn principal_hash_key(raw: Option<String>) -> Result<Option<secrecy::SecretString>, ConfigError> {
    match raw {
        Some(key) if key.len() < 16 => Err(ConfigError(
            "`log.principal_hash_key` must be at least 16 bytes (a random secret shared by the replicas)".into(),
        )),
        key => Ok(key.map(secrecy::SecretString::from)),
    }
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!("`{key}` must be greater than zero")));
    }
    Ok(value)
}

fn millis(key: &str, value: u64) -> Result<Duration, ConfigError> {
    positive(key, usize::try_from(value).unwrap_or(usize::MAX)).map(|_| Duration::from_millis(value))
}

fn base_url(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|err| ConfigError(format!("`{key}` is not a URL ({err}): {raw:?}")))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.host().is_some();
    if !plain {
        return Err(ConfigError(format!(
            "`{key}` must be a plain http(s) base URL without credentials or query"
        )));
    }
    Ok(url)
}

/// The body budget must hold at least one body of the largest size.
fn body_budget(raw: &file::RawRequest) -> Result<usize, ConfigError> {
    if raw.body_budget_bytes < raw.max_body_bytes {
        return Err(ConfigError(format!(
            "`request.body_budget_bytes` ({}) must be at least `request.max_body_bytes` ({})",
            raw.body_budget_bytes, raw.max_body_bytes
        )));
    }
    Ok(raw.body_budget_bytes)
}

#[cfg(test)]
mod tests;
