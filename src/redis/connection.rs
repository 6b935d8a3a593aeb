//! One connection type over the three modes, so the stores run the same commands and scripts
//! whatever the deployment: a [`ConnectionManager`] (one server), a cluster connection
//! (`redis::cluster_async`: slot map, `MOVED`/`ASK`, reconnects), or a primary found through
//! Sentinel ([`super::sentinel::SentinelConnection`]). Scripts run through
//! [`redis::Script::invoke_async`] in every mode: `EVALSHA`, and on `NOSCRIPT` (a restarted or
//! promoted server) `SCRIPT LOAD` — on every primary in Cluster mode — and `EVALSHA` again.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::{SentinelConnection, SentinelTarget};
use super::{RedisConfig, RedisMode, StoreError};

/// A connection in one of the three modes: cheap to clone (clones share the sockets).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // Debug builds (every test) refuse what a Redis Cluster would refuse with `CROSSSLOT`,
        // in every mode, so a script that spans two hash tags fails on a laptop's one Redis.
        #[cfg(debug_assertions)]
        if let Err(message) = one_slot(cmd) {
            return Box::pin(std::future::ready(Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "falgate: keys of two hash tags in one command",
                message,
            )))));
        }
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
            Self::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// Makes new connections of the configured mode (one per server worker).
pub(super) enum Opener {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
    },
    Sentinel(SentinelTarget),
}

impl Opener {
    pub(super) fn new(config: &RedisConfig, mode: RedisMode<'_>, timeout: Duration) -> Result<Self, StoreError> {
        Ok(match mode {
            RedisMode::Single { url } => Self::Single {
                client: redis::Client::open(url).map_err(StoreError::BadUrl)?,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1)),
            },
            RedisMode::Cluster { nodes } => Self::Cluster {
                // Credentials and TLS come from the seed URLs (the same on every node).
                client: ClusterClient::builder(nodes.iter().map(String::as_str))
                    // A call is bounded by `timeout_ms` anyway; retries inside it follow
                    // `MOVED`/`ASK` and a failover's new slot map.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(StoreError::BadUrl)?,
                config: ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout),
            },
            RedisMode::Sentinel { sentinels, master } => Self::Sentinel(SentinelTarget::new(
                sentinels,
                master,
                config.master_username.as_deref(),
                config.master_password.as_deref(),
                timeout,
            )?),
        })
    }

    /// A new connection; it connects on first use.
    pub(super) fn open(&self) -> Result<Connection, StoreError> {
        Ok(match self {
            Self::Single { client, config } => Connection::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map_err(StoreError::BadUrl)?,
            ),
            Self::Cluster { client, config } => {
                Connection::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
            Self::Sentinel(target) => Connection::Sentinel(target.open()?),
        })
    }
}

/// The hash tag Redis Cluster hashes a key by: the text between the first `{` and the next `}`
/// when it is not empty, else the whole key. Debug builds only, like its caller [`one_slot`].
#[cfg(any(debug_assertions, test))]
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Whether every key `cmd` names shares one hash tag (scripts: their declared `KEYS`; the
/// multi-key commands falgate could send). Other commands name one key. Debug builds only:
/// release builds leave the check to the server (`CROSSSLOT`).
#[cfg(any(debug_assertions, test))]
pub(crate) fn one_slot(cmd: &Cmd) -> Result<(), String> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let Some(name) = args.first().map(|name| name.to_ascii_uppercase()) else {
        return Ok(());
    };
    let keys: &[&[u8]] = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            args.get(3..3 + count).unwrap_or(&[])
        }
        b"MGET" | b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" | b"WATCH" => &args[1..],
        _ => return Ok(()),
    };
    let mut tags = keys.iter().map(|key| hash_tag(key));
    let Some(first) = tags.next() else { return Ok(()) };
    match tags.find(|tag| tag != &first) {
        None => Ok(()),
        Some(other) => Err(format!(
            "{} names keys of tags {{{}}} and {{{}}}",
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tag_is_what_redis_cluster_hashes() {
        assert_eq!(hash_tag(b"falgate:{abc}:quota"), b"abc");
        assert_eq!(hash_tag(b"falgate:{}:quota"), b"falgate:{}:quota");
        assert_eq!(hash_tag(b"plain"), b"plain");
        assert_eq!(hash_tag(b"a{b}{c}"), b"b");
    }

    #[test]
    fn a_command_whose_keys_span_two_tags_is_named() {
        let mut script = redis::cmd("EVALSHA");
        script
            .arg("sha")
            .arg(2)
            .arg("p:{a}:rate")
            .arg("p:{a}:quota")
            .arg("p:{b}:not-a-key");
        assert!(one_slot(&script).is_ok(), "only the declared KEYS count");
        let mut spanning = redis::cmd("EVALSHA");
        spanning.arg("sha").arg(2).arg("p:{a}:rate").arg("p:{b}:ep-rate");
        let err = one_slot(&spanning).unwrap_err();
        assert!(err.contains("{a}") && err.contains("{b}"), "{err}");
        let mut del = redis::cmd("DEL");
        del.arg("p:{a}:x").arg("p:{c}:y");
        assert!(one_slot(&del).is_err());
        assert!(one_slot(redis::cmd("GET").arg("p:{a}:x")).is_ok());
    }

    /// Every script falgate runs goes through `Connection`, which refuses spanning keys in
    /// debug builds: this proves the refusal reaches the caller as an error, before Redis.
    #[tokio::test]
    async fn a_connection_refuses_a_script_spanning_two_tags() {
        let store =
            super::super::RedisStore::connect(&super::super::RedisConfig::single("redis://127.0.0.1:6379")).unwrap();
        let mut connection = store.connection();
        let script = redis::Script::new("return #KEYS");
        let mut spanning = script.prepare_invoke();
        spanning.key("t:{a}:1").key("t:{b}:2");
        let err = spanning.invoke_async::<i64>(&mut connection).await.unwrap_err();
        assert!(err.to_string().contains("two hash tags"), "{err}");
        let mut one = script.prepare_invoke();
        one.key("t:{a}:1").key("t:{a}:2");
        assert_eq!(one.invoke_async::<i64>(&mut connection).await.unwrap(), 2);
    }
}
