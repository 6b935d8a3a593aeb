//! Who owns which fal request: recorded when a submit succeeds (before its answer is sent),
//! checked before status, stream, result and cancel, so only the submitter can read or cancel a
//! request. An unknown id and another caller's id answer the same 404, so the answer is no oracle.
//!
//! Records live in process (bounded by `ownership.max_entries`, expiring after
//! `ownership.ttl_seconds`) and, with `[redis]`, in Redis too, so every replica sees them. When
//! Redis cannot answer, `limits.on_store_error` decides: `deny` → 503, `allow` → this replica's
//! own records only.
//!
//! Each caller's recent requests are indexed too ([`Summary`]: id, endpoint, submit time, last
//! known status and end), at most `ownership.per_caller` of them, expiring with the ownership
//! record: what `GET /api/fal/requests` lists. Callers are named here by their tag
//! ([`crate::redis::tag_of`] of the principal), the name the reconciler knows them by.
//! [`Ownership::finish`] records a request's end (a poll or stream that saw it, the reconciler,
//! fal's webhook); the first end learned wins, so it tells whoever learned it whether the news
//! is new (and worth an event).

mod index;
mod local;
pub mod redis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::fal::{AppId, EndpointId, FalRequestId};
use crate::limits::OnStoreError;
use index::LocalIndex;
use local::LocalRecords;
use redis::RedisOwnership;

/// Why an ownership question was refused (no HTTP: the edge, `error`, answers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// No request with this id was submitted by this caller on this app (or, under
    /// `on_store_error = "allow"`, the shared store could not say).
    #[error("no request with this id exists for this caller")]
    NotFound,
    /// The shared store could not answer, under `on_store_error = "deny"`.
    #[error("the shared state store is unavailable")]
    StoreDown,
}

/// Ownership memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnershipConfig {
    pub ttl: Duration,
    pub max_entries: u64,
    /// Requests indexed per caller (`GET /api/fal/requests`).
    pub per_caller: usize,
    /// Requests listed per page when the query names no `limit`.
    pub list_limit: usize,
    /// The largest `limit` a query may name (at most 100).
    pub list_max: usize,
}

/// The ownership store.
pub struct Ownership {
    local: LocalRecords,
    index: LocalIndex,
    shared: Option<RedisOwnership>,
    on_error: OnStoreError,
    config: OwnershipConfig,
    clock: Clock,
}

/// How a request ended, as far as falgate learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed with an output.
    Ok,
    /// Completed with an error of this type (fal's `error_type`, or `error`).
    Error(String),
    /// Ended, how is not known (the reconciler and a cancel only learn that it ended).
    Unknown,
}

impl Outcome {
    /// An error type as fal names it, cut to a bounded plain token (it is stored and sent on).
    pub fn error(raw: &str) -> Self {
        let clean: String = raw
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(64)
            .collect();
        Self::Error(if clean.is_empty() { "error".into() } else { clean })
    }

    /// `"ok"`, `"error"`, or none.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Self::Ok => Some("ok"),
            Self::Error(_) => Some("error"),
            Self::Unknown => None,
        }
    }
}

/// One indexed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// fal's request id.
    pub id: String,
    /// The endpoint it was submitted to.
    pub endpoint: String,
    /// Submit time, Unix ms (the submitting replica's clock).
    pub submitted_ms: u64,
    /// Last known status: `IN_QUEUE` at submit, `COMPLETED` once an end is known.
    pub status: String,
    /// `ok` or `error` once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The error's type when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// When falgate learned it ended, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
}

/// A request's end, as stored beside its summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct End {
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_type: Option<String>,
    completed_ms: u64,
}

impl End {
    fn of(outcome: &Outcome, now_ms: u64) -> Self {
        Self {
            status: "COMPLETED".into(),
            outcome: outcome.label().map(str::to_owned),
            error_type: match outcome {
                Outcome::Error(kind) => Some(kind.clone()),
                Outcome::Ok | Outcome::Unknown => None,
            },
            completed_ms: now_ms,
        }
    }
}

impl Summary {
    /// A request just submitted.
    pub fn submitted(id: String, endpoint: String, submitted_ms: u64) -> Self {
        Self {
            id,
            endpoint,
            submitted_ms,
            status: "IN_QUEUE".into(),
            outcome: None,
            error_type: None,
            completed_ms: None,
        }
    }

    fn finish(&mut self, outcome: &Outcome, now_ms: u64) {
        self.apply(&End::of(outcome, now_ms));
    }

    fn apply(&mut self, end: &End) {
        self.status.clone_from(&end.status);
        self.outcome.clone_from(&end.outcome);
        self.error_type.clone_from(&end.error_type);
        self.completed_ms = Some(end.completed_ms);
    }

    /// The app its status, result and cancel are addressed to.
    pub fn app(&self) -> Option<AppId> {
        EndpointId::parse(&self.endpoint).ok().map(|e| e.app())
    }
}

impl Ownership {
    /// A store with the configured bounds, shared through Redis when given.
    pub fn new(config: OwnershipConfig, shared: Option<RedisOwnership>, on_error: OnStoreError) -> Self {
        Self::with_clock(config, shared, on_error, Clock::system())
    }

    /// [`Self::new`] with this replica's records expiring on `clock` (Redis keys expire on
    /// Redis's own clock).
    pub fn with_clock(
        config: OwnershipConfig,
        shared: Option<RedisOwnership>,
        on_error: OnStoreError,
        clock: Clock,
    ) -> Self {
        let local = LocalRecords::new(config.max_entries, config.ttl, clock.clone());
        let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            local,
            index: LocalIndex::new(config.per_caller, config.max_entries, ttl_ms),
            shared,
            on_error,
            config,
            clock,
        }
    }

    /// Now, Unix ms, on this store's clock.
    pub fn now_ms(&self) -> u64 {
        let since = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// The settings in force.
    pub fn config(&self) -> &OwnershipConfig {
        &self.config
    }

    /// Passes only when `principal` (a caller's `issuer|sub`) submitted request `id` on `app`.
    pub async fn check(&self, principal: &str, app: &AppId, id: &FalRequestId) -> Result<(), OwnershipError> {
        // This replica's own records are authoritative for it, even while Redis is away.
        if self.local.owned_by(principal, app, id) {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return Err(OwnershipError::NotFound);
        };
        // Boxed, like every shared-store call on the request path: inline, a Redis call's
        // future would size every call's future (in-process mode included).
        match Box::pin(shared.check(principal, app.as_str(), id.as_str())).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(OwnershipError::NotFound),
            Err(err) => {
                tracing::warn!(error = %err, "ownership store unavailable");
                match self.on_error {
                    OnStoreError::Deny => Err(OwnershipError::StoreDown),
                    OnStoreError::Allow => Err(OwnershipError::NotFound),
                }
            }
        }
    }

    /// Records that `principal` submitted request `id` to `endpoint`, and indexes it under the
    /// caller's tag; returns the summary indexed. A Redis failure is logged, not returned: fal
    /// has queued the job, and answering an error would invite a second submit.
    pub async fn record(&self, principal: &str, endpoint: &EndpointId, id: &FalRequestId) -> Summary {
        let app = endpoint.app();
        let tag = crate::redis::tag_of(principal);
        let now_ms = self.now_ms();
        let summary = Summary::submitted(id.as_str().to_owned(), endpoint.as_str().to_owned(), now_ms);
        if let Some(shared) = &self.shared {
            // Two single-slot steps, independent, sent at once: the request's record (its own
            // tag) and the caller's index.
            let (recorded, indexed) = Box::pin(async {
                tokio::join!(
                    shared.record(principal, app.as_str(), id.as_str(), self.config.ttl),
                    shared.index(&tag, &summary, self.config.per_caller, self.config.ttl, now_ms)
                )
            })
            .await;
            if let Err(err) = recorded {
                tracing::error!(error = %err, request = %id, "ownership not shared: other replicas will answer 404 for this request");
            }
            if let Err(err) = indexed {
                tracing::error!(error = %err, request = %id, "request not indexed in the shared store: other replicas will not list it");
            }
        }
        self.local.insert(principal, &app, id);
        self.index.insert(&tag, summary.clone(), now_ms);
        summary
    }

    /// Records that request `id` of the caller tagged `tag` ended with `outcome`: its summary,
    /// ended, when this is the first end learned of a request still indexed (in the shared
    /// store when there is one, so one replica's news counts once everywhere), else `None`.
    pub async fn finish(&self, tag: &str, id: &FalRequestId, outcome: &Outcome) -> Option<Summary> {
        let now_ms = self.now_ms();
        let local = self.index.finish(tag, id.as_str(), outcome, now_ms);
        let Some(shared) = &self.shared else {
            return local;
        };
        match Box::pin(shared.finish(tag, id.as_str(), &End::of(outcome, now_ms))).await {
            Ok(first) => first,
            Err(err) => {
                tracing::warn!(error = %err, "request end not recorded in the shared store");
                local
            }
        }
    }

    /// The caller's live indexed requests, newest first (ties by id, descending). With Redis,
    /// the shared index; when it cannot answer, `limits.on_store_error` decides: `deny` → 503,
    /// `allow` → this replica's own index.
    pub async fn recent(&self, tag: &str) -> Result<Vec<Summary>, OwnershipError> {
        let now_ms = self.now_ms();
        let mut summaries = match &self.shared {
            None => self.index.recent(tag, now_ms),
            Some(shared) => match shared.recent(tag).await {
                Ok(summaries) => summaries,
                Err(err) => {
                    tracing::warn!(error = %err, "request index unavailable");
                    match self.on_error {
                        OnStoreError::Deny => return Err(OwnershipError::StoreDown),
                        OnStoreError::Allow => self.index.recent(tag, now_ms),
                    }
                }
            },
        };
        let cutoff = now_ms.saturating_sub(u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX));
        summaries.retain(|s| s.submitted_ms > cutoff);
        summaries.sort_unstable_by(|a, b| (b.submitted_ms, &b.id).cmp(&(a.submitted_ms, &a.id)));
        summaries.truncate(self.config.per_caller);
        Ok(summaries)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::Caller;
    use crate::error::OnTheWire;

    fn flux() -> EndpointId {
        EndpointId::parse("fal-ai/flux").unwrap()
    }

    #[tokio::test]
    async fn only_the_submitter_passes_the_check() {
        let config = OwnershipConfig {
            ttl: Duration::from_secs(60),
            max_entries: 10,
            per_caller: 10,
            list_limit: 20,
            list_max: 100,
        };
        let store = Ownership::new(config, None, OnStoreError::Deny);
        let app = AppId::from_segments(&["fal-ai", "flux"]).unwrap();
        let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let caller = |issuer: &str, subject: &str| Caller {
            issuer: issuer.into(),
            subject: subject.into(),
            tier: "default".into(),
            scopes: Vec::new().into(),
        };
        let (alice, bob, alice_elsewhere) = (
            caller("default", "alice"),
            caller("default", "bob"),
            caller("auth0", "alice"),
        );
        assert!(store.check(&alice.principal(), &app, &id).await.is_err());
        store.record(&alice.principal(), &flux(), &id).await;
        assert!(store.check(&alice.principal(), &app, &id).await.is_ok());
        assert_eq!(
            store.check(&bob.principal(), &app, &id).await.unwrap_err().code(),
            "request_not_found"
        );
        assert!(
            store.check(&alice_elsewhere.principal(), &app, &id).await.is_err(),
            "same sub, other issuer"
        );
        let other_app = AppId::from_segments(&["fal-ai", "other"]).unwrap();
        assert!(store.check(&alice.principal(), &other_app, &id).await.is_err());
    }

    /// With Redis down, this replica's own records still answer in both modes; an id it does
    /// not hold is 503 under `deny` (Redis might know it) and 404 under `allow`.
    #[tokio::test]
    async fn with_redis_down_local_records_answer_and_the_mode_decides_the_rest() {
        use crate::redis::chaos::ChaosProxy;
        use crate::redis::{RedisConfig, RedisStore};
        let proxy = ChaosProxy::start("127.0.0.1:6379".parse().unwrap()).await.unwrap();
        let app = AppId::from_segments(&["fal-ai", "flux"]).unwrap();
        let mine = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let unknown = FalRequestId::parse("00000000-0000-4000-8000-000000000001").unwrap();
        let config = OwnershipConfig {
            ttl: Duration::from_secs(60),
            max_entries: 10,
            per_caller: 10,
            list_limit: 20,
            list_max: 100,
        };
        let redis = RedisConfig::single(format!("redis://{}", proxy.addr))
            .with(200, format!("test-own-{}", uuid::Uuid::new_v4()));
        for (mode, unknown_code) in [
            (OnStoreError::Deny, "dependency_unavailable"),
            (OnStoreError::Allow, "request_not_found"),
        ] {
            let shared = RedisOwnership::new(RedisStore::connect(&redis).unwrap());
            let store = Ownership::new(config, Some(shared), mode);
            store.record("default|alice", &flux(), &mine).await;
            proxy.cut();
            assert!(store.check("default|alice", &app, &mine).await.is_ok(), "{mode:?}");
            let refused = store.check("default|alice", &app, &unknown).await.unwrap_err();
            assert_eq!(refused.code(), unknown_code, "{mode:?}");
            let other = store.check("default|bob", &app, &mine).await.unwrap_err();
            assert_eq!(other.code(), unknown_code, "{mode:?}: another caller's id");
            proxy.restore();
        }
    }
}
