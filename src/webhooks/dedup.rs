//! Deliveries already applied, by request id: fal retries a delivery (up to 10 times) until it
//! gets a 2xx, and a retry may reach another replica, so only the first verified delivery of a
//! request has an effect. With `[redis]`, one `SET NX PX` on `<prefix>:{<tag>}:delivered` (one
//! key, one hash tag: a single Redis Cluster slot) decides across replicas; else a bounded
//! in-process set (`max_tracked`, expiring after `dedup_ttl`). A request is marked before its
//! effect runs, so two deliveries racing never both apply (a refund is not idempotent); if the
//! effect then fails half-way, the reconciler still frees the slot.

use std::time::Duration;

use crate::fal::FalRequestId;
use crate::limits::OnStoreError;
use crate::redis::RedisStore;

use super::Refusal;

pub(crate) struct Deliveries {
    local: moka::sync::Cache<String, ()>,
    redis: Option<RedisStore>,
    ttl: Duration,
    on_error: OnStoreError,
}

impl Deliveries {
    pub(crate) fn new(max: u64, ttl: Duration, redis: Option<RedisStore>, on_error: OnStoreError) -> Self {
        Self {
            local: moka::sync::Cache::builder().max_capacity(max).time_to_live(ttl).build(),
            redis,
            ttl,
            on_error,
        }
    }

    /// Marks request `id` delivered; true when no delivery of it was marked before. Redis down:
    /// `deny` refuses (fal retries later), `allow` decides on this replica's own set.
    pub(crate) async fn first(&self, id: &FalRequestId) -> Result<bool, Refusal> {
        let locally_first = self.local.entry(id.as_str().to_owned()).or_insert(()).is_fresh();
        let Some(redis) = &self.redis else {
            return Ok(locally_first);
        };
        let key = redis.key(&format!("webhook|{id}"), "delivered");
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut connection = redis.connection();
        let set: Result<Option<String>, _> = redis
            .timed_as(
                "set",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut connection),
            )
            .await;
        match set {
            Ok(answer) => Ok(answer.is_some()),
            Err(err) => {
                tracing::warn!(error = %err, "webhook delivery store unavailable");
                match self.on_error {
                    OnStoreError::Deny => Err(Refusal::StoreDown),
                    OnStoreError::Allow => Ok(locally_first),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FalRequestId {
        FalRequestId::parse(&format!("764cabcf-b745-4b3e-ae38-1200304cf4{n:02}")).unwrap()
    }

    #[tokio::test]
    async fn only_the_first_delivery_of_a_request_is_first() {
        let deliveries = Deliveries::new(10, Duration::from_secs(60), None, OnStoreError::Deny);
        assert!(deliveries.first(&id(1)).await.unwrap());
        assert!(!deliveries.first(&id(1)).await.unwrap());
        assert!(deliveries.first(&id(2)).await.unwrap());
    }

    #[tokio::test]
    async fn with_redis_a_delivery_seen_by_another_replica_is_not_first() {
        let config = crate::redis::RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 500,
            key_prefix: format!("test-wh-{}", uuid::Uuid::new_v4()),
        };
        let replica = || {
            let store = RedisStore::connect(&config).unwrap();
            Deliveries::new(10, Duration::from_secs(60), Some(store), OnStoreError::Deny)
        };
        let (a, b) = (replica(), replica());
        assert!(a.first(&id(3)).await.unwrap());
        assert!(!b.first(&id(3)).await.unwrap(), "the other replica saw it");
        assert!(b.first(&id(4)).await.unwrap());
    }
}
