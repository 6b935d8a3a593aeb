//! The Redis backend: each admission is one `EVALSHA` of `admit.lua` (one round trip), timed by
//! Redis `TIME`; the precheck runs the same script in check-only mode. Keys:
//! `<prefix>:{<caller>}:rate:<class>`, `…:quota`, `…:inflight`, `…:streams`, `…:relays` share the
//! caller's hash tag; `<prefix>:{<endpoint>}:ep-rate` and `<prefix>:{<ip>}:ip-rate` have their
//! own. `usage.lua` reads a caller's keys for `GET /api/fal/usage`, writing nothing.
//!
//! Every script touches one hash tag (one Redis Cluster slot). A call rated by its endpoint too
//! is two steps: the caller's script first (so a caller over their own limits never touches the
//! endpoint's hot key), then the endpoint's `rate.lua`; when the second refuses (or fails), the
//! first is compensated exactly (`release.lua`: the rate's place, the quota's request and
//! credits, the reservation), so no call is ever admitted that one atomic step would refuse. In
//! the round trip between the two a concurrent call of the same caller may see the first step's
//! spend (a refusal that one step would not have given): never more admitted, at most one round
//! trip of extra strictness. A check-only call runs both checks at once.

use std::net::IpAddr;

use redis::Script;

use super::plan::{Exceeded, Gauge, Granted, Plan, QuotaUse, Rate, Verdict};
use super::usage::Spent;
use super::{OpClass, SlotKind};
use crate::redis::{RedisStore, StoreError};

/// The scripts' "none" argument: no limit (max requests, credits, jobs in flight), no quota day
/// to refund. One constant, so every placeholder is the same value the scripts test for.
const NONE: i64 = -1;

/// The limits scripts bound to one Redis.
pub(crate) struct RedisLimits {
    store: RedisStore,
    admit: Script,
    rate: Script,
    release: Script,
    usage: Script,
    slots: RedisSlots,
}

/// Whether the admission script consumes or only checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Consume,
    CheckOnly,
}

/// The slot script on one Redis; cloned into the task that keeps a slot alive.
#[derive(Clone)]
pub(crate) struct RedisSlots {
    store: RedisStore,
    script: Script,
}

/// What the slot script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotOp {
    Open { max: u32 },
    Refresh,
    Close,
}

impl RedisLimits {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self {
            slots: RedisSlots {
                store: store.clone(),
                script: Script::new(include_str!("slots.lua")),
            },
            store,
            admit: Script::new(include_str!("admit.lua")),
            rate: Script::new(include_str!("rate.lua")),
            release: Script::new(include_str!("release.lua")),
            usage: Script::new(include_str!("usage.lua")),
        }
    }

    pub(crate) fn slots(&self) -> &RedisSlots {
        &self.slots
    }

    pub(crate) fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Checks every limit of `plan`, and consumes them all if all pass (`Mode::Consume`) or
    /// nothing (`Mode::CheckOnly`): the caller's in one atomic script, an endpoint's rate in a
    /// second single-slot step compensated when it refuses (see the module's notes).
    pub(crate) async fn admit(&self, plan: &Plan<'_>, mode: Mode) -> Result<Verdict, StoreError> {
        let Some((name, endpoint_rate)) = plan.endpoint else {
            return self.admit_caller(plan, mode).await;
        };
        let endpoint_key = self.store.key(name, "ep-rate");
        let (caller, endpoint) = match mode {
            Mode::CheckOnly => {
                let (caller, endpoint) = tokio::join!(
                    self.admit_caller(plan, mode),
                    self.rate_step(&endpoint_key, endpoint_rate, mode)
                );
                (caller?, endpoint)
            }
            Mode::Consume => {
                let caller = self.admit_caller(plan, mode).await?;
                if matches!(caller, Verdict::Refused(_)) {
                    return Ok(caller);
                }
                (caller, self.rate_step(&endpoint_key, endpoint_rate, mode).await)
            }
        };
        let Verdict::Admitted(mut granted) = caller else {
            return Ok(caller);
        };
        let refused = match endpoint {
            Ok(Ok(gauge)) => {
                granted.endpoint = Some(gauge);
                return Ok(Verdict::Admitted(granted));
            }
            Ok(Err(retry_us)) => Ok(Verdict::Refused(Exceeded::Endpoint { retry_us })),
            Err(err) => Err(err),
        };
        if mode == Mode::Consume {
            self.compensate(plan, &granted).await;
        }
        refused
    }

    /// The caller's own limits: one `admit.lua` on the caller's keys.
    async fn admit_caller(&self, plan: &Plan<'_>, mode: Mode) -> Result<Verdict, StoreError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(self.store.tagged(plan.tag, plan.class.rate_key()))
            .key(self.store.tagged(plan.tag, "quota"))
            .key(self.store.tagged(plan.tag, "inflight"));
        let rate = plan.rate.unwrap_or(Rate {
            emission_us: 0,
            burst: 0,
        });
        invocation.arg(rate.emission_us).arg(rate.burst).arg(0).arg(0);
        match plan.quota {
            Some(quota) => invocation
                .arg("1")
                .arg(quota.requests.map_or(NONE, clamp))
                .arg(quota.credits.map_or(NONE, clamp))
                .arg(quota.cost)
                .arg(quota.day_offset_us),
            None => invocation.arg("0").arg(NONE).arg(NONE).arg(0).arg(0),
        };
        match plan.inflight {
            Some(inflight) => invocation
                .arg(inflight.max)
                .arg(inflight.ttl_us)
                .arg(inflight.reservation),
            None => invocation.arg(NONE).arg(0).arg(""),
        };
        invocation.arg(check_only(mode));
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        parse_admit(&reply)
    }

    /// One GCRA step on a rate of its own (`rate.lua`): `Ok(Err(retry_us))` when full.
    async fn rate_step(&self, key: &str, rate: Rate, mode: Mode) -> Result<Result<Gauge, u64>, StoreError> {
        let mut invocation = self.rate.prepare_invoke();
        invocation
            .key(key)
            .arg(rate.emission_us)
            .arg(rate.burst)
            .arg(check_only(mode));
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        let unsigned = |i: usize| reply.get(i).and_then(|v| u64::try_from(*v).ok());
        match (reply.first(), unsigned(1), unsigned(2)) {
            (Some(0), Some(remaining), Some(reset_us)) => Ok(Ok(Gauge { remaining, reset_us })),
            (Some(1), Some(retry_us), _) => Ok(Err(retry_us)),
            _ => Err(StoreError::Protocol(format!("rate script answered {reply:?}"))),
        }
    }

    /// Undoes the caller's step of an admission the endpoint's step refused: its place in the
    /// rate, its request and credits of the day, its reservation. A failure is logged: the
    /// caller then keeps a spend it did not use (stricter, never looser).
    async fn compensate(&self, plan: &Plan<'_>, granted: &Granted) {
        let refund = granted.quota.map(|quota| (quota.day, plan.quota.map_or(0, |q| q.cost)));
        let rate = plan
            .rate
            .map(|rate| (self.store.tagged(plan.tag, plan.class.rate_key()), rate.emission_us));
        let reservation = plan.inflight.map_or("", |inflight| inflight.reservation);
        if let Err(err) = self.release_with(plan.tag, reservation, None, refund, rate).await {
            tracing::warn!(error = %err, "an admission the endpoint's rate refused could not be undone: the caller keeps its spend");
        }
    }

    /// One GCRA step on an unauthenticated client's key (`rate.lua`).
    pub(crate) async fn admit_ip(&self, ip: IpAddr, rate: Rate, mode: Mode) -> Result<Result<Gauge, u64>, StoreError> {
        let key = self.store.key(&ip.to_string(), "ip-rate");
        self.rate_step(&key, rate, mode).await
    }

    /// What the caller `tag` has spent, read at Redis `TIME` without writing (`usage.lua`).
    pub(crate) async fn usage(&self, tag: &str, inflight_ttl_us: u64) -> Result<Spent, StoreError> {
        let mut invocation = self.usage.prepare_invoke();
        for class in OpClass::ALL {
            invocation.key(self.store.tagged(tag, class.rate_key()));
        }
        for rest in ["quota", "inflight", SlotKind::Stream.name(), SlotKind::Relay.name()] {
            invocation.key(self.store.tagged(tag, rest));
        }
        invocation.arg(inflight_ttl_us);
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        parse_usage(&reply)
    }

    /// Frees or renames slot `from` and refunds one request and `cost` credits of `day`.
    pub(crate) async fn release(
        &self,
        tag: &str,
        from: &str,
        to: Option<&str>,
        refund: Option<(i64, u64)>,
    ) -> Result<(), StoreError> {
        self.release_with(tag, from, to, refund, None).await
    }

    /// Undoes an admission refused before fal (`limits::early`): frees its reservation, refunds
    /// its request and credits, and gives back its place in the rate of `rate`'s class.
    pub(crate) async fn undo(
        &self,
        tag: &str,
        reservation: &str,
        refund: Option<(i64, u64)>,
        rate: Option<(OpClass, u64)>,
    ) -> Result<(), StoreError> {
        let rate = rate.map(|(class, emission_us)| (self.store.tagged(tag, class.rate_key()), emission_us));
        self.release_with(tag, reservation, None, refund, rate).await
    }

    /// [`Self::release`], also giving back one emission of the caller's rate key `rate.0`.
    async fn release_with(
        &self,
        tag: &str,
        from: &str,
        to: Option<&str>,
        refund: Option<(i64, u64)>,
        rate: Option<(String, u64)>,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.store.tagged(tag, "inflight"))
            .key(self.store.tagged(tag, "quota"))
            .arg(from)
            .arg(to.unwrap_or(""));
        match refund {
            Some((day, cost)) => invocation.arg(day).arg(cost),
            None => invocation.arg(NONE).arg(0),
        };
        if let Some((key, emission_us)) = rate {
            invocation.key(key).arg(emission_us);
        }
        let mut connection = self.store.connection();
        self.store
            .timed(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }
}

impl RedisSlots {
    /// Runs one slot operation on `key` (`now_ms` = None: Redis `TIME`). `Ok(false)`: full.
    pub(crate) async fn run(
        &self,
        key: &str,
        id: &str,
        op: SlotOp,
        ttl_ms: u64,
        now_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        let (name, max) = match op {
            SlotOp::Open { max } => ("open", max),
            SlotOp::Refresh => ("refresh", 0),
            SlotOp::Close => ("close", 0),
        };
        let mut invocation = self.script.prepare_invoke();
        invocation.key(key).arg(name).arg(id).arg(max).arg(ttl_ms);
        invocation.arg(now_ms.map(|ms| ms.to_string()).unwrap_or_default());
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        match reply.first() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(StoreError::Protocol(format!("slot script answered {reply:?}"))),
        }
    }

    /// The key of one caller's slots of `kind`.
    pub(crate) fn key(&self, tag: &str, kind: &str) -> String {
        self.store.tagged(tag, kind)
    }
}

fn check_only(mode: Mode) -> &'static str {
    match mode {
        Mode::Consume => "0",
        Mode::CheckOnly => "1",
    }
}

fn clamp(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// `usage.lua`'s reply: `{now_us, tat × 5 (by OpClass), day, requests, credits, inflight,
/// streams, relays}`, exactly 12 numbers.
fn parse_usage(reply: &[i64]) -> Result<Spent, StoreError> {
    let unsigned = |i: usize| reply.get(i).and_then(|v| u64::try_from(*v).ok());
    let parsed = (|| {
        let mut tats = [0; 5];
        for (i, tat) in tats.iter_mut().enumerate() {
            *tat = unsigned(1 + i)?;
        }
        Some(Spent {
            now_us: unsigned(0)?,
            tats,
            day: *reply.get(6)?,
            requests: unsigned(7)?,
            credits: unsigned(8)?,
            inflight: unsigned(9)?,
            streams: u32::try_from(unsigned(10)?).ok()?,
            relays: u32::try_from(unsigned(11)?).ok()?,
        })
    })();
    match parsed {
        Some(spent) if reply.len() == 12 => Ok(spent),
        _ => Err(StoreError::Protocol(format!("usage script answered {reply:?}"))),
    }
}

fn parse_admit(reply: &[i64]) -> Result<Verdict, StoreError> {
    let unsigned = |i: usize| reply.get(i).and_then(|v| u64::try_from(*v).ok());
    let gauge = |i: usize| {
        Some(Gauge {
            remaining: unsigned(i)?,
            reset_us: unsigned(i + 1)?,
        })
    };
    let outcome = match (reply.first(), unsigned(1)) {
        (Some(0), _) if reply.len() == 10 => Verdict::Admitted(Granted {
            rate: gauge(1),
            endpoint: gauge(3),
            quota: reply[5].ge(&0).then(|| QuotaUse {
                day: reply[5],
                requests: unsigned(6).unwrap_or(0),
                credits: unsigned(7).unwrap_or(0),
                reset_us: unsigned(8).unwrap_or(0),
            }),
            inflight: unsigned(9),
        }),
        (Some(1), Some(retry_us)) => Verdict::Refused(Exceeded::Rate { retry_us }),
        (Some(2), Some(retry_us)) => Verdict::Refused(Exceeded::Endpoint { retry_us }),
        (Some(3), Some(reset_us)) => Verdict::Refused(Exceeded::Requests { reset_us }),
        (Some(4), Some(reset_us)) => Verdict::Refused(Exceeded::Credits { reset_us }),
        (Some(5), Some(count)) => Verdict::Refused(Exceeded::Inflight { count }),
        _ => return Err(StoreError::Protocol(format!("admit script answered {reply:?}"))),
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests_edges;
