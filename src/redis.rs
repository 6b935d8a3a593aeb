//! The shared Redis used by `limits` and `ownership` when falgate runs as several replicas, in
//! one of three modes ([`RedisMode`]): one server (`[redis] url`), a primary found through
//! Sentinel (`sentinels` + `sentinel_master`: the client follows failovers), or a Redis Cluster
//! (`cluster`: slot-aware routing, `MOVED`/`ASK`, reconnection). Every mode takes passwords, ACL
//! users and TLS (`rediss://`). Connections are multiplexed and reconnect by themselves
//! ([`Connection`]), one per server worker, with a short per-call timeout and a key prefix.
//! Config keys: `[redis] url | sentinels + sentinel_master | cluster`, `timeout_ms`, `key_prefix`.
//!
//! Keys are `<prefix>:{<tag>}:<kind>…`. Every script touches only the keys it declares, all
//! under one `{…}` hash tag (one Cluster slot): a caller's, a request's, an endpoint's or the
//! reconciler's; work that spans two tags is two single-slot steps (`limits/redis.rs`).

#[cfg(test)]
pub(crate) mod chaos;
mod connection;
mod sentinel;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use connection::Connection;

/// `[redis]`: where the shared store is and how long to wait for it. Exactly one of `url`,
/// `sentinels` (with `sentinel_master`) and `cluster` is set (checked when the config is read).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRedisConfig")]
pub struct RedisConfig {
    /// One server: `redis://[user:pass@]host:port/db` or `rediss://…` (TLS with rustls).
    pub url: Option<String>,
    /// Sentinels to ask where the primary is: `redis[s]://[user:pass@]host:port` each (the
    /// credentials and scheme are the sentinels' own; `rediss` also means TLS to the primary).
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub sentinel_master: Option<String>,
    /// The primary's ACL user and password in Sentinel mode (the sentinels tell where it is).
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    /// Seed nodes of a Redis Cluster, `redis[s]://[user:pass@]host:port` each (same
    /// credentials on every node); the rest of the cluster is discovered from them.
    pub cluster: Vec<String>,
    /// Longest wait for one Redis call, connecting included; past it the call is a store error.
    pub timeout_ms: u64,
    /// Prefix of every key falgate writes, so several deployments can share one Redis.
    pub key_prefix: String,
}

/// The `[redis]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisConfig {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    sentinels: Vec<String>,
    #[serde(default)]
    sentinel_master: Option<String>,
    #[serde(default)]
    master_username: Option<String>,
    #[serde(default)]
    master_password: Option<String>,
    #[serde(default)]
    cluster: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
}

impl TryFrom<RawRedisConfig> for RedisConfig {
    type Error = String;

    fn try_from(raw: RawRedisConfig) -> Result<Self, String> {
        let config = Self {
            url: raw.url,
            sentinels: raw.sentinels,
            sentinel_master: raw.sentinel_master,
            master_username: raw.master_username,
            master_password: raw.master_password,
            cluster: raw.cluster,
            timeout_ms: raw.timeout_ms,
            key_prefix: raw.key_prefix,
        };
        config.mode()?;
        Ok(config)
    }
}

/// Where the shared store is, by mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode<'a> {
    /// One server.
    Single { url: &'a str },
    /// A primary and its replicas, watched by sentinels.
    Sentinel { sentinels: &'a [String], master: &'a str },
    /// A Redis Cluster, found from its seed nodes.
    Cluster { nodes: &'a [String] },
}

impl RedisMode<'_> {
    /// `single`, `sentinel` or `cluster`: what `/readyz` and `check-config` report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Sentinel { .. } => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }

    /// One line for `check-config`, without any URL (URLs may hold passwords).
    pub fn describe(&self) -> String {
        match self {
            Self::Single { .. } => "one Redis server (`redis.url`)".into(),
            Self::Sentinel { sentinels, master } => {
                format!("Redis Sentinel: primary {master:?}, {} sentinels", sentinels.len())
            }
            Self::Cluster { nodes } => match nodes.len() {
                1 => "Redis Cluster, 1 seed node".into(),
                n => format!("Redis Cluster, {n} seed nodes"),
            },
        }
    }
}

impl RedisConfig {
    /// One server at `url`, with the default timeout and key prefix.
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            sentinels: Vec::new(),
            sentinel_master: None,
            master_username: None,
            master_password: None,
            cluster: Vec::new(),
            timeout_ms: default_timeout_ms(),
            key_prefix: default_key_prefix(),
        }
    }

    /// The same config with `timeout_ms` and `key_prefix` set.
    pub fn with(mut self, timeout_ms: u64, key_prefix: impl Into<String>) -> Self {
        self.timeout_ms = timeout_ms;
        self.key_prefix = key_prefix.into();
        self
    }

    /// The shared Redis of the Redis-backed unit tests: 127.0.0.1:6379, or the Redis Cluster
    /// whose seed URLs `FALGATE_TEST_REDIS_CLUSTER` lists (a TOML inline list; `scripts/test`
    /// runs the limits and ownership tests once more on a 3 + 3 cluster it starts).
    #[cfg(test)]
    pub(crate) fn for_tests(timeout_ms: u64, key_prefix: impl Into<String>) -> Self {
        let cluster = std::env::var("FALGATE_TEST_REDIS_CLUSTER").ok().map(|list| {
            let parsed: toml::Table = format!("v = {list}")
                .parse()
                .expect("FALGATE_TEST_REDIS_CLUSTER is a TOML list");
            parsed["v"]
                .as_array()
                .expect("FALGATE_TEST_REDIS_CLUSTER is a TOML list")
                .iter()
                .map(|url| url.as_str().expect("a URL").to_owned())
                .collect::<Vec<_>>()
        });
        let mut config = Self::single("redis://127.0.0.1:6379").with(timeout_ms, key_prefix);
        if let Some(nodes) = cluster {
            config.url = None;
            config.cluster = nodes;
        }
        config
    }

    /// The mode the keys set, or why they do not name exactly one.
    pub fn mode(&self) -> Result<RedisMode<'_>, String> {
        let sentinel_only =
            self.sentinel_master.is_some() || self.master_username.is_some() || self.master_password.is_some();
        match (&self.url, self.sentinels.as_slice(), self.cluster.as_slice()) {
            (Some(url), [], []) if !sentinel_only => Ok(RedisMode::Single { url }),
            (None, [], nodes @ [_, ..]) if !sentinel_only => Ok(RedisMode::Cluster { nodes }),
            (None, sentinels @ [_, ..], []) => match self.sentinel_master.as_deref() {
                Some(master) if !master.is_empty() => Ok(RedisMode::Sentinel { sentinels, master }),
                _ => {
                    Err("`sentinels` needs `sentinel_master`, the name the sentinels monitor the primary under".into())
                }
            },
            (None, [], []) if sentinel_only => {
                Err("`sentinel_master`, `master_username` and `master_password` need `sentinels`".into())
            }
            (None, [], []) => Err("set one of `url`, `sentinels` (with `sentinel_master`) or `cluster`".into()),
            (_, _, _) if sentinel_only && self.sentinels.is_empty() => {
                Err("`sentinel_master`, `master_username` and `master_password` go with `sentinels` only".into())
            }
            _ => Err("set only one of `url`, `sentinels` and `cluster`: they are three ways to reach the store".into()),
        }
    }
}

fn default_timeout_ms() -> u64 {
    100
}

fn default_key_prefix() -> String {
    "falgate".into()
}

impl std::fmt::Debug for RedisConfig {
    // URLs and the primary's password may carry secrets, so they never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode().map(|mode| mode.name()))
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("sentinels", &self.sentinels.len())
            .field("sentinel_master", &self.sentinel_master)
            .field("master_username", &self.master_username.as_ref().map(|_| "<redacted>"))
            .field("master_password", &self.master_password.as_ref().map(|_| "<redacted>"))
            .field("cluster", &self.cluster.len())
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
    #[error("{0}")]
    BadConfig(String),
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
    main: Connection,
    /// One connection per server worker, opened on its first use from that worker's runtime:
    /// a connection's driver task runs where it was opened, so a worker's Redis calls never
    /// cross threads (one shared connection made every call wake another thread twice).
    per_worker: Arc<[OnceLock<Connection>]>,
    opener: Arc<connection::Opener>,
    mode: &'static str,
    timeout: Duration,
    prefix: String,
    /// Calls made through [`Self::timed_as`] (each one round trip), for tests and benchmarks
    /// that count what a request costs.
    round_trips: Arc<AtomicU64>,
}

impl RedisStore {
    /// Prepares the connection without waiting for Redis: falgate starts even while Redis is
    /// down and connects on first use. Fails on a malformed URL or mode, or outside a tokio
    /// runtime.
    pub fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        // The connection drivers are spawned tasks, which panic without a runtime.
        tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let mode = config.mode().map_err(StoreError::BadConfig)?;
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let opener = connection::Opener::new(config, mode, timeout)?;
        let main = opener.open()?;
        // Connect now, from this (the main) runtime: a connection's driver task is spawned by
        // whoever first drives it, and the main connection's must live here. Reconnects are
        // spawned on the runtime the connection was created on: this one too.
        let mut first = main.clone();
        tokio::spawn(async move {
            // Redis may be down at start: the connection connects again on next use.
            let _: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut first).await;
        });
        Ok(Self {
            main,
            per_worker: (0..crate::server::MAX_WORKERS).map(|_| OnceLock::new()).collect(),
            opener: Arc::new(opener),
            mode: mode.name(),
            timeout,
            prefix: config.key_prefix.clone(),
            round_trips: Arc::default(),
        })
    }

    /// How many calls (round trips) this store and its clones have made.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// A connection to run commands on (multiplexed: clones share one socket per server):
    /// this worker's own, or the main one off the worker threads.
    pub fn connection(&self) -> Connection {
        let Some(slot) = crate::server::current_worker().and_then(|index| self.per_worker.get(index)) else {
            return self.main.clone();
        };
        slot.get_or_init(|| {
            // Cannot fail: the same opener made `main`.
            self.opener.open().unwrap_or_else(|_| self.main.clone())
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
        self.round_trips.fetch_add(1, Ordering::Relaxed);
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

    /// The shipped config with `vars` set (and the secret it needs).
    fn shipped_with(vars: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        let mut env: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.insert(
            "FALGATE_AUTH__HS256_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        crate::config::Config::from_toml(include_str!("../config/falgate.toml"), &env).map_err(|err| err.to_string())
    }

    /// Issue 25: each mode runs from the shipped config with one setting changed (a list from
    /// the environment as a TOML inline list), and `check-config`/`/readyz` name it.
    #[test]
    fn each_mode_is_one_setting_on_the_shipped_config() {
        let single = shipped_with(&[("FALGATE_REDIS__URL", "rediss://app:pw@redis.internal:6380/2")]).unwrap();
        let sentinel = shipped_with(&[
            (
                "FALGATE_REDIS__SENTINELS",
                r#"["redis://s1:26379", "redis://:sentinel-pw@s2:26379"]"#,
            ),
            ("FALGATE_REDIS__SENTINEL_MASTER", "falgate"),
            ("FALGATE_REDIS__MASTER_PASSWORD", "pw"),
        ])
        .unwrap();
        let cluster = shipped_with(&[(
            "FALGATE_REDIS__CLUSTER",
            r#"["rediss://app:pw@c1:6379", "rediss://app:pw@c2:6379"]"#,
        )])
        .unwrap();
        fn mode(config: &crate::config::Config) -> RedisMode<'_> {
            config.redis.as_ref().unwrap().mode().unwrap()
        }
        assert_eq!(
            mode(&single),
            RedisMode::Single {
                url: "rediss://app:pw@redis.internal:6380/2"
            }
        );
        assert!(
            matches!(mode(&sentinel), RedisMode::Sentinel { sentinels, master: "falgate" } if sentinels.len() == 2)
        );
        assert!(matches!(mode(&cluster), RedisMode::Cluster { nodes } if nodes.len() == 2));
        assert_eq!(
            [&single, &sentinel, &cluster].map(|config| mode(config).name()),
            ["single", "sentinel", "cluster"]
        );
        // No URL, so no password, in what is printed or logged.
        for config in [&single, &sentinel, &cluster] {
            let shown = format!("{:?} {}", config.redis.as_ref().unwrap(), mode(config).describe());
            assert!(!shown.contains("pw"), "{shown}");
        }
    }

    #[test]
    fn a_redis_table_that_names_no_mode_or_two_is_refused() {
        let refused = [
            (vec![("FALGATE_REDIS__TIMEOUT_MS", "50")], "set one of"),
            (
                vec![
                    ("FALGATE_REDIS__URL", "redis://a:6379"),
                    ("FALGATE_REDIS__CLUSTER", r#"["redis://b:6379"]"#),
                ],
                "only one of",
            ),
            (
                vec![("FALGATE_REDIS__SENTINELS", r#"["redis://s:26379"]"#)],
                "sentinel_master",
            ),
            (
                vec![
                    ("FALGATE_REDIS__URL", "redis://a:6379"),
                    ("FALGATE_REDIS__SENTINEL_MASTER", "m"),
                ],
                "go with `sentinels` only",
            ),
        ];
        for (vars, expected) in refused {
            let err = shipped_with(&vars).unwrap_err();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_failed_redis_call_is_timed_and_counted_by_operation() {
        // Nothing listens on port 1: the call fails (refused or timed out).
        let store = RedisStore::connect(&RedisConfig::single("redis://127.0.0.1:1").with(50, "t")).unwrap();
        let errors = r#"falgate_redis_errors_total{op="ping"}"#;
        let calls = r#"falgate_redis_duration_seconds_count{op="ping"}"#;
        let (errors_before, calls_before) = (sample(errors), sample(calls));
        assert!(store.ping().await.is_err());
        assert!(sample(errors) >= errors_before + 1.0);
        assert!(sample(calls) >= calls_before + 1.0);
    }
}
