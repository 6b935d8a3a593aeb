//! Sentinel mode: the sentinels say which server is the primary of `sentinel_master`; calls go
//! to it over one multiplexed connection. A call that fails in a way that says the primary is
//! gone or demoted (connection refused or dropped, a timeout, `READONLY`, `MASTERDOWN`) drops
//! that connection, so the next call asks the sentinels again and follows the failover. The
//! failed call itself is a store error (the limits' `on_store_error` decides), never retried
//! on another server: a retried script could run twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, TlsMode, Value,
};

use super::StoreError;

/// After the sentinels could not name a reachable primary, calls fail at once for this long
/// instead of each asking again (a failover takes seconds; a storm of lookups would not help).
const LOOKUP_BACKOFF: Duration = Duration::from_millis(50);

/// What a new [`SentinelConnection`] is built from.
pub(crate) struct SentinelTarget {
    sentinels: Vec<redis::ConnectionInfo>,
    master: String,
    node: SentinelNodeConnectionInfo,
    db: i64,
    timeout: Duration,
}

impl SentinelTarget {
    pub(super) fn new(
        sentinels: &[String],
        master: &str,
        username: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let parsed = sentinels
            .iter()
            .map(|url| url.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()
            .map_err(StoreError::BadUrl)?;
        let tls = parsed
            .iter()
            .any(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
        // A database in a sentinel's URL is the primary's: a sentinel has none to `SELECT`.
        let db = parsed.first().map_or(0, |info| info.redis_settings().db());
        let sentinels = parsed
            .into_iter()
            .map(|info| {
                let settings = info.redis_settings().clone().set_db(0);
                info.set_redis_settings(settings)
            })
            .collect();
        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(username) = username {
            redis = redis.set_username(username);
        }
        if let Some(password) = password {
            redis = redis.set_password(password);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        if tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        Ok(Self {
            sentinels,
            master: master.to_owned(),
            node,
            db,
            timeout,
        })
    }

    pub(super) fn open(&self) -> Result<SentinelConnection, StoreError> {
        let client = SentinelClient::build(
            self.sentinels.clone(),
            self.master.as_str(),
            Some(self.node.clone()),
            SentinelServerType::Master,
        )
        .map_err(StoreError::BadUrl)?;
        // Inside the store's own timeout, so a silent primary is seen as gone by this
        // connection before the caller's wait ends.
        let inner = self.timeout.mul_f64(0.9).max(Duration::from_millis(1));
        Ok(SentinelConnection {
            shared: Arc::new(Shared {
                client: tokio::sync::Mutex::new(client),
                current: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                failed_lookup: Mutex::new(None),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(inner))
                    .set_response_timeout(Some(inner)),
                db: self.db,
            }),
        })
    }
}

/// A connection to the primary the sentinels name; clones share it.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// Asks the sentinels (one lookup at a time).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The primary's connection and its generation, until a call says it is gone.
    current: ArcSwapOption<(u64, MultiplexedConnection)>,
    generation: AtomicU64,
    failed_lookup: Mutex<Option<Instant>>,
    config: AsyncConnectionConfig,
    db: i64,
}

impl SentinelConnection {
    /// The primary's connection, asking the sentinels first when there is none.
    async fn primary(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.shared.current.load_full() {
            return Ok((*current).clone());
        }
        let recent_failure = self
            .shared
            .failed_lookup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < LOOKUP_BACKOFF);
        if recent_failure {
            return Err(RedisError::from((
                ErrorKind::Io,
                "no primary: the sentinels were asked moments ago",
            )));
        }
        let mut client = self.shared.client.lock().await;
        // Another call may have found it while this one waited.
        if let Some(current) = self.shared.current.load_full() {
            return Ok((*current).clone());
        }
        let found = async {
            let primary = client.async_get_client().await?;
            primary
                .get_multiplexed_async_connection_with_config(&self.shared.config)
                .await
        }
        .await;
        match found {
            Ok(connection) => {
                let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let entry = (generation, connection);
                self.shared.current.store(Some(Arc::new(entry.clone())));
                Ok(entry)
            }
            Err(err) => {
                *self
                    .shared
                    .failed_lookup
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                Err(err)
            }
        }
    }

    /// Drops connection `generation` after a failure that says the primary moved.
    fn forget(&self, generation: u64, err: &RedisError) {
        if !moved(err) {
            return;
        }
        self.shared.current.rcu(|current| match current {
            Some(entry) if entry.0 == generation => None,
            other => other.clone(),
        });
    }
}

/// Whether an error says this server is no longer the primary to talk to.
fn moved(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut connection) = self.primary().await?;
            let result = connection.req_packed_command(cmd).await;
            if let Err(err) = &result {
                self.forget(generation, err);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut connection) = self.primary().await?;
            let result = connection.req_packed_commands(pipeline, offset, count).await;
            if let Err(err) = &result {
                self.forget(generation, err);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}
