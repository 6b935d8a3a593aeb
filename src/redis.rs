//! The shared Redis used by `limits` and `ownership` when falgate runs as several replicas:
//! auto-reconnecting multiplexed connections ([`ConnectionManager`]), one per server worker,
//! a short per-call timeout, and a key prefix. Config keys: `[redis] url` (`FALGATE_REDIS__URL`), `timeout_ms`, `key_prefix`.
//!
//! Keys are `<prefix>:{<tag>}:<kind>…`. The `{…}` hash tag keeps one caller's keys in one Redis
//! Cluster slot, so each caller's admission script touches a single slot.

#[cfg(test)]
pub(crate) mod chaos;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `[redis]`: where the shared store is and how long to wait for it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS with rustls). May hold a password.
    pub url: String,
    /// Longest wait for one Redis call, connecting included; past it the call is a store error.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Prefix of every key falgate writes, so several deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_timeout_ms() -> u64 {
    100
}

fn default_key_prefix() -> String {
    "falgate".into()
}

impl std::fmt::Debug for RedisConfig {
    // The URL may carry a password, so it never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Why a Redis call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the redis url is not valid: {0}")]
    BadUrl(#[source] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis call failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the redis connection must be set up inside a tokio runtime")]
    NoRuntime,
    #[error("redis answered with an unexpected shape: {0}")]
    Protocol(String),
}

/// A handle on the shared Redis: cheap to clone, reconnects by itself after an outage.
#[derive(Clone)]
pub struct RedisStore {
    /// Opened at start from the main runtime; used off the server workers (and if a worker's
    /// own connection cannot be made).
    main: ConnectionManager,
    /// One connection per server worker, opened on its first use from that worker's runtime:
    /// a connection's driver task runs where it was opened, so a worker's Redis calls never
    /// cross threads (one shared connection made every call wake another thread twice).
    per_worker: Arc<[OnceLock<ConnectionManager>]>,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    prefix: String,
}

impl RedisStore {
    /// Prepares the connection without waiting for Redis: falgate starts even while Redis is
    /// down and connects on first use. Fails on a malformed URL, or outside a tokio runtime.
    pub fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        // The connection manager spawns its driver task, which panics without a runtime.
        tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let client = redis::Client::open(config.url.as_str()).map_err(StoreError::BadUrl)?;
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let main = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            .map_err(StoreError::BadUrl)?;
        // Connect now, from this (the main) runtime: a connection's driver task is spawned by
        // whoever first drives it, and the main connection's must live here. Reconnects are
        // spawned on the runtime the manager was created on: this one too.
        let mut first = main.clone();
        tokio::spawn(async move {
            // Redis may be down at start: the manager connects again on next use.
            let _: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut first).await;
        });
        Ok(Self {
            main,
            per_worker: (0..crate::server::MAX_WORKERS).map(|_| OnceLock::new()).collect(),
            client,
            manager_config,
            timeout,
            prefix: config.key_prefix.clone(),
        })
    }

    /// A connection to run commands on (multiplexed: clones share one socket): this worker's
    /// own, or the main one off the worker threads.
    pub fn connection(&self) -> ConnectionManager {
        let Some(slot) = crate::server::current_worker().and_then(|index| self.per_worker.get(index)) else {
            return self.main.clone();
        };
        slot.get_or_init(|| {
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config.clone())
                // Cannot fail: the same client and config made `main`.
                .unwrap_or_else(|_| self.main.clone())
        })
        .clone()
    }

    /// Runs a script invocation (`EVALSHA`, the limits' calls) with the store's timeout; see
    /// [`RedisStore::timed_as`].
    pub async fn timed<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.timed_as("eval", call).await
    }

    /// Runs `call` with the store's timeout, so a slow Redis costs at most `timeout_ms`, and
    /// records its latency and failure as `falgate_redis_*{op}`.
    pub async fn timed_as<T, F>(&self, op: &'static str, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        crate::telemetry::metrics::redis_call(op, started.elapsed(), result.is_ok());
        result
    }

    /// Passes when Redis answers `PING` in time.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection();
        self.timed_as("ping", redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map(drop)
    }

    /// The full key `<prefix>:{<tag_of(id)>}:<rest>`; `id` is hashed so no caller-chosen text
    /// can break out of the hash tag or collide with another caller's key.
    pub fn key(&self, id: &str, rest: &str) -> String {
        self.tagged(&tag_of(id), rest)
    }

    /// The full key `<prefix>:{<tag>}:<rest>` for a tag already made by [`tag_of`].
    pub fn tagged(&self, tag: &str, rest: &str) -> String {
        format!("{}:{{{tag}}}:{rest}", self.prefix)
    }
}

/// The hash-tag form of a caller id (or any other id): 32 hex chars of its SHA-256.
pub fn tag_of(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics;

    /// The value of `series` in a scrape (0 when absent).
    fn sample(series: &str) -> f64 {
        metrics::render(&metrics::handle())
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn a_failed_redis_call_is_timed_and_counted_by_operation() {
        let store = RedisStore::connect(&RedisConfig {
            // Nothing listens on port 1: the call fails (refused or timed out).
            url: "redis://127.0.0.1:1".into(),
            timeout_ms: 50,
            key_prefix: "t".into(),
        })
        .unwrap();
        let errors = r#"falgate_redis_errors_total{op="ping"}"#;
        let calls = r#"falgate_redis_duration_seconds_count{op="ping"}"#;
        let (errors_before, calls_before) = (sample(errors), sample(calls));
        assert!(store.ping().await.is_err());
        assert!(sample(errors) >= errors_before + 1.0);
        assert!(sample(calls) >= calls_before + 1.0);
    }
}
