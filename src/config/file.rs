//! The raw shape of the TOML file (after environment overrides), exactly as serde reads it.
//! Unknown keys are refused with their name; units are in the key names.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::telemetry::LogFormat;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default = "default_admin_listen")]
    pub(crate) admin_listen: String,
    /// The URL callers reach falgate at (`https://gate.example.com`), for the links in answers.
    #[serde(default)]
    pub(crate) public_url: Option<String>,
    /// Server threads, each with its own runtime, connections and fal pool; 0 = one per core.
    #[serde(default)]
    pub(crate) workers: usize,
    #[serde(default)]
    pub(crate) upstream: RawUpstream,
    #[serde(default)]
    pub(crate) auth: RawAuth,
    #[serde(default)]
    pub(crate) request: RawRequest,
    #[serde(default)]
    pub(crate) storage: RawStorage,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) endpoints: BTreeMap<String, RawEndpoint>,
    #[serde(default)]
    pub(crate) tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    pub(crate) webhooks: crate::webhooks::RawWebhooks,
    #[serde(default)]
    pub(crate) cors: RawCors,
    #[serde(default)]
    pub(crate) ownership: RawOwnership,
    #[serde(default)]
    pub(crate) events: crate::events::EventsConfig,
    #[serde(default)]
    pub(crate) connections: RawConnections,
    #[serde(default)]
    pub(crate) drain: RawDrain,
    pub(crate) limits: Option<crate::limits::LimitsConfig>,
    pub(crate) redis: Option<crate::redis::RedisConfig>,
    #[serde(default)]
    pub(crate) telemetry: super::telemetry::RawTelemetry,
    #[serde(default)]
    pub(crate) playground: RawPlayground,
}

/// `[playground]`: the browser page at `/` (always on in `falgate dev`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPlayground {
    pub(crate) enabled: bool,
}

/// `[upstream]`: where fal is and how long to wait for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    pub(crate) queue_url: String,
    pub(crate) run_url: String,
    pub(crate) storage_url: String,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) first_byte_timeout_ms: u64,
    pub(crate) idle_timeout_ms: u64,
    pub(crate) pool_idle_timeout_ms: u64,
    pub(crate) max_response_bytes: usize,
    pub(crate) max_result_bytes: usize,
    pub(crate) buffer_budget_bytes: usize,
    pub(crate) max_stream_lifetime_ms: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            queue_url: "https://queue.fal.run".into(),
            run_url: "https://fal.run".into(),
            storage_url: "https://rest.fal.ai".into(),
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 60_000,
            idle_timeout_ms: 300_000,
            pool_idle_timeout_ms: 90_000,
            max_response_bytes: 1_048_576,
            max_result_bytes: 33_554_432,
            buffer_budget_bytes: 67_108_864,
            max_stream_lifetime_ms: 3_600_000,
        }
    }
}

/// `[auth]`: how callers prove who they are. The top-level keys form the `default` issuer;
/// `[auth.issuers.NAME]` adds more.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub(crate) hs256_secret: Option<String>,
    pub(crate) jwks_url: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    /// Accept a JWKS issuer's tokens without an `audience` (any app of that IdP): the opt-out.
    pub(crate) any_audience: bool,
    pub(crate) key_files: Vec<String>,
    pub(crate) algorithms: Vec<String>,
    pub(crate) tier_claim: String,
    pub(crate) scopes_claim: String,
    pub(crate) default_tier: String,
    pub(crate) token_type: Option<String>,
    pub(crate) leeway_seconds: u64,
    pub(crate) max_lifetime_seconds: u64,
    pub(crate) max_token_bytes: usize,
    pub(crate) cookie: Option<String>,
    pub(crate) token_cache_entries: u64,
    pub(crate) jwks_refresh_seconds: u64,
    pub(crate) jwks_cooldown_seconds: u64,
    pub(crate) jwks_timeout_ms: u64,
    pub(crate) jwks_max_bytes: usize,
    pub(crate) issuers: BTreeMap<String, RawIssuer>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            any_audience: false,
            key_files: Vec::new(),
            algorithms: Vec::new(),
            tier_claim: "tier".into(),
            scopes_claim: "scope".into(),
            default_tier: "default".into(),
            token_type: None,
            leeway_seconds: 30,
            max_lifetime_seconds: 86_400,
            max_token_bytes: 8_192,
            cookie: None,
            token_cache_entries: 100_000,
            jwks_refresh_seconds: 300,
            jwks_cooldown_seconds: 10,
            jwks_timeout_ms: 5_000,
            jwks_max_bytes: 1_048_576,
            issuers: BTreeMap::new(),
        }
    }
}

/// `[auth.issuers.NAME]`: one more token issuer, with its own keys, audience and claims.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub(crate) issuer: String,
    pub(crate) audience: Option<String>,
    /// Accept this issuer's tokens without an `audience` (any app of that IdP): the opt-out.
    #[serde(default)]
    pub(crate) any_audience: bool,
    /// Env variable holding an HMAC secret (secrets never sit in the file).
    pub(crate) hs_secret_env: Option<String>,
    pub(crate) jwks_url: Option<String>,
    #[serde(default)]
    pub(crate) key_files: Vec<String>,
    #[serde(default)]
    pub(crate) algorithms: Vec<String>,
    pub(crate) tier_claim: Option<String>,
    pub(crate) scopes_claim: Option<String>,
    pub(crate) default_tier: Option<String>,
    pub(crate) token_type: Option<String>,
}

/// `[tiers.NAME]`: what callers of one tier may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    /// Endpoint entries (keys of `[endpoints]`) this tier may use; absent = all.
    pub(crate) endpoints: Option<Vec<String>>,
    /// Operations this tier may use; absent = all.
    pub(crate) operations: Option<Vec<String>>,
    /// Highest `x-fal-queue-priority` passed on; a higher one is lowered.
    pub(crate) max_queue_priority: Option<String>,
    /// Per endpoint entry, per input field: the values allowed.
    #[serde(default)]
    pub(crate) options: BTreeMap<String, BTreeMap<String, Vec<serde_json::Value>>>,
    /// `[tiers.NAME.fal_headers]`: which `x-fal-*` values pass, capped or forced.
    #[serde(default)]
    pub(crate) fal_headers: RawFalHeaders,
}

/// `[tiers.NAME.fal_headers]`: the tier's rules over the `x-fal-*` headers a caller sends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFalHeaders {
    /// `"allow"` (default) or `"drop"`: whether `x-fal-runner-hint` reaches fal.
    pub(crate) runner_hint: Option<String>,
    /// `"allow"` (default) or `"drop"`: whether `x-fal-no-retry` reaches fal.
    pub(crate) no_retry: Option<String>,
    /// `"allow"` (default) or `"drop"`: whether `x-fal-disable-fallbacks` reaches fal.
    pub(crate) disable_fallbacks: Option<String>,
    /// A longer `x-fal-request-timeout` is lowered to this.
    pub(crate) max_request_timeout_seconds: Option<f64>,
    /// A longer (or absent) lifecycle `expiration_duration_seconds` is lowered (set) to this.
    pub(crate) max_object_expiration_seconds: Option<u64>,
    /// Replaces the caller's object lifecycle on every submit, run and upload.
    pub(crate) object_lifecycle: Option<crate::fal::ObjectLifecycle>,
    /// `"caller"` (default), `"off"` or `"on"`: `X-Fal-Store-IO` as the caller sent it, or forced.
    pub(crate) store_io: Option<String>,
}

/// `[cors]`: which browser origins may call falgate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCors {
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allow_credentials: bool,
    pub(crate) max_age_seconds: u64,
}

impl Default for RawCors {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            max_age_seconds: 600,
        }
    }
}

/// `[ownership]`: how long request ownership is remembered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOwnership {
    pub(crate) ttl_seconds: u64,
    pub(crate) max_entries: u64,
    pub(crate) per_caller: usize,
    pub(crate) list_limit: usize,
    pub(crate) list_max: usize,
}

impl Default for RawOwnership {
    fn default() -> Self {
        Self {
            ttl_seconds: 7 * 86_400,
            max_entries: 1_000_000,
            per_caller: 200,
            list_limit: 20,
            list_max: 100,
        }
    }
}

/// `[request]`: limits on what a caller may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRequest {
    pub(crate) max_body_bytes: usize,
    pub(crate) body_budget_bytes: usize,
    pub(crate) body_timeout_ms: u64,
    pub(crate) body_reads_per_caller: u32,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers_total_bytes: usize,
    pub(crate) max_json_object_keys: usize,
    pub(crate) max_json_values: usize,
    pub(crate) max_json_string_bytes: usize,
}

impl Default for RawRequest {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            body_budget_bytes: 64 * 1024 * 1024,
            body_timeout_ms: 30_000,
            body_reads_per_caller: 4,
            max_header_bytes: 8 * 1024,
            max_headers_total_bytes: 32 * 1024,
            max_json_object_keys: 1024,
            max_json_values: 100_000,
            max_json_string_bytes: 10 * 1024 * 1024,
        }
    }
}

/// `[connections]`: what one client connection may hold on the public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConnections {
    pub(crate) max_open: usize,
    pub(crate) header_read_timeout_ms: u64,
    pub(crate) keep_alive_timeout_ms: u64,
    pub(crate) write_timeout_ms: u64,
    pub(crate) send_buffer_bytes: usize,
    pub(crate) http2_max_concurrent_streams: u32,
    pub(crate) http2_keep_alive_interval_ms: u64,
    pub(crate) min_send_bytes_per_second: u64,
    pub(crate) admin_max_open: usize,
    pub(crate) http2_max_open_streams: usize,
}

impl Default for RawConnections {
    fn default() -> Self {
        Self {
            max_open: 10_000,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            send_buffer_bytes: 262_144,
            http2_max_concurrent_streams: 64,
            http2_keep_alive_interval_ms: 30_000,
            min_send_bytes_per_second: 8192,
            admin_max_open: 64,
            http2_max_open_streams: 10_000,
        }
    }
}

/// `[drain]`: what SIGTERM / SIGINT do before the process exits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDrain {
    pub(crate) delay_ms: u64,
    pub(crate) timeout_ms: u64,
}

impl Default for RawDrain {
    fn default() -> Self {
        Self {
            delay_ms: 5_000,
            timeout_ms: 25_000,
        }
    }
}

/// `[storage]`: whether callers may start uploads to fal's CDN through falgate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStorage {
    pub(crate) uploads: Toggle,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self { uploads: Toggle::Deny }
    }
}

/// `[log]`: output format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub(crate) format: LogFormat,
    pub(crate) principal_hash_key: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            principal_hash_key: None,
        }
    }
}

/// `[endpoints."owner/alias"]`: one allowed endpoint (and its sub paths).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    /// Whether `fal.run` synchronous calls are allowed for this endpoint.
    #[serde(default)]
    pub(crate) sync_run: bool,
    /// Whether callers may mint temporary fal tokens for this app (`fal.realtime`).
    #[serde(default)]
    pub(crate) client_tokens: bool,
    /// The input schema: a JSON Schema file or fal's OpenAPI document, relative to the config file.
    pub(crate) schema: Option<String>,
    #[serde(default)]
    pub(crate) unknown_fields: crate::schema::UnknownFields,
    /// Body cap for this endpoint, instead of `request.max_body_bytes`.
    pub(crate) max_body_bytes: Option<usize>,
    /// The operator's overlay on the schema, for every tier.
    pub(crate) overlay: Option<crate::schema::Overlay>,
    /// Further overlays per tier.
    #[serde(default)]
    pub(crate) tiers: BTreeMap<String, crate::schema::Overlay>,
}

/// An exclusive allow/deny choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toggle {
    Allow,
    Deny,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
