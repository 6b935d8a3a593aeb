//! Limits: per-caller rates (GCRA) per operation class and tier, a global rate per endpoint, a
//! per-IP rate on failed authentication, daily quotas in requests and credits, a cap on jobs in
//! flight, caps on open streams and buffered relays ([`Slot`]), and idempotent submits.
//! [`Limiter::admit`] checks every limit of a call and consumes only if all pass, in one atomic
//! step: one Redis script (one round trip) when `[redis]` is set, else per-replica bounded memory.
//! [`Limiter::precheck`] runs the same checks without consuming, before a body is read, so a
//! caller already over a limit costs no body read or validation. [`Limiter::usage`] reads what is
//! left of each limit without consuming (`limits/usage.rs`). Config: `[limits]`
//! ([`LimitsConfig`]).

mod answer;
mod client_ip;
pub mod config;
mod error;
mod headers;
mod idempotency;
mod memory;
mod plan;
pub mod reconcile;
mod redis;
#[cfg(test)]
mod redis_tests;
mod slots;
mod store_error;
#[cfg(test)]
mod tests;
mod usage;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

pub use client_ip::{client_ip, is_trusted_peer, note_untrusted_forwarder};
pub use config::{
    CreditsConfig, EndpointCredits, Limit, LimitsConfig, LimitsConfigError, OnStoreError, RateConfig, TierCaps,
    TierLimits, UNLIMITED,
};
pub use error::LimitError;
pub use headers::{PolicyState, RATELIMIT, RATELIMIT_POLICY};
pub use idempotency::{IdemState, Idempotency, PENDING_TTL};
pub use slots::{Slot, SlotKind};

use self::answer::{admitted_states, rate_state, refused};
use self::memory::MemoryStore;
use self::plan::{InflightPlan, Outcome, Plan, QuotaPlan, Rate};
use self::redis::{Mode, RedisLimits, SlotOp};
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
        Ok(Admission {
            states,
            tag,
            reservation,
            refund,
        })
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
            Some(redis) => match redis.admit(plan, mode).await {
                Ok(outcome) => outcome,
                // A quota or a job cap: never let through uncounted (store_error.rs).
                Err(err) if plan.money_like() => return Err(self.errors.fail_closed(&err)),
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "rate", &err)?;
                    Outcome::Admitted(plan::Granted::default())
                }
            },
            None => match mode {
                Mode::Consume => self.memory.admit(plan, micros(now)),
                Mode::CheckOnly => self.memory.precheck(plan, micros(now)),
            },
        };
        match outcome {
            Outcome::Admitted(granted) => Ok(granted),
            Outcome::Refused(refusal) => Err(refused(plan, tier, refusal)),
        }
    }

    /// Opens a slot of `kind` for `who`: one of the replica's (`max_streams` / `max_relays`)
    /// and one of the caller's (`streams_per_caller` / `relays_per_caller`, or the tier's), the
    /// caller's shared through Redis when it is configured. Refused with 429
    /// `concurrency_limited`; nothing is held then. The slot is freed when it is dropped.
    pub async fn open_slot(&self, who: &Subject<'_>, kind: SlotKind) -> Result<Slot, LimitError> {
        let tier = self.tier(who.tier);
        let (per_caller, replica) = match kind {
            SlotKind::Stream => (
                tier.streams_per_caller.unwrap_or(self.config.streams_per_caller),
                self.config.max_streams,
            ),
            SlotKind::Relay => (
                tier.relays_per_caller.unwrap_or(self.config.relays_per_caller),
                self.config.max_relays,
            ),
        };
        let mut slot = self.slots.take(kind, replica).ok_or_else(|| LimitError::SlotsTaken {
            message: kind.replica_message(replica),
            retry_after: Duration::from_secs(1),
            policy: None,
        })?;
        let full = || LimitError::SlotsTaken {
            message: kind.caller_message(per_caller),
            retry_after: SLOT_RETRY,
            policy: Some(PolicyState {
                name: kind.name(),
                quota: u64::from(per_caller),
                window_seconds: None,
                remaining: 0,
                reset_seconds: 0,
            }),
        };
        let tag = tag_of(who.principal);
        if let Some(redis) = &self.redis {
            let shared = redis.slots();
            let key = shared.key(&tag, kind.name());
            let id = uuid::Uuid::new_v4().to_string();
            let open = shared
                .run(&key, &id, SlotOp::Open { max: per_caller }, slots::ttl_ms(), None)
                .await;
            return match open {
                Ok(true) => {
                    slot.share(shared.clone(), key, id);
                    Ok(slot)
                }
                Ok(false) => Err(full()),
                // Only the replica's own cap holds (`allow`), or refuse (`deny`).
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "slot", &err)?;
                    Ok(slot)
                }
            };
        }
        match self.slots.enter(&mut slot, &tag, per_caller) {
            true => Ok(slot),
            false => Err(full()),
        }
    }

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

    /// The per-IP rate of requests that failed authentication (IPv6 counted per /64).
    pub async fn admit_unauthenticated(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.admit_unauthenticated_at(ip, self.clock.now()).await
    }

    /// [`Self::admit_unauthenticated`] with the in-process clock at `now`.
    pub async fn admit_unauthenticated_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), LimitError> {
        let Some(rate) = self.config.unauthenticated_ip_rate.map(Rate::from) else {
            return Ok(());
        };
        self.unauthenticated(ip, rate, Mode::Consume, now).await
    }

    /// Whether one more failed authentication from `ip` would pass its rate, consuming nothing:
    /// checked before a token is verified, so a refused client costs no signature check.
    pub async fn precheck_unauthenticated(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.precheck_unauthenticated_at(ip, self.clock.now()).await
    }

    /// [`Self::precheck_unauthenticated`] with the in-process clock at `now`.
    pub async fn precheck_unauthenticated_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), LimitError> {
        let Some(rate) = self.config.unauthenticated_ip_rate.map(Rate::from) else {
            return Ok(());
        };
        self.unauthenticated(ip, rate, Mode::CheckOnly, now).await
    }

    async fn unauthenticated(&self, ip: IpAddr, rate: Rate, mode: Mode, now: SystemTime) -> Result<(), LimitError> {
        let ip = ip_key(ip);
        let answer = match &self.redis {
            Some(redis) => match redis.admit_ip(ip, rate, mode).await {
                Ok(answer) => answer,
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "ip_rate", &err)?;
                    return Ok(());
                }
            },
            None => self.memory.admit_ip(ip, rate, micros(now), mode == Mode::Consume),
        };
        answer.map(drop).map_err(|retry_us| LimitError::RateLimited {
            retry_after: Duration::from_micros(retry_us),
            policy: rate_state("unauthenticated", rate, 0, retry_us),
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

    async fn release(&self, tag: &str, from: &str, to: Option<&str>, refund: Option<(i64, u64)>) {
        // Each call is admitted where its store is: Redis when configured (never in memory,
        // not even while Redis is down), else this replica's memory.
        match &self.redis {
            Some(redis) => {
                if let Err(err) = redis.release(tag, from, to, refund).await {
                    self.errors.log(&err);
                }
            }
            None => self.memory.release(tag, from, to, refund),
        }
    }
}

/// How long one store check answers readiness ([`Limiter::ready`]).
pub const READY_FOR: Duration = Duration::from_secs(1);

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

/// A caller refused a stream or relay slot is told to retry after this long.
const SLOT_RETRY: Duration = Duration::from_secs(5);

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
