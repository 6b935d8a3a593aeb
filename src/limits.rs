//! Limits: per-caller rates (GCRA) per operation class and tier, a global rate per endpoint, a
//! per-IP rate on failed authentication, daily quotas in requests and credits, a cap on jobs in
//! flight, and idempotent submits. [`Limiter::admit`] checks every limit of a call and consumes
//! only if all pass, in one atomic step: one Redis script (one round trip) when `[redis]` is set,
//! else per-replica bounded memory. Config: `[limits]` ([`LimitsConfig`]).

mod client_ip;
pub mod config;
mod error;
mod headers;
mod idempotency;
mod memory;
mod plan;
mod redis;
#[cfg(test)]
mod redis_tests;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

pub use client_ip::client_ip;
pub use config::{CreditsConfig, EndpointCredits, LimitsConfig, LimitsConfigError, OnStoreError, RateConfig, TierLimits};
pub use error::LimitError;
pub use headers::{PolicyState, RATELIMIT, RATELIMIT_POLICY};
pub use idempotency::{IdemState, Idempotency, PENDING_TTL};

use self::memory::MemoryStore;
use self::plan::{InflightPlan, Outcome, Plan, QuotaPlan, Rate, Refusal};
use self::redis::RedisLimits;
use crate::redis::{tag_of, RedisStore, StoreError};

/// A refused submit for too many jobs in flight suggests retrying after this long.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(5);
/// A down store is logged at most once per this interval.
const STORE_ERROR_LOG_INTERVAL_S: u64 = 30;

/// Which budget a call spends. Submits (queue and sync) and uploads are paid: they count
/// against the day quota. Polls (status, stream, result) and cancels only have rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    Submit = 0,
    Poll = 1,
    Cancel = 2,
    Upload = 3,
}

/// Who is calling: the stable principal (`iss|sub`, never the token) and their tier.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a str,
    pub tier: &'a str,
}

/// The limits service, built once at startup.
pub struct Limiter {
    config: LimitsConfig,
    memory: MemoryStore,
    redis: Option<RedisLimits>,
    idempotency: Idempotency,
    errors: StoreErrorLog,
}

/// Proof that a call was admitted, with what is left of each limit for the `RateLimit` header.
#[derive(Debug, Clone)]
pub struct Admission {
    states: Vec<PolicyState>,
    tag: String,
    reservation: Option<String>,
    refund: Option<(i64, u64)>,
}

/// Whether the limits store can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// In-process limits, or Redis answering.
    Ready,
    /// Redis is not answering and `on_store_error = "allow"`: limits are per replica for now.
    Degraded,
    /// Redis is not answering and `on_store_error = "deny"`: paid calls get 503.
    Unavailable,
}

impl OpClass {
    fn name(self) -> &'static str {
        ["submit", "poll", "cancel", "upload"][self as usize]
    }

    fn rate_key(self) -> &'static str {
        ["rate:submit", "rate:poll", "rate:cancel", "rate:upload"][self as usize]
    }

    fn is_paid(self) -> bool {
        matches!(self, Self::Submit | Self::Upload)
    }
}

impl Readiness {
    /// False only when paid calls are being refused.
    pub fn is_ready(self) -> bool {
        self != Self::Unavailable
    }
}

impl Admission {
    /// `RateLimit-Policy` and `RateLimit` for the success response.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        headers::ratelimit_headers(&self.states)
    }
}

impl Limiter {
    /// A limiter over `config`, shared through `redis` when given.
    pub fn new(config: LimitsConfig, redis: Option<RedisStore>) -> Result<Self, LimitsConfigError> {
        config.validate()?;
        let ttl = Duration::from_secs(config.idempotency_ttl_seconds);
        let idempotency = Idempotency::new(ttl, config.max_tracked_callers, redis.clone(), config.on_store_error);
        Ok(Self {
            memory: MemoryStore::new(config.max_tracked_callers),
            redis: redis.map(RedisLimits::new),
            idempotency,
            errors: StoreErrorLog::default(),
            config,
        })
    }

    /// Rate + quota + concurrency check-and-consume for one call, atomically. `credits` is the
    /// call's cost ([`Self::credits_for`]); only paid classes spend it.
    pub async fn admit(
        &self,
        who: &Subject<'_>,
        class: OpClass,
        endpoint: Option<&str>,
        credits: u64,
    ) -> Result<Admission, LimitError> {
        self.admit_at(who, class, endpoint, credits, SystemTime::now()).await
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
        let tier = self.tier(who.tier);
        let tag = tag_of(who.principal);
        let reservation = match (class, tier.max_inflight_jobs) {
            (OpClass::Submit, Some(_)) => Some(format!("r:{}", uuid::Uuid::new_v4())),
            _ => None,
        };
        let plan = self.plan(&tag, tier, class, endpoint, credits, reservation.as_deref());
        let outcome = match &self.redis {
            Some(redis) => match redis.admit(&plan).await {
                Ok(outcome) => outcome,
                Err(err) => {
                    self.errors.fallback(self.config.on_store_error, &err)?;
                    self.memory.admit(&plan, micros(now))
                }
            },
            None => self.memory.admit(&plan, micros(now)),
        };
        let granted = match outcome {
            Outcome::Admitted(granted) => granted,
            Outcome::Refused(refusal) => return Err(refused(&plan, tier, refusal)),
        };
        let refund = granted.quota.map(|quota| (quota.day, plan.quota.map_or(0, |q| q.cost)));
        let states = admitted_states(&plan, tier, &granted);
        Ok(Admission { states, tag, reservation, refund })
    }

    /// A submit fal accepted: its concurrency slot now belongs to `request_id`.
    pub async fn job_started(&self, admission: &Admission, request_id: &str) {
        if let Some(reservation) = &admission.reservation {
            self.release(&admission.tag, reservation, Some(request_id), None).await;
        }
    }

    /// A submit fal clearly did not take (it answered with an error): free its concurrency slot
    /// and give back its request and credits. Never call it when the outcome is unknown.
    pub async fn refund_inflight(&self, admission: &Admission) {
        let reservation = admission.reservation.as_deref().unwrap_or("");
        self.release(&admission.tag, reservation, None, admission.refund).await;
    }

    /// Completion, cancellation or an error of job `request_id` was seen: free its slot.
    /// Idempotent, so every replica that sees the job end may call it.
    pub async fn job_finished(&self, who: &Subject<'_>, request_id: &str) {
        self.release(&tag_of(who.principal), request_id, None, None).await;
    }

    /// The per-IP rate of requests that failed authentication (IPv6 counted per /64).
    pub async fn admit_unauthenticated(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.admit_unauthenticated_at(ip, SystemTime::now()).await
    }

    /// [`Self::admit_unauthenticated`] with the in-process clock at `now`.
    pub async fn admit_unauthenticated_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), LimitError> {
        let Some(rate) = self.config.unauthenticated_ip_rate.map(Rate::from) else {
            return Ok(());
        };
        let ip = ip_key(ip);
        let answer = match &self.redis {
            Some(redis) => match redis.admit_ip(ip, rate).await {
                Ok(answer) => answer,
                Err(err) => {
                    self.errors.fallback(self.config.on_store_error, &err)?;
                    self.memory.admit_ip(ip, rate, micros(now))
                }
            },
            None => self.memory.admit_ip(ip, rate, micros(now)),
        };
        answer.map(drop).map_err(|retry_us| LimitError::RateLimited {
            retry_after: Duration::from_micros(retry_us),
            policy: rate_state("unauthenticated", rate, 0, retry_us),
        })
    }

    /// The credit cost of a call to `endpoint` with `input`: the value of the configured field
    /// if it has a cost, else the endpoint's cost, else `default_cost`.
    pub fn credits_for(&self, endpoint: &str, input: &serde_json::Value) -> u64 {
        let Some(costs) = self.config.credits.endpoints.get(endpoint) else {
            return self.config.credits.default_cost;
        };
        let value = costs.field.as_deref().and_then(|field| input.get(field));
        let cost = match value {
            Some(serde_json::Value::String(text)) => costs.values.get(text),
            Some(other) => costs.values.get(&other.to_string()),
            None => None,
        };
        cost.copied().unwrap_or(costs.cost)
    }

    /// Whether the store answers now (a `PING` within the store timeout).
    pub async fn ready(&self) -> Readiness {
        let Some(redis) = &self.redis else {
            return Readiness::Ready;
        };
        match (redis.store().ping().await, self.config.on_store_error) {
            (Ok(()), _) => Readiness::Ready,
            (Err(_), OnStoreError::Allow) => Readiness::Degraded,
            (Err(_), OnStoreError::Deny) => Readiness::Unavailable,
        }
    }

    /// The idempotency store for submits carrying `Idempotency-Key`.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    /// The configured trusted proxy networks, for [`client_ip`].
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.config.trusted_proxies
    }

    /// How many callers this replica tracks in memory.
    pub fn tracked_callers(&self) -> u64 {
        self.memory.tracked_callers()
    }

    fn tier(&self, name: &str) -> &TierLimits {
        // `validate` proved the default tier exists; an unknown tier claim gets the default.
        self.config
            .tiers
            .get(name)
            .or_else(|| self.config.tiers.get(&self.config.default_tier))
            .unwrap_or(&EMPTY_TIER)
    }

    fn plan<'a>(
        &'a self,
        tag: &'a str,
        tier: &TierLimits,
        class: OpClass,
        endpoint: Option<&'a str>,
        credits: u64,
        reservation: Option<&'a str>,
    ) -> Plan<'a> {
        let rate = [tier.submit, tier.poll, tier.cancel, tier.upload][class as usize].map(Rate::from);
        let endpoint = endpoint
            .filter(|_| class == OpClass::Submit)
            .and_then(|name| Some((name, Rate::from(*self.config.endpoint_rates.get(name)?))));
        let quota = class.is_paid().then_some(QuotaPlan {
            requests: tier.daily_requests,
            credits: tier.daily_credits,
            cost: credits,
            day_offset_us: self.config.quota_day_offset_seconds.saturating_mul(1_000_000),
        });
        let inflight = tier.max_inflight_jobs.zip(reservation).map(|(max, reservation)| InflightPlan {
            max: u64::from(max),
            ttl_us: self.config.inflight_ttl_seconds.saturating_mul(1_000_000),
            reservation,
        });
        Plan { tag, class, rate, endpoint, quota, inflight }
    }

    async fn release(&self, tag: &str, from: &str, to: Option<&str>, refund: Option<(i64, u64)>) {
        // Also release in memory: the call may have been admitted there while Redis was down.
        self.memory.release(tag, from, to, refund);
        if let Some(redis) = &self.redis {
            if let Err(err) = redis.release(tag, from, to, refund).await {
                self.errors.log(&err);
            }
        }
    }
}

static EMPTY_TIER: TierLimits = TierLimits {
    submit: None,
    poll: None,
    cancel: None,
    upload: None,
    max_inflight_jobs: None,
    daily_requests: None,
    daily_credits: None,
};

fn admitted_states(plan: &Plan<'_>, tier: &TierLimits, granted: &plan::Granted) -> Vec<PolicyState> {
    let mut states = Vec::new();
    if let (Some(rate), Some(gauge)) = (plan.rate, granted.rate) {
        states.push(rate_state(plan.class.name(), rate, gauge.remaining, gauge.reset_us));
    }
    if let (Some((_, rate)), Some(gauge)) = (plan.endpoint, granted.endpoint) {
        states.push(rate_state("endpoint", rate, gauge.remaining, gauge.reset_us));
    }
    if let Some(used) = granted.quota {
        let reset_seconds = headers::ceil_seconds(used.reset_us);
        let day = |name, max: Option<u64>, used: u64| {
            max.map(|quota| PolicyState { name, quota, window_seconds: Some(86_400), remaining: quota.saturating_sub(used), reset_seconds })
        };
        states.extend(day("daily-requests", tier.daily_requests, used.requests));
        states.extend(day("daily-credits", tier.daily_credits, used.credits));
    }
    if let (Some(max), Some(count)) = (tier.max_inflight_jobs, granted.inflight) {
        states.push(inflight_state(max, u64::from(max).saturating_sub(count)));
    }
    states
}

fn refused(plan: &Plan<'_>, tier: &TierLimits, refusal: Refusal) -> LimitError {
    let day = |name, quota: Option<u64>, reset_us| LimitError::QuotaExceeded {
        reset_after: Duration::from_micros(reset_us),
        policy: PolicyState {
            name,
            quota: quota.unwrap_or(0),
            window_seconds: Some(86_400),
            remaining: 0,
            reset_seconds: headers::ceil_seconds(reset_us),
        },
    };
    let rated = |name, rate: Option<Rate>, retry_us| LimitError::RateLimited {
        retry_after: Duration::from_micros(retry_us),
        policy: rate_state(name, rate.unwrap_or(Rate { emission_us: 1, burst: 0 }), 0, retry_us),
    };
    match refusal {
        Refusal::Rate { retry_us } => rated(plan.class.name(), plan.rate, retry_us),
        Refusal::Endpoint { retry_us } => rated("endpoint", plan.endpoint.map(|(_, rate)| rate), retry_us),
        Refusal::Requests { reset_us } => day("daily-requests", tier.daily_requests, reset_us),
        Refusal::Credits { reset_us } => day("daily-credits", tier.daily_credits, reset_us),
        Refusal::Inflight { .. } => LimitError::ConcurrencyLimited {
            retry_after: CONCURRENCY_RETRY,
            policy: inflight_state(tier.max_inflight_jobs.unwrap_or(0), 0),
        },
    }
}

fn rate_state(name: &'static str, rate: Rate, remaining: u64, reset_us: u64) -> PolicyState {
    PolicyState {
        name,
        quota: rate.burst,
        window_seconds: Some(rate.window_seconds()),
        remaining,
        reset_seconds: headers::ceil_seconds(reset_us),
    }
}

fn inflight_state(max: u32, remaining: u64) -> PolicyState {
    PolicyState { name: "inflight", quota: u64::from(max), window_seconds: None, remaining, reset_seconds: 0 }
}

/// IPv6 clients are counted per /64: one host usually owns the whole prefix.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        IpAddr::V4(_) => ip,
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(now: SystemTime) -> u64 {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// Decides what a store error means, and logs it at most once per interval.
#[derive(Debug, Default)]
pub(crate) struct StoreErrorLog {
    last_logged_s: AtomicU64,
}

impl StoreErrorLog {
    /// `Ok` to fall back to memory (`allow`), or the 503 refusal (`deny`).
    pub(crate) fn fallback(&self, mode: OnStoreError, err: &StoreError) -> Result<(), LimitError> {
        self.log(err);
        match mode {
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => Err(LimitError::StoreDown),
        }
    }

    fn log(&self, err: &StoreError) {
        let now_s = micros(SystemTime::now()) / 1_000_000;
        let last = self.last_logged_s.load(Ordering::Relaxed);
        let due = now_s >= last + STORE_ERROR_LOG_INTERVAL_S;
        if due && self.last_logged_s.compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(error = %err, "limits store unavailable; repeats are not logged for 30 s");
        }
    }
}
