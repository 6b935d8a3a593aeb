//! Request ownership shared by every replica: `<prefix>:{<app|id>}:own` holds the hashed
//! principal that submitted request `id` on `app`, and expires by itself after its TTL.

use std::time::Duration;

use crate::redis::{tag_of, RedisStore, StoreError};

/// The Redis-backed ownership store.
#[derive(Clone)]
pub struct RedisOwnership {
    store: RedisStore,
}

impl RedisOwnership {
    /// Ownership over `store`.
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// True only when `principal` recorded request `id` on `app`. An unknown id is `false`,
    /// the same answer as another caller's id.
    pub async fn check(&self, principal: &str, app: &str, id: &str) -> Result<bool, StoreError> {
        let mut connection = self.store.connection();
        let owner: Option<String> = self
            .store
            .timed_as(
                "get",
                redis::cmd("GET").arg(self.key(app, id)).query_async(&mut connection),
            )
            .await?;
        Ok(owner.as_deref() == Some(tag_of(principal).as_str()))
    }

    /// Records that `principal` submitted request `id` on `app`, for `ttl`.
    pub async fn record(&self, principal: &str, app: &str, id: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut connection = self.store.connection();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.store
            .timed_as(
                "set",
                redis::cmd("SET")
                    .arg(self.key(app, id))
                    .arg(tag_of(principal))
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut connection),
            )
            .await
    }

    fn key(&self, app: &str, id: &str) -> String {
        self.store.key(&format!("{app}|{id}"), "own")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::RedisConfig;

    fn ownership(prefix: &str) -> RedisOwnership {
        let config = RedisConfig::for_tests(500, prefix);
        RedisOwnership::new(RedisStore::connect(&config).unwrap())
    }

    #[tokio::test]
    async fn only_the_submitter_owns_a_request_across_replicas() {
        let prefix = format!("test-own-{}", uuid::Uuid::new_v4());
        let (replica_a, replica_b) = (ownership(&prefix), ownership(&prefix));
        let ttl = Duration::from_secs(60);
        assert!(!replica_b.check("iss|alice", "fal-ai/flux", "r1").await.unwrap());
        replica_a.record("iss|alice", "fal-ai/flux", "r1", ttl).await.unwrap();
        assert!(replica_b.check("iss|alice", "fal-ai/flux", "r1").await.unwrap());
        assert!(!replica_b.check("iss|bob", "fal-ai/flux", "r1").await.unwrap());
        assert!(!replica_b.check("iss|alice", "fal-ai/other", "r1").await.unwrap());
    }

    /// Redis expires the key on its own clock; what falgate owns is that the key carries the
    /// configured TTL, read back exactly (no sleep waiting for Redis).
    #[tokio::test]
    async fn ownership_is_written_with_its_ttl() {
        let store = ownership(&format!("test-own-{}", uuid::Uuid::new_v4()));
        store
            .record("iss|alice", "fal-ai/flux", "r2", Duration::from_secs(90))
            .await
            .unwrap();
        let mut connection = store.store.connection();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(store.key("fal-ai/flux", "r2"))
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!((85_000..=90_000).contains(&pttl), "PTTL {pttl}");
        assert!(store.check("iss|alice", "fal-ai/flux", "r2").await.unwrap());
    }
}
