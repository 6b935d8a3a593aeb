//! Admission: every limit of a call checked in one atomic step ([`Limiter::admit`]), the same
//! checks without consuming ([`Limiter::precheck`]), and a rate spent on its own
//! ([`Limiter::spend_rate`]).

use std::time::SystemTime;

use super::answer::{admitted_states, refused};
use super::plan::{self, InflightPlan, Plan, QuotaPlan, Rate, Verdict};
use super::redis::Mode;
use super::{config, micros, Admission, LimitError, Limiter, OpClass, Subject, TierCaps};
use crate::redis::tag_of;

impl Limiter {
    /// Rate + quota + concurrency check-and-consume for one call, atomically. `credits` is the
    /// call's cost ([`Self::credits_for`]); only paid classes spend it.
    pub async fn admit(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
    ) -> Result<Admission, LimitError> {
        self.admit_at(who, class, endpoint, credits, self.clock.now()).await
    }

    /// [`Self::admit`] with the in-process clock at `now` (Redis always uses its own `TIME`).
    pub async fn admit_at(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
        now: SystemTime,
    ) -> Result<Admission, LimitError> {
        self.admit_with_rate_at(who, class, endpoint, credits, now)
            .await
            .map(|(admission, _)| admission)
    }

    /// [`Self::admit_at`], also saying whether the call's rate was consumed (not when the rate
    /// was let through unmetered with the store down): what an undo gives back (`early`).
    pub(super) async fn admit_with_rate_at(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
        now: SystemTime,
    ) -> Result<(Admission, bool), LimitError> {
        let tier = self.tier(who.tier);
        let tag = tag_of(who.principal);
        let reservation = match (class, tier.max_inflight_jobs) {
            (OpClass::Submit, Some(_)) => Some(format!("r:{}", uuid::Uuid::new_v4())),
            _ => None,
        };
        let plan = self.plan(&tag, tier, class, endpoint, credits, reservation.as_deref());
        let granted = self.evaluate(&plan, tier, Mode::Consume, now).await?;
        let refund = granted.quota.map(|quota| (quota.day, plan.quota.map_or(0, |q| q.cost)));
        let states = admitted_states(&plan, tier, &granted);
        let rate_consumed = granted.rate.is_some();
        let admission = Admission {
            states,
            tag,
            reservation,
            refund,
        };
        Ok((admission, rate_consumed))
    }

    /// Spends one call of `class`'s rate for `who` and nothing else (no quota, no job in flight):
    /// what a request that made falgate wait and then failed by its caller's fault costs (a
    /// body that did not arrive within `request.body_timeout_ms`). Already over the rate, or
    /// the store down: nothing more happens (the caller was answered already).
    pub async fn spend_rate(&self, who: &Subject<'_>, class: OpClass) {
        self.spend_rate_at(who, class, self.clock.now()).await;
    }

    /// [`Self::spend_rate`] with the in-process clock at `now`.
    pub async fn spend_rate_at(&self, who: &Subject<'_>, class: OpClass, now: SystemTime) {
        let tier = self.tier(who.tier);
        let tag = tag_of(who.principal);
        let plan = Plan {
            tag: &tag,
            class,
            rate: class.rate(tier),
            endpoint: None,
            quota: None,
            inflight: None,
        };
        if plan.rate.is_some() {
            self.evaluate(&plan, tier, Mode::Consume, now).await.ok();
        }
    }

    /// The checks of [`Self::admit`] without consuming anything, for a call whose body is not
    /// read yet: rates, the day quota at the endpoint's cheapest price ([`Self::min_credits`])
    /// and the jobs in flight. An early refusal, not a reservation: `admit` still decides.
    pub async fn precheck(&self, who: &Subject<'_>, class: OpClass, endpoint: Option<&str>) -> Result<(), LimitError> {
        self.precheck_at(who, class, endpoint, self.clock.now()).await
    }

    /// [`Self::precheck`] with the in-process clock at `now`.
    pub async fn precheck_at(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        now: SystemTime,
    ) -> Result<(), LimitError> {
        self.precheck_priced_at(who, class, endpoint, self.min_credits(endpoint), now)
            .await
    }

    /// [`Self::precheck`] assuming the call costs at least `credits` (its price before the input
    /// is read, e.g. a temporary token's fixed cost), rated by `endpoint` when given.
    pub async fn precheck_priced(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
    ) -> Result<(), LimitError> {
        self.precheck_priced_at(who, class, endpoint, credits, self.clock.now())
            .await
    }

    async fn precheck_priced_at(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
        now: SystemTime,
    ) -> Result<(), LimitError> {
        let tier = self.tier(who.tier);
        let tag = tag_of(who.principal);
        // An empty reservation: the check counts the slots in use and adds none.
        let reservation = (class == OpClass::Submit && tier.max_inflight_jobs.is_some()).then_some("");
        let plan = self.plan(&tag, tier, class, endpoint, credits, reservation);
        self.evaluate(&plan, tier, Mode::CheckOnly, now).await.map(drop)
    }

    /// Runs `plan` on the store (Redis, or memory when there is none), consuming only in
    /// `Mode::Consume`. Redis down: 503 for a money-like plan, else `on_store_error` decides
    /// (`allow`: admitted unmetered).
    async fn evaluate(
        &self,
        plan: &Plan<'_>,
        tier: &TierCaps,
        mode: Mode,
        now: SystemTime,
    ) -> Result<plan::Granted, LimitError> {
        let outcome = match &self.redis {
            // Boxed: a Redis call's future is large, and inline it would size every call's
            // future (in-process mode included), copied on each move; a round trip dwarfs one
            // allocation.
            Some(redis) => match Box::pin(redis.admit(plan, mode)).await {
                Ok(outcome) => outcome,
                // A quota or a job cap: never let through uncounted (store_error.rs).
                Err(err) if plan.money_like() => return Err(self.errors.fail_closed(&err)),
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "rate", &err)?;
                    Verdict::Admitted(plan::Granted::default())
                }
            },
            None => match mode {
                Mode::Consume => self.memory.admit(plan, micros(now)),
                Mode::CheckOnly => self.memory.precheck(plan, micros(now)),
            },
        };
        match outcome {
            Verdict::Admitted(granted) => Ok(granted),
            Verdict::Refused(refusal) => Err(refused(plan, tier, refusal)),
        }
    }

    fn plan<'a>(
        &'a self,
        tag: &'a str,
        tier: &TierCaps,
        class: OpClass,
        endpoint: Option<&'a str>,
        credits: u64,
        reservation: Option<&'a str>,
    ) -> Plan<'a> {
        let rate = class.rate(tier);
        // The bucket is the longest configured key: every sub path under it shares it. Whether
        // an operation is rated by its endpoint is the operations table's (`fal::OpFacts`).
        let endpoint = endpoint
            .and_then(|name| config::longest(&self.config.endpoint_rates, name))
            .map(|(key, rate)| (key, Rate::from(*rate)));
        let quota = class.is_paid().then_some(QuotaPlan {
            requests: tier.daily_requests,
            credits: tier.daily_credits,
            cost: credits,
            day_offset_us: self.config.quota_day_offset_seconds.saturating_mul(1_000_000),
        });
        let inflight = tier
            .max_inflight_jobs
            .zip(reservation)
            .map(|(max, reservation)| InflightPlan {
                max: u64::from(max),
                ttl_us: self.config.inflight_ttl_seconds.saturating_mul(1_000_000),
                reservation,
            });
        Plan {
            tag,
            class,
            rate,
            endpoint,
            quota,
            inflight,
        }
    }
}
