//! A run's in-flight reservation: given back when fal clearly did not take the call, freed when
//! the run ends, or freed at once by a [`RunGuard`] when the client goes away first.

use std::sync::Arc;

use super::memory::MemoryStore;
use super::redis::RedisLimits;
use super::{Admission, Limiter, StoreErrorLog};

impl Limiter {
    /// A submit fal clearly did not take (it answered with an error): free its concurrency slot
    /// and give back its request and credits. Never call it when the outcome is unknown.
    pub async fn refund_inflight(&self, admission: &Admission) {
        let reservation = admission.reservation.as_deref().unwrap_or("");
        self.release(&admission.tag, reservation, None, admission.refund).await;
    }

    /// A call that held its slot only while it ran (a sync run fal answered): free the slot and
    /// keep the spend.
    pub async fn run_finished(&self, admission: &Admission) {
        if let Some(reservation) = &admission.reservation {
            self.release(&admission.tag, reservation, None, None).await;
        }
    }

    /// A guard over the in-flight reservation of a call that holds it only while it runs (a
    /// sync or streaming run): dropped before [`RunGuard::disarm`] (the client went away and its
    /// handler was dropped before fal answered), it frees the reservation at once, keeping the
    /// spend, instead of leaving it held for `inflight_ttl_seconds`.
    pub fn run_guard(&self, admission: &Admission) -> RunGuard {
        RunGuard {
            held: admission.reservation.clone().map(|reservation| HeldRun {
                tag: admission.tag.clone(),
                reservation,
                memory: self.memory.clone(),
                redis: self.redis.clone(),
                errors: self.errors.clone(),
            }),
        }
    }
}

/// Frees a run's in-flight reservation when dropped armed ([`Limiter::run_guard`]).
#[must_use = "dropping the guard frees the reservation"]
pub struct RunGuard {
    held: Option<HeldRun>,
}

struct HeldRun {
    tag: String,
    reservation: String,
    memory: Arc<MemoryStore>,
    redis: Option<Arc<RedisLimits>>,
    errors: Arc<StoreErrorLog>,
}

impl RunGuard {
    /// The call's bookkeeping ran: it decides what happens to the reservation.
    pub fn disarm(mut self) {
        self.held = None;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        let Some(redis) = held.redis.clone() else {
            held.memory.release(&held.tag, &held.reservation, None, None);
            return;
        };
        // Drop cannot wait: the shared release runs on its own (bounded by the store timeout).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = redis.release(&held.tag, &held.reservation, None, None).await {
                    held.errors.log(&err);
                }
            });
        }
    }
}
