//! Request ownership shared by every replica: `<prefix>:{<app|id>}:own` holds the hashed
//! principal that submitted request `id` on `app`, and expires by itself after its TTL.
//!
//! Each caller's index of recent requests lives under the caller's own hash tag (one Redis
//! Cluster slot per caller): `<prefix>:{<caller tag>}:reqs`, a sorted set of request ids by
//! submit time (ms), and `<prefix>:{<caller tag>}:reqinfo`, a hash of each id's summary JSON
//! and, once known, its end (`<id>:end`). `index.lua` adds a request and trims the index to its
//! bound and the ownership TTL; `outcome.lua` records the first end learned. A submit writes the
//! ownership record and then the index: two single-slot steps, never one cross-slot script.

use std::time::Duration;

use redis::Script;

use super::{End, Summary};
use crate::redis::{tag_of, RedisStore, StoreError};

/// The Redis-backed ownership store.
#[derive(Clone)]
pub struct RedisOwnership {
    store: RedisStore,
    index: Script,
    outcome: Script,
}

impl RedisOwnership {
    /// Ownership over `store`.
    pub fn new(store: RedisStore) -> Self {
        Self {
            store,
            index: Script::new(include_str!("index.lua")),
            outcome: Script::new(include_str!("outcome.lua")),
        }
    }

    /// Adds `summary` to caller `tag`'s index, keeping at most `per_caller` requests younger
    /// than `ttl` (at `now_ms`).
    pub(super) async fn index(
        &self,
        tag: &str,
        summary: &Summary,
        per_caller: usize,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(summary).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let mut connection = self.store.connection();
        let mut invocation = self.index.prepare_invoke();
        invocation
            .key(self.store.tagged(tag, "reqs"))
            .key(self.store.tagged(tag, "reqinfo"))
            .arg(&summary.id)
            .arg(summary.submitted_ms)
            .arg(json)
            .arg(per_caller.max(1))
            .arg(ttl_ms(ttl))
            .arg(now_ms);
        self.store
            .timed_as("requests_index", invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }

    /// Records `end` for request `id` of caller `tag`: its summary (ended) when this is the
    /// first end learned of a request the index holds.
    pub(super) async fn finish(&self, tag: &str, id: &str, end: &End) -> Result<Option<Summary>, StoreError> {
        let json = serde_json::to_string(end).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let mut connection = self.store.connection();
        let mut invocation = self.outcome.prepare_invoke();
        invocation.key(self.store.tagged(tag, "reqinfo")).arg(id).arg(json);
        let summary: Option<String> = self
            .store
            .timed_as("requests_outcome", invocation.invoke_async(&mut connection))
            .await?;
        Ok(summary.and_then(|raw| {
            let mut summary: Summary = serde_json::from_str(&raw).ok()?;
            summary.apply(end);
            Some(summary)
        }))
    }

    /// Caller `tag`'s indexed requests (unordered, expired ones included: the caller filters).
    pub(super) async fn recent(&self, tag: &str) -> Result<Vec<Summary>, StoreError> {
        let mut connection = self.store.connection();
        let fields: std::collections::HashMap<String, String> = self
            .store
            .timed_as(
                "requests_list",
                redis::cmd("HGETALL")
                    .arg(self.store.tagged(tag, "reqinfo"))
                    .query_async(&mut connection),
            )
            .await?;
        let mut out = Vec::with_capacity(fields.len() / 2 + 1);
        for (field, raw) in &fields {
            if field.ends_with(":end") {
                continue;
            }
            let Ok(mut summary) = serde_json::from_str::<Summary>(raw) else {
                continue;
            };
            if let Some(end) = fields
                .get(&format!("{field}:end"))
                .and_then(|raw| serde_json::from_str::<End>(raw).ok())
            {
                summary.apply(&end);
            }
            out.push(summary);
        }
        Ok(out)
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
        let ttl_ms = ttl_ms(ttl);
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

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
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
