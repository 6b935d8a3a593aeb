//! Limits: per-caller rates (GCRA) per operation class and tier, a global rate per endpoint, a
//! per-IP rate on failed authentication, daily quotas in requests and credits, a cap on jobs in
//! flight, caps on open streams and buffered relays ([`Slot`]), and idempotent submits.
//! [`Limiter::admit`] checks every limit of a call and consumes only if all pass, in one atomic
//! step: one Redis script (one round trip) when `[redis]` is set, else per-replica bounded memory.
//! [`Limiter::precheck`] runs the same checks without consuming, before a body is read, so a
//! caller already over a limit costs no body read or validation; with Redis, a call whose price
//! its input cannot change is admitted there instead (`early.rs`: one round trip, not two,
//! given back exactly if the call is refused before fal). [`Limiter::usage`] reads what is
//! left of each limit without consuming (`limits/usage.rs`). Config: `[limits]`
//! ([`LimitsConfig`]).

mod admit;
mod answer;
mod client_ip;
pub mod config;
mod early;
mod error;
mod headers;
mod idempotency;
mod memory;
mod plan;
pub mod reconcile;
mod redis;
mod run_guard;
mod slots;
mod store_error;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admission;
#[cfg(test)]
mod tests_admission_redis;
#[cfg(test)]
mod tests_early;
#[cfg(test)]
mod tests_redis;
mod unauthenticated;
mod usage;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

pub use client_ip::{client_ip, is_trusted_peer, note_untrusted_forwarder};
pub use config::{
    CreditsConfig, EndpointCredits, Limit, LimitsConfig, LimitsConfigError, OnStoreError, RateConfig, TierCaps,
    TierLimits, UNLIMITED,
};
pub use early::{EarlyAdmission, Prechecked, Undo};
pub use error::LimitError;
pub(crate) use headers::{ratelimit_headers, retry_after};
pub use headers::{PolicyState, RATELIMIT, RATELIMIT_POLICY};
pub use idempotency::{IdemState, Idempotency, PENDING_TTL};
pub use run_guard::RunGuard;
pub use slots::{Slot, SlotKind};

use self::memory::MemoryStore;
use self::plan::Rate;
use self::redis::RedisLimits;
use self::slots::SlotBook;
pub(crate) use self::store_error::StoreErrorLog;
use crate::clock::Clock;
pub use crate::fal::OpClass;
use crate::redis::{tag_of, RedisStore};

/// Who is calling: the stable principal (`iss|sub`, never the token) and their tier.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a str,
    pub tier: &'a str,
}

/// The limits service: its settings (`config`, replaced on reload) over stores that live for the
/// process (rate buckets, quotas, jobs in flight, idempotency records), shared by every
/// [`Limiter`] built from them, so a reload changes rates without wiping what was spent.
pub struct Limiter {
    config: LimitsConfig,
    /// Each tier's caps (the default tier's inherited), and the default tier's.
    tiers: std::collections::BTreeMap<String, TierCaps>,
    default_caps: TierCaps,
    memory: Arc<MemoryStore>,
    redis: Option<Arc<RedisLimits>>,
    idempotency: Arc<Idempotency>,
    errors: Arc<StoreErrorLog>,
    slots: Arc<SlotBook>,
    /// Jobs in flight, for the reconciler ([`reconcile`]).
    jobs: Arc<reconcile::Jobs>,
    /// The last store check and when it ran (`Clock::instant`), shared by every snapshot.
    ready: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>>,
    /// The in-process stores' time (Redis always uses its own `TIME`).
    clock: Clock,
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
    /// Redis is not answering and `on_store_error = "allow"`: rates are let through unmetered,
    /// calls with a quota or a job cap get 503.
    Degraded,
    /// Redis is not answering and `on_store_error = "deny"`: calls it meters get 503.
    Unavailable,
}

impl OpClass {
    /// Every class, in index order.
    pub(crate) const ALL: [Self; 5] = [Self::Submit, Self::Poll, Self::Cancel, Self::Upload, Self::Token];

    fn name(self) -> &'static str {
        ["submit", "poll", "cancel", "upload", "token"][self as usize]
    }

    fn rate_key(self) -> &'static str {
        ["rate:submit", "rate:poll", "rate:cancel", "rate:upload", "rate:token"][self as usize]
    }

    /// Whether the class counts against the day quota.
    pub(crate) fn is_paid(self) -> bool {
        matches!(self, Self::Submit | Self::Upload | Self::Token)
    }

    /// The tier's rate for this class, if it has one.
    fn rate(self, tier: &TierCaps) -> Option<Rate> {
        [tier.submit, tier.poll, tier.cancel, tier.upload, tier.token][self as usize].map(Rate::from)
    }
}

impl Readiness {
    /// False only when paid calls are being refused.
    pub fn is_ready(self) -> bool {
        self != Self::Unavailable
    }
}

impl Admission {
    /// The caller's hash tag (`redis::tag_of` of the principal): the key of their limits.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// What the call spent of the day quota (None when its tier counts none).
    pub fn spend(&self) -> Option<reconcile::JobSpend> {
        self.refund.map(|(day, credits)| reconcile::JobSpend { day, credits })
    }

    /// `RateLimit-Policy` and `RateLimit` for the success response.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        headers::ratelimit_headers(&self.states)
    }
}

impl Limiter {
    /// A limiter over `config`, shared through `redis` when given.
    pub fn new(config: LimitsConfig, redis: Option<RedisStore>) -> Result<Self, LimitsConfigError> {
        Self::with_clock(config, redis, Clock::system())
    }

    /// [`Self::new`] with the in-process stores (and idempotency records) reading `clock`.
    pub fn with_clock(
        config: LimitsConfig,
        redis: Option<RedisStore>,
        clock: Clock,
    ) -> Result<Self, LimitsConfigError> {
        config.validate()?;
        let ttl = Duration::from_secs(config.idempotency_ttl_seconds);
        let idempotency = Idempotency::with_clock(ttl, config.max_tracked_callers, redis.clone(), clock.clone());
        let jobs = Arc::new(reconcile::Jobs::new(redis.clone()));
        let (tiers, default_caps) = config.caps();
        Ok(Self {
            tiers,
            default_caps,
            memory: Arc::new(MemoryStore::new(config.max_tracked_callers)),
            redis: redis.map(|redis| Arc::new(RedisLimits::new(redis))),
            idempotency: Arc::new(idempotency),
            errors: Arc::default(),
            slots: Arc::default(),
            jobs,
            ready: Arc::default(),
            config,
            clock,
        })
    }

    /// A limiter with new settings over this one's stores: what was spent still counts. The
    /// stores' own sizes (`max_tracked_callers`, `idempotency_ttl_seconds`, `on_store_error`)
    /// were fixed when they were built; the caller keeps those settings at their running value.
    pub fn reconfigured(&self, config: LimitsConfig) -> Result<Self, LimitsConfigError> {
        config.validate()?;
        let (tiers, default_caps) = config.caps();
        Ok(Self {
            tiers,
            default_caps,
            memory: self.memory.clone(),
            redis: self.redis.clone(),
            idempotency: self.idempotency.clone(),
            errors: self.errors.clone(),
            slots: self.slots.clone(),
            jobs: self.jobs.clone(),
            ready: self.ready.clone(),
            config,
            clock: self.clock.clone(),
        })
    }

    /// The credit cost of a call to `endpoint` (the path called, not its policy entry) with
    /// `input`, by the longest `credits.endpoints` key covering it: the value of the configured
    /// field if it has a cost, else that key's cost, else `default_cost`.
    pub fn credits_for<'a>(&self, endpoint: &str, input: impl Into<crate::schema::Ruled<'a>>) -> u64 {
        let input = input.into();
        let Some((_, costs)) = config::longest(&self.config.credits.endpoints, endpoint) else {
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

    /// What one temporary fal token costs (`[limits.credits] client_token_cost`), and the longest
    /// life it may have (`client_token_max_seconds`).
    pub fn client_token_terms(&self) -> (u64, u64) {
        (
            self.config.credits.client_token_cost,
            self.config.client_token_max_seconds,
        )
    }

    /// The cheapest a call to `endpoint` can cost (the price the precheck assumes before the
    /// input is read): the lowest of the endpoint's cost and its field values' costs, else
    /// `default_cost`; 0 for a call to no endpoint (an upload initiation, as `admit` charges it).
    pub fn min_credits(&self, endpoint: Option<&str>) -> u64 {
        let Some(endpoint) = endpoint else { return 0 };
        let Some((_, costs)) = config::longest(&self.config.credits.endpoints, endpoint) else {
            return self.config.credits.default_cost;
        };
        match costs.field {
            Some(_) => costs.values.values().copied().fold(costs.cost, u64::min),
            None => costs.cost,
        }
    }

    /// Status streams and buffered relays open on this replica, and callers holding one here.
    pub fn open_slots(&self) -> (u32, u32, usize) {
        (
            self.slots.open(SlotKind::Stream),
            self.slots.open(SlotKind::Relay),
            self.slots.tracked(),
        )
    }

    /// Whether the store answers (a `PING` within the store timeout), checked at most once per
    /// [`READY_FOR`]: `/readyz` is public and unrated, so a flood of probes must not become a
    /// flood of `PING`s. One check runs at a time; probes meanwhile wait for its answer.
    pub async fn ready(&self) -> Readiness {
        let Some(redis) = &self.redis else {
            return Readiness::Ready;
        };
        let mut last = self.ready.lock().await;
        let now = self.clock.instant();
        if let Some((at, readiness)) = *last {
            if now.saturating_duration_since(at) < READY_FOR {
                return readiness;
            }
        }
        let readiness = match (redis.store().ping().await, self.config.on_store_error) {
            (Ok(()), _) => Readiness::Ready,
            (Err(_), OnStoreError::Allow) => Readiness::Degraded,
            (Err(_), OnStoreError::Deny) => Readiness::Unavailable,
        };
        // Timed from the answer: a slow PING's verdict is fresh for READY_FOR after it came.
        *last = Some((self.clock.instant(), readiness));
        readiness
    }

    /// Where the limits live: `memory` (no `[redis]`), or the Redis mode (`single`,
    /// `sentinel`, `cluster`).
    pub fn store_mode(&self) -> &'static str {
        self.redis.as_ref().map_or("memory", |redis| redis.store().mode())
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

    fn tier(&self, name: &str) -> &TierCaps {
        // An unknown tier claim gets the default tier.
        self.tiers.get(name).unwrap_or(&self.default_caps)
    }

    async fn release(&self, tag: &str, from: &str, to: Option<&str>, refund: Option<(i64, u64)>) {
        // Each call is admitted where its store is: Redis when configured (never in memory,
        // not even while Redis is down), else this replica's memory.
        match &self.redis {
            Some(redis) => {
                // Boxed (see `evaluate`): inline it would size every call's future.
                if let Err(err) = Box::pin(redis.release(tag, from, to, refund)).await {
                    self.errors.log(&err);
                }
            }
            None => self.memory.release(tag, from, to, refund),
        }
    }
}

/// How long one store check answers readiness ([`Limiter::ready`]).
pub const READY_FOR: Duration = Duration::from_secs(1);

/// Microseconds since the Unix epoch.
pub(crate) fn micros(now: SystemTime) -> u64 {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}
