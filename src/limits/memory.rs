//! The in-process backend: per-replica state in bounded moka caches (at most
//! `max_tracked_callers` entries each, idle entries expire), one mutex per caller so each
//! admission is atomic. Time is passed in, so tests control it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;

use super::plan::{gcra, quota_day, Exceeded, Gauge, Granted, Plan, QuotaUse, Rate, Verdict};
use super::usage::Spent;

/// A caller's state is kept this long after their last call: the quota day must survive.
const CALLER_IDLE: Duration = Duration::from_secs(25 * 3600);
/// A rate-only key (endpoint, IP) is kept this long after its last call.
const RATE_IDLE: Duration = Duration::from_secs(3600);

/// In-process limits state.
pub(crate) struct MemoryStore {
    callers: Cache<String, Arc<Mutex<CallerState>>>,
    rates: Cache<String, Arc<Mutex<u64>>>,
}

#[derive(Debug, Default)]
struct CallerState {
    /// Theoretical arrival time per `OpClass`.
    tats: [u64; 5],
    day: i64,
    requests: u64,
    credits: u64,
    /// Reserved slots and running jobs, with the time each started.
    inflight: Vec<(String, u64)>,
}

impl MemoryStore {
    /// A store tracking at most `capacity` callers and `capacity` rate keys.
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            callers: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(CALLER_IDLE)
                .build(),
            rates: Cache::builder().max_capacity(capacity).time_to_idle(RATE_IDLE).build(),
        }
    }

    /// Checks every limit of `plan` at `now_us` and consumes only if all pass.
    pub(crate) fn admit(&self, plan: &Plan<'_>, now_us: u64) -> Verdict {
        let caller = self.callers.get_with_by_ref(plan.tag, Default::default);
        let mut state = lock(&caller);
        let endpoint = plan
            .endpoint
            .map(|(name, rate)| (self.rates.get_with(format!("ep:{name}"), Default::default), rate));
        // Lock order is always caller, then endpoint, so two admissions cannot deadlock.
        let mut endpoint_tat = endpoint.as_ref().map(|(tat, rate)| (lock(tat), *rate));
        outcome(check(
            &mut state,
            endpoint_tat.as_mut().map(|(tat, rate)| (&mut **tat, *rate)),
            plan,
            now_us,
            true,
        ))
    }

    /// Checks every limit of `plan` at `now_us` and consumes nothing. A caller or endpoint not
    /// tracked yet is checked against a fresh state and is not added: a precheck never grows
    /// the caches.
    pub(crate) fn precheck(&self, plan: &Plan<'_>, now_us: u64) -> Verdict {
        let caller = self.callers.get(plan.tag);
        let mut fresh = CallerState::default();
        let mut held = caller.as_deref().map(lock);
        let state = held.as_deref_mut().unwrap_or(&mut fresh);
        let endpoint = plan
            .endpoint
            .map(|(name, rate)| (self.rates.get(&format!("ep:{name}")), rate));
        let mut fresh_tat = 0;
        let mut endpoint_tat = endpoint.as_ref().map(|(tat, rate)| (tat.as_deref().map(lock), *rate));
        let endpoint_tat = endpoint_tat
            .as_mut()
            .map(|(tat, rate)| (tat.as_deref_mut().unwrap_or(&mut fresh_tat), *rate));
        outcome(check(state, endpoint_tat, plan, now_us, false))
    }

    /// One GCRA step on an unauthenticated client's key (an IP or IPv6 /64), taken only when
    /// `consume` (a check alone never adds the key).
    pub(crate) fn admit_ip(&self, ip: IpAddr, rate: Rate, now_us: u64, consume: bool) -> Result<Gauge, u64> {
        let key = format!("ip:{ip}");
        if !consume {
            let tat = self.rates.get(&key).map_or(0, |tat| *lock(&tat));
            return gcra(tat, now_us, rate).map(|(_, gauge)| gauge);
        }
        let tat = self.rates.get_with(key, Default::default);
        let mut tat = lock(&tat);
        let (next, gauge) = gcra(*tat, now_us, rate)?;
        *tat = next;
        Ok(gauge)
    }

    /// Replaces slot `from` by `to` (a submit's reservation by its request id), or frees it
    /// when `to` is `None`; refunds `cost` credits and one request of `day` if given.
    pub(crate) fn release(&self, tag: &str, from: &str, to: Option<&str>, refund: Option<(i64, u64)>) {
        let Some(caller) = self.callers.get(tag) else {
            return;
        };
        let mut state = lock(&caller);
        if let Some(slot) = state.inflight.iter_mut().find(|(id, _)| id == from) {
            match to {
                Some(to) => slot.0 = to.to_owned(),
                None => state.inflight.retain(|(id, _)| id != from),
            }
        }
        if let Some((_, cost)) = refund.filter(|(day, _)| *day == state.day) {
            state.requests = state.requests.saturating_sub(1);
            state.credits = state.credits.saturating_sub(cost);
        }
    }

    /// When `tag`'s slot `id` started (µs), if it is still held.
    pub(crate) fn slot_start(&self, tag: &str, id: &str) -> Option<u64> {
        let caller = self.callers.get(tag)?;
        let state = lock(&caller);
        state
            .inflight
            .iter()
            .find(|(slot, _)| slot == id)
            .map(|(_, started)| *started)
    }

    /// What `tag` has spent at `now_us`, read without consuming or tracking anything (an
    /// untracked caller has spent nothing). Jobs older than `inflight_ttl_us` are not counted.
    pub(crate) fn peek(&self, tag: &str, now_us: u64, inflight_ttl_us: u64) -> Spent {
        let Some(caller) = self.callers.get(tag) else {
            return Spent::nothing(now_us);
        };
        let state = lock(&caller);
        let oldest = now_us.saturating_sub(inflight_ttl_us);
        Spent {
            now_us,
            tats: state.tats,
            day: state.day,
            requests: state.requests,
            credits: state.credits,
            inflight: state.inflight.iter().filter(|(_, started)| *started > oldest).count() as u64,
            streams: 0,
            relays: 0,
        }
    }

    /// How many callers are tracked (after pending evictions run).
    pub(crate) fn tracked_callers(&self) -> u64 {
        self.callers.run_pending_tasks();
        self.callers.entry_count()
    }
}

fn outcome(checked: Result<Granted, Exceeded>) -> Verdict {
    match checked {
        Ok(granted) => Verdict::Admitted(granted),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

/// Checks every limit of `plan`; consumes them all when `consume` and all pass.
fn check(
    state: &mut CallerState,
    endpoint: Option<(&mut u64, Rate)>,
    plan: &Plan<'_>,
    now: u64,
    consume: bool,
) -> Result<Granted, Exceeded> {
    let mut granted = Granted::default();
    let mut quota_next = None;
    if let Some(quota) = plan.quota {
        let (day, reset_us) = quota_day(now, quota.day_offset_us);
        let (requests, credits) = match day == state.day {
            true => (state.requests + 1, state.credits + quota.cost),
            false => (1, quota.cost),
        };
        if quota.requests.is_some_and(|max| requests > max) {
            return Err(Exceeded::Requests { reset_us });
        }
        if quota.credits.is_some_and(|max| credits > max) {
            return Err(Exceeded::Credits { reset_us });
        }
        quota_next = Some(QuotaUse {
            day,
            requests,
            credits,
            reset_us,
        });
    }
    if let Some(inflight) = plan.inflight {
        let oldest = now.saturating_sub(inflight.ttl_us);
        state.inflight.retain(|(_, started)| *started > oldest);
        let count = state.inflight.len() as u64;
        if count >= inflight.max {
            return Err(Exceeded::Inflight { count });
        }
        granted.inflight = Some(count + 1);
    }
    let class = plan.class as usize;
    let rate_next = match plan.rate {
        Some(rate) => Some(gcra(state.tats[class], now, rate).map_err(|retry_us| Exceeded::Rate { retry_us })?),
        None => None,
    };
    let endpoint_next = match &endpoint {
        Some((tat, rate)) => Some(gcra(**tat, now, *rate).map_err(|retry_us| Exceeded::Endpoint { retry_us })?),
        None => None,
    };
    if !consume {
        return Ok(granted);
    }
    // Every check passed: consume.
    if let Some((tat, gauge)) = rate_next {
        state.tats[class] = tat;
        granted.rate = Some(gauge);
    }
    if let (Some((tat, gauge)), Some((slot, _))) = (endpoint_next, endpoint) {
        *slot = tat;
        granted.endpoint = Some(gauge);
    }
    if let Some(quota) = quota_next {
        (state.day, state.requests, state.credits) = (quota.day, quota.requests, quota.credits);
        granted.quota = Some(quota);
    }
    if let Some(inflight) = plan.inflight {
        state.inflight.push((inflight.reservation.to_owned(), now));
    }
    Ok(granted)
}

/// A poisoned lock only means another admission panicked mid-update; the counters are still
/// integers, so keep serving rather than panic every later call.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests_edges;
