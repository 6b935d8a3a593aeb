//! Deliveries already applied, by request id: fal retries a delivery (up to 10 times) until it
//! gets a 2xx, and a retry may reach another replica, so only the first verified delivery of a
//! request has an effect. With `[redis]`, one `SET NX PX` on `<prefix>:{<tag>}:delivered` (one
//! key, one hash tag: a single Redis Cluster slot) decides across replicas; else a bounded
//! in-process set (`max_tracked`, expiring after `dedup_ttl`). With Redis down, a delivery is
//! refused (503, fal retries later) whatever `on_store_error` says: the mark guards a refund.
//! A request is marked before its effect runs, so two deliveries racing never both apply (a
//! refund is not idempotent); if the effect then fails half-way, the reconciler still frees the
//! slot.

use std::time::Duration;

use crate::fal::FalRequestId;
use crate::redis::RedisStore;

use super::Refusal;

pub(crate) struct Deliveries {
    local: moka::sync::Cache<String, ()>,
    redis: Option<RedisStore>,
    ttl: Duration,
}

impl Deliveries {
    pub(crate) fn new(max: u64, ttl: Duration, redis: Option<RedisStore>) -> Self {
        Self {
            local: moka::sync::Cache::builder().max_capacity(max).time_to_live(ttl).build(),
            redis,
            ttl,
        }
    }

    /// Whether a delivery of request `id` was marked (a copy of one already applied, whose
    /// job record it consumed). Redis down: refused, as [`Self::first`].
    pub(crate) async fn seen(&self, id: &FalRequestId) -> Result<bool, Refusal> {
        let Some(redis) = &self.redis else {
            return Ok(self.local.contains_key(id.as_str()));
        };
        let key = redis.key(&format!("webhook|{id}"), "delivered");
        let mut connection = redis.connection();
        let exists: Result<u64, _> = redis
            .timed_as("exists", redis::cmd("EXISTS").arg(&key).query_async(&mut connection))
            .await;
        exists.map(|count| count > 0).map_err(|err| {
            tracing::warn!(error = %err, "webhook delivery store unavailable");
            Refusal::StoreDown
        })
    }

    /// Marks request `id` delivered; true when no delivery of it was marked before. Redis down:
    /// refused whatever `on_store_error` says (fal retries later): the mark guards a refund,
    /// and this replica's own set cannot tell whether another replica applied it.
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
                Err(Refusal::StoreDown)
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
        let deliveries = Deliveries::new(10, Duration::from_secs(60), None);
        assert!(deliveries.first(&id(1)).await.unwrap());
        assert!(!deliveries.first(&id(1)).await.unwrap());
        assert!(deliveries.first(&id(2)).await.unwrap());
        assert!(deliveries.seen(&id(1)).await.unwrap());
        assert!(!deliveries.seen(&id(3)).await.unwrap());
    }

    #[tokio::test]
    async fn with_redis_a_delivery_seen_by_another_replica_is_not_first() {
        let config = crate::redis::RedisConfig::for_tests(500, format!("test-wh-{}", uuid::Uuid::new_v4()));
        let replica = || {
            let store = RedisStore::connect(&config).unwrap();
            Deliveries::new(10, Duration::from_secs(60), Some(store))
        };
        let (a, b) = (replica(), replica());
        assert!(a.first(&id(3)).await.unwrap());
        assert!(!b.first(&id(3)).await.unwrap(), "the other replica saw it");
        assert!(b.first(&id(4)).await.unwrap());
        assert!(a.seen(&id(4)).await.unwrap(), "marked by the other replica");
    }

    #[tokio::test]
    async fn with_redis_down_a_delivery_is_refused_not_decided_alone() {
        use crate::redis::chaos::ChaosProxy;
        let proxy = ChaosProxy::start("127.0.0.1:6379".parse().unwrap()).await.unwrap();
        let config = crate::redis::RedisConfig::single(format!("redis://{}", proxy.addr))
            .with(200, format!("test-wh-{}", uuid::Uuid::new_v4()));
        let deliveries = Deliveries::new(10, Duration::from_secs(60), Some(RedisStore::connect(&config).unwrap()));
        assert!(deliveries.first(&id(5)).await.unwrap());
        proxy.cut();
        assert_eq!(deliveries.first(&id(6)).await, Err(Refusal::StoreDown));
        proxy.restore();
    }
}
