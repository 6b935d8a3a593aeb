//! Who owns which fal request: recorded when a submit succeeds, checked before status, stream,
//! result and cancel, so only the submitter can read or cancel a request. An unknown id and
//! another caller's id answer the same 404, so the answer is no oracle.
//!
//! This is the in-process store (bounded by `ownership.max_entries`, entries expire after
//! `ownership.ttl_seconds`).

use moka::sync::Cache;

use crate::auth::Caller;
use crate::config::OwnershipConfig;
use crate::error::GateError;
use crate::fal::{AppId, FalRequestId};

/// The ownership store.
pub struct Ownership {
    owners: Cache<(AppId, FalRequestId), String>,
}

impl Ownership {
    /// An empty store with the configured bounds.
    pub fn new(config: OwnershipConfig) -> Self {
        Self {
            owners: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build(),
        }
    }

    /// Passes only when `caller` submitted request `id` on `app`.
    pub fn check(&self, caller: &Caller, app: &AppId, id: &FalRequestId) -> Result<(), GateError> {
        match self.owners.get(&(app.clone(), id.clone())) {
            Some(owner) if owner == caller.principal() => Ok(()),
            _ => Err(GateError::RequestNotFound),
        }
    }

    /// Records that `caller` submitted request `id` on `app`.
    pub fn record(&self, caller: &Caller, app: AppId, id: FalRequestId) {
        self.owners.insert((app, id), caller.principal());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_submitter_passes_the_check() {
        let store = Ownership::new(OwnershipConfig {
            ttl: std::time::Duration::from_secs(60),
            max_entries: 10,
        });
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
        assert!(store.check(&alice, &app, &id).is_err());
        store.record(&alice, app.clone(), id.clone());
        assert!(store.check(&alice, &app, &id).is_ok());
        assert_eq!(store.check(&bob, &app, &id).unwrap_err().code(), "request_not_found");
        assert!(
            store.check(&alice_elsewhere, &app, &id).is_err(),
            "same sub, other issuer"
        );
        let other_app = AppId::from_segments(&["fal-ai", "other"]).unwrap();
        assert!(store.check(&alice, &other_app, &id).is_err());
    }
}
