//! Turns a backend's answer into what the client sees: the [`PolicyState`] list of an
//! admission, or the [`LimitError`] of a refusal.

use std::time::Duration;

use super::plan::{Exceeded, Granted, Plan, Rate};
use super::{headers, LimitError, PolicyState, TierCaps};

/// A refused submit for too many jobs in flight suggests retrying after this long.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(5);

pub(super) fn admitted_states(plan: &Plan<'_>, tier: &TierCaps, granted: &Granted) -> Vec<PolicyState> {
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
            max.map(|quota| PolicyState {
                name,
                quota,
                window_seconds: Some(86_400),
                remaining: quota.saturating_sub(used),
                reset_seconds,
            })
        };
        states.extend(day("daily-requests", tier.daily_requests, used.requests));
        states.extend(day("daily-credits", tier.daily_credits, used.credits));
    }
    if let (Some(max), Some(count)) = (tier.max_inflight_jobs, granted.inflight) {
        states.push(inflight_state(max, u64::from(max).saturating_sub(count)));
    }
    states
}

pub(super) fn refused(plan: &Plan<'_>, tier: &TierCaps, refusal: Exceeded) -> LimitError {
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
        policy: rate_state(
            name,
            rate.unwrap_or(Rate {
                emission_us: 1,
                burst: 0,
            }),
            0,
            retry_us,
        ),
    };
    match refusal {
        Exceeded::Rate { retry_us } => rated(plan.class.name(), plan.rate, retry_us),
        Exceeded::Endpoint { retry_us } => rated("endpoint", plan.endpoint.map(|(_, rate)| rate), retry_us),
        Exceeded::Requests { reset_us } => day("daily-requests", tier.daily_requests, reset_us),
        Exceeded::Credits { reset_us } => day("daily-credits", tier.daily_credits, reset_us),
        Exceeded::Inflight { .. } => LimitError::ConcurrencyLimited {
            retry_after: CONCURRENCY_RETRY,
            policy: inflight_state(tier.max_inflight_jobs.unwrap_or(0), 0),
        },
    }
}

pub(super) fn rate_state(name: &'static str, rate: Rate, remaining: u64, reset_us: u64) -> PolicyState {
    PolicyState {
        name,
        quota: rate.burst,
        window_seconds: Some(rate.window_seconds()),
        remaining,
        reset_seconds: headers::ceil_seconds(reset_us),
    }
}

fn inflight_state(max: u32, remaining: u64) -> PolicyState {
    PolicyState {
        name: "inflight",
        quota: u64::from(max),
        window_seconds: None,
        remaining,
        reset_seconds: 0,
    }
}
