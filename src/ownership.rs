//! Who owns which fal request: recorded when a submit succeeds, checked before status, stream,
//! result and cancel, so only the submitter can read or cancel a request. An unknown id and
//! another caller's id answer the same 404, so the answer is no oracle.
//!
//! This is the in-process store (bounded, entries expire after `TTL`).

use std::time::Duration;

use moka::sync::Cache;

use crate::auth::Caller;
use crate::error::GateError;
use crate::fal::{AppId, FalRequestId};

/// How long ownership is remembered; fal keeps results for a limited time too.
const TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most requests remembered at once.
const CAPACITY: u64 = 1_000_000;

/// The ownership store.
pub struct Ownership {
    owners: Cache<(AppId, FalRequestId), String>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            owners: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        }
    }
}

impl Ownership {
    /// Passes only when `caller` submitted request `id` on `app`.
    pub fn check(&self, caller: &Caller, app: &AppId, id: &FalRequestId) -> Result<(), GateError> {
        match self.owners.get(&(app.clone(), id.clone())) {
            Some(owner) if owner == caller.sub => Ok(()),
            _ => Err(GateError::RequestNotFound),
        }
    }

    /// Records that `caller` submitted request `id` on `app`.
    pub fn record(&self, caller: &Caller, app: AppId, id: FalRequestId) {
        self.owners.insert((app, id), caller.sub.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_submitter_passes_the_check() {
        let store = Ownership::default();
        let app = AppId::from_segments(&["fal-ai", "flux"]).unwrap();
        let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let alice = Caller {
            sub: "alice".into(),
            tier: None,
        };
        let bob = Caller {
            sub: "bob".into(),
            tier: None,
        };
        assert!(store.check(&alice, &app, &id).is_err());
        store.record(&alice, app.clone(), id.clone());
        assert!(store.check(&alice, &app, &id).is_ok());
        assert_eq!(
            store.check(&bob, &app, &id).unwrap_err().code(),
            "request_not_found"
        );
        let other_app = AppId::from_segments(&["fal-ai", "other"]).unwrap();
        assert!(store.check(&alice, &other_app, &id).is_err());
    }
}
