//! The jobs falgate submitted with its own hook, by request id: whose slot and spend each holds
//! (the caller's hash tag, never the principal), its app, what it spent of the day quota, and
//! the caller's own `fal_webhook` to forward the delivery to. Written when fal accepts the
//! submit (`pipeline`), read when a delivery arrives: a delivery for a request id falgate never
//! submitted is refused, and the first delivery applied consumes the record. With `[redis]`, one key per job, `<prefix>:{<tag>}:job` (JSON, expiring
//! with the ownership record, `ownership.ttl_seconds`), so any replica can receive its
//! delivery; each replica also keeps its own (bounded by `max_tracked`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Refusal;
use crate::fal::FalRequestId;
use crate::limits::reconcile::JobSpend;
use crate::limits::OnStoreError;
use crate::redis::RedisStore;

/// One submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The submitter's hash tag (`redis::tag_of` of `iss|sub`).
    pub tag: String,
    /// The app its status is addressed under (`[ns/]owner/alias`).
    pub app: String,
    /// What it spent of the day quota.
    pub spend: Option<JobSpend>,
    /// The caller's own allowlisted `fal_webhook`, forwarded to once a delivery is verified.
    pub hook: Option<String>,
}

pub(crate) struct Submissions {
    local: moka::sync::Cache<String, Arc<Submitted>>,
    redis: Option<RedisStore>,
    ttl: Duration,
    on_error: OnStoreError,
}

impl Submissions {
    pub(crate) fn new(max: u64, ttl: Duration, redis: Option<RedisStore>, on_error: OnStoreError) -> Self {
        Self {
            local: moka::sync::Cache::builder().max_capacity(max).time_to_live(ttl).build(),
            redis,
            ttl,
            on_error,
        }
    }

    /// Records job `id`. A Redis failure is logged: fal queued the job, and the reconciler
    /// still frees its slot if no replica can apply its delivery.
    pub(crate) async fn record(&self, id: &FalRequestId, job: Submitted) {
        if let Some(redis) = &self.redis {
            let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let value = serde_json::to_string(&job).unwrap_or_default();
            let mut connection = redis.connection();
            let set = redis
                .timed_as(
                    "set",
                    redis::cmd("SET")
                        .arg(key(redis, id))
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(&mut connection),
                )
                .await;
            if let Err(err) = set {
                tracing::error!(error = %err, request = %id, "webhook job not shared: other replicas will refuse its delivery");
            }
        }
        self.local.insert(id.as_str().to_owned(), Arc::new(job));
    }

    /// The job `id`, if falgate submitted it. Redis down: `deny` refuses (fal retries later),
    /// `allow` answers from this replica's own records.
    pub(crate) async fn lookup(&self, id: &FalRequestId) -> Result<Option<Arc<Submitted>>, Refusal> {
        if let Some(job) = self.local.get(id.as_str()) {
            return Ok(Some(job));
        }
        let Some(redis) = &self.redis else {
            return Ok(None);
        };
        let mut connection = redis.connection();
        let got: Result<Option<String>, _> = redis
            .timed_as(
                "get",
                redis::cmd("GET").arg(key(redis, id)).query_async(&mut connection),
            )
            .await;
        match got {
            // A record that does not parse was not written by this falgate: unknown.
            Ok(raw) => Ok(raw.and_then(|raw| serde_json::from_str(&raw).ok()).map(Arc::new)),
            Err(err) => {
                tracing::warn!(error = %err, "webhook job store unavailable");
                match self.on_error {
                    OnStoreError::Deny => Err(Refusal::StoreDown),
                    OnStoreError::Allow => Ok(None),
                }
            }
        }
    }
}

impl Submissions {
    /// Consumes job `id`'s record once its first delivery is applied: true when this call
    /// removed it (from this replica or from Redis). A delivery that consumes nothing applies
    /// nothing, so a copy of a delivery whose mark is gone (evicted from a full in-process set,
    /// or expired) cannot free or refund twice. Redis down: true (the delivery mark just set
    /// in Redis decides).
    pub(crate) async fn take(&self, id: &FalRequestId) -> bool {
        let local = self.local.remove(id.as_str()).is_some();
        let Some(redis) = &self.redis else {
            return local;
        };
        let mut connection = redis.connection();
        let deleted: Result<u64, _> = redis
            .timed_as(
                "del",
                redis::cmd("DEL").arg(key(redis, id)).query_async(&mut connection),
            )
            .await;
        match deleted {
            Ok(count) => local || count > 0,
            Err(err) => {
                tracing::warn!(error = %err, "webhook job store unavailable: the delivery mark decides");
                true
            }
        }
    }
}

fn key(redis: &RedisStore, id: &FalRequestId) -> String {
    redis.key(&format!("webhook|{id}"), "job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_is_consumed_once() {
        let jobs = Submissions::new(10, Duration::from_secs(60), None, OnStoreError::Deny);
        let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let job = Submitted {
            tag: "t".into(),
            app: "fal-ai/flux".into(),
            spend: None,
            hook: None,
        };
        jobs.record(&id, job.clone()).await;
        assert_eq!(jobs.lookup(&id).await.unwrap().as_deref(), Some(&job));
        assert!(jobs.take(&id).await);
        assert!(!jobs.take(&id).await, "consumed");
        assert_eq!(jobs.lookup(&id).await.unwrap(), None);
    }
}
