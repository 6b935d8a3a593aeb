//! Who owns which fal request: recorded when a submit succeeds (before its answer is sent),
//! checked before status, stream, result and cancel, so only the submitter can read or cancel a
//! request. An unknown id and another caller's id answer the same 404, so the answer is no oracle.
//!
//! Records live in process (bounded by `ownership.max_entries`, expiring after
//! `ownership.ttl_seconds`) and, with `[redis]`, in Redis too, so every replica sees them. When
//! Redis cannot answer, `limits.on_store_error` decides: `deny` → 503, `allow` → this replica's
//! own records only.

mod local;
pub mod redis;

use std::time::Duration;

use crate::clock::Clock;
use crate::error::GateError;
use crate::fal::{AppId, FalRequestId};
use crate::limits::OnStoreError;
use local::LocalRecords;
use redis::RedisOwnership;

/// Ownership memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnershipConfig {
    pub ttl: Duration,
    pub max_entries: u64,
}

/// The ownership store.
pub struct Ownership {
    local: LocalRecords,
    shared: Option<RedisOwnership>,
    on_error: OnStoreError,
    config: OwnershipConfig,
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
        let local = LocalRecords::new(config.max_entries, config.ttl, clock);
        Self {
            local,
            shared,
            on_error,
            config,
        }
    }

    /// Passes only when `principal` (a caller's `issuer|sub`) submitted request `id` on `app`.
    pub async fn check(&self, principal: &str, app: &AppId, id: &FalRequestId) -> Result<(), GateError> {
        // This replica's own records are authoritative for it, even while Redis is away.
        if self.local.owned_by(principal, app, id) {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return Err(GateError::RequestNotFound);
        };
        match shared.check(principal, app.as_str(), id.as_str()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(GateError::RequestNotFound),
            Err(err) => {
                tracing::warn!(error = %err, "ownership store unavailable");
                match self.on_error {
                    OnStoreError::Deny => Err(GateError::DependencyDown("the shared state store")),
                    OnStoreError::Allow => Err(GateError::RequestNotFound),
                }
            }
        }
    }

    /// Records that `principal` submitted request `id` on `app`. A Redis failure is logged, not
    /// returned: fal has queued the job, and answering an error would invite a second submit.
    pub async fn record(&self, principal: &str, app: &AppId, id: &FalRequestId) {
        if let Some(shared) = &self.shared {
            if let Err(err) = shared
                .record(principal, app.as_str(), id.as_str(), self.config.ttl)
                .await
            {
                tracing::error!(error = %err, request = %id, "ownership not shared: other replicas will answer 404 for this request");
            }
        }
        self.local.insert(principal, app, id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::Caller;

    #[tokio::test]
    async fn only_the_submitter_passes_the_check() {
        let config = OwnershipConfig {
            ttl: Duration::from_secs(60),
            max_entries: 10,
        };
        let store = Ownership::new(config, None, OnStoreError::Deny);
        let app = AppId::from_segments(&["fal-ai", "flux"]).unwrap();
        let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let caller = |issuer: &str, subject: &str| Caller {
            issuer: issuer.into(),
            subject: subject.into(),
            tier: "default".into(),
            scopes: Vec::new(),
        };
        let (alice, bob, alice_elsewhere) = (
            caller("default", "alice"),
            caller("default", "bob"),
            caller("auth0", "alice"),
        );
        assert!(store.check(&alice.principal(), &app, &id).await.is_err());
        store.record(&alice.principal(), &app, &id).await;
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
        };
        let redis = RedisConfig::single(format!("redis://{}", proxy.addr))
            .with(200, format!("test-own-{}", uuid::Uuid::new_v4()));
        for (mode, unknown_code) in [
            (OnStoreError::Deny, "dependency_unavailable"),
            (OnStoreError::Allow, "request_not_found"),
        ] {
            let shared = RedisOwnership::new(RedisStore::connect(&redis).unwrap());
            let store = Ownership::new(config, Some(shared), mode);
            store.record("default|alice", &app, &mine).await;
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
