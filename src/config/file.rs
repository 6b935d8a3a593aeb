//! The raw shape of the TOML file (after environment overrides), exactly as serde reads it.
//! Unknown keys are refused with their name; units are in the key names.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default = "default_admin_listen")]
    pub(crate) admin_listen: String,
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
        }
    }
}

/// `[auth]`: how callers prove who they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub(crate) hs256_secret: Option<String>,
    pub(crate) leeway_seconds: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            leeway_seconds: 30,
        }
    }
}

/// `[request]`: limits on what a caller may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRequest {
    pub(crate) max_body_bytes: usize,
}

impl Default for RawRequest {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
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
        Self {
            uploads: Toggle::Deny,
        }
    }
}

/// `[log]`: output format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub(crate) format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
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
    /// Whether callers may pass `fal_webhook` on submit.
    #[serde(default)]
    pub(crate) webhooks: bool,
}

/// An exclusive allow/deny choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toggle {
    Allow,
    Deny,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
