//! Admission before the body, where it saves a round trip: with Redis, a call whose price is
//! known before its input is read is admitted at the precheck step ([`Limiter::precheck_or_admit`])
//! instead of being checked there and admitted after validation: one `admit.lua` round trip
//! instead of two on the hot path. The admission is undone exactly when the call is refused
//! before it reaches fal ([`EarlyAdmission::undo`]: `release.lua` gives back the reservation, the
//! day's request and credits and the call's place in its rate), so a refused input still
//! consumes nothing; a body that timed out keeps its rate spent, as
//! [`Limiter::spend_rate`] charges it otherwise. Dropped unsettled (the client went away while
//! its body was read), it is undone by a spawned task.
//!
//! Everything else keeps the two steps: in-process limits (memory is cheap, so a check that
//! consumes nothing costs nothing), a call priced by its input (the real price is known only
//! after validation), a call with an endpoint-wide rate (a second step whose place
//! `release.lua` cannot give back) and a call that opens a stream or relay slot (opened before
//! admission, so a call refused for want of a slot consumes nothing).
//!
//! In the window between the early admission and the call's refusal, a concurrent call of the
//! same caller sees the spend: at most one body read of extra strictness, never more admitted.

use std::sync::Arc;

use super::redis::RedisLimits;
use super::{Admission, LimitError, Limiter, OpClass, StoreErrorLog, Subject};

/// What the precheck step left.
pub enum Prechecked {
    /// Checked, nothing consumed: `Limiter::admit` decides once the input is read.
    Checked,
    /// Admitted already, at the call's fixed price.
    Admitted(EarlyAdmission),
}

impl Prechecked {
    /// The early admission, if there is one.
    pub fn admitted(self) -> Option<EarlyAdmission> {
        match self {
            Self::Checked => None,
            Self::Admitted(early) => Some(early),
        }
    }
}

/// A call admitted before its body was read ([`Limiter::precheck_or_admit`]): settled by
/// [`Self::into_admission`] when the call goes on to fal, by [`Self::undo`] when it is refused
/// first; dropped unsettled, undone by a spawned task.
#[must_use = "dropping an early admission undoes it"]
pub struct EarlyAdmission {
    held: Option<Held>,
}

struct Held {
    admission: Admission,
    /// The caller's rate step of the call's class, when the admission consumed one.
    rate: Option<(OpClass, u64)>,
    redis: Arc<RedisLimits>,
    errors: Arc<StoreErrorLog>,
}

/// Whether an undone admission gives back the call's place in its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// A call refused for its input, or by a later check: it consumed nothing.
    Everything,
    /// A body that did not arrive in time: its rate stays spent, the rest is given back.
    KeepRate,
}

impl Limiter {
    /// The precheck of a call with a body. With Redis and `fixed_credits` (the call's price does
    /// not depend on its input), no endpoint-wide rate and no slot to open, the call is admitted
    /// now, in one round trip ([`Prechecked::Admitted`]); otherwise its limits are checked at
    /// the `floor` price without consuming, as [`Self::precheck_priced`].
    pub async fn precheck_or_admit(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        floor: u64,
        fixed_credits: Option<u64>,
    ) -> Result<Prechecked, LimitError> {
        let early = match (&self.redis, fixed_credits) {
            (Some(redis), Some(credits)) if !self.endpoint_rated(endpoint) => Some((redis, credits)),
            _ => None,
        };
        let Some((redis, credits)) = early else {
            return self
                .precheck_priced(who, class, endpoint, floor)
                .await
                .map(|()| Prechecked::Checked);
        };
        let (admission, rate_consumed) = self
            .admit_with_rate_at(who, class, endpoint, credits, self.clock.now())
            .await?;
        let rate = rate_consumed.then(|| class.rate(self.tier(who.tier)).map(|rate| (class, rate.emission_us)));
        Ok(Prechecked::Admitted(EarlyAdmission {
            held: Some(Held {
                admission,
                rate: rate.flatten(),
                redis: redis.clone(),
                errors: self.errors.clone(),
            }),
        }))
    }

    /// Whether a call to `endpoint` also takes a step on an endpoint-wide rate.
    fn endpoint_rated(&self, endpoint: Option<&str>) -> bool {
        endpoint.is_some_and(|name| super::config::longest(&self.config.endpoint_rates, name).is_some())
    }

    /// The price of a call to `endpoint` when its input cannot change it (no `field` rule, or
    /// every value of it priced as the endpoint), else `None`.
    pub fn fixed_credits(&self, endpoint: Option<&str>) -> Option<u64> {
        let Some(endpoint) = endpoint else { return Some(0) };
        let Some((_, costs)) = super::config::longest(&self.config.credits.endpoints, endpoint) else {
            return Some(self.config.credits.default_cost);
        };
        match costs.field {
            Some(_) if costs.values.values().any(|cost| *cost != costs.cost) => None,
            _ => Some(costs.cost),
        }
    }
}

impl EarlyAdmission {
    /// The call goes on to fal: the admission is its own.
    pub fn into_admission(mut self) -> Admission {
        // Always `Some`: only `Drop` and the methods taking `self` empty it.
        let held = self.held.take().expect("an early admission is settled once");
        held.admission
    }

    /// The call was refused before fal: gives back what the admission consumed (`undo`).
    pub async fn undo(mut self, undo: Undo) {
        if let Some(held) = self.held.take() {
            held.undo(undo).await;
        }
    }
}

impl Held {
    async fn undo(self, undo: Undo) {
        let admission = &self.admission;
        let rate = match undo {
            Undo::Everything => self.rate,
            Undo::KeepRate => None,
        };
        let reservation = admission.reservation.as_deref().unwrap_or("");
        // Boxed: inline, the Redis call would size the pipeline's future.
        let undone = Box::pin(self.redis.undo(&admission.tag, reservation, admission.refund, rate)).await;
        if let Err(err) = undone {
            // Stricter, never looser: the caller keeps a spend it did not use.
            tracing::warn!(error = %err, "an admission refused before fal could not be undone: the caller keeps its spend");
            self.errors.log(&err);
        }
    }
}

impl Drop for EarlyAdmission {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        // Drop cannot wait: the undo runs on its own (bounded by the store timeout).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(held.undo(Undo::Everything));
        }
    }
}
