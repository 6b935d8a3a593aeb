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
