//! What one admission must check, and what it found: the shared vocabulary of the in-process
//! and Redis backends, plus the GCRA and quota-day arithmetic (in microseconds) they both use.
//! `limits/admit.lua` mirrors [`gcra`] and [`quota_day`] line for line.

use super::config::RateConfig;
use super::OpClass;

/// Microseconds in one day.
pub(crate) const DAY_US: i64 = 86_400_000_000;

/// A GCRA rate: one call every `emission_us`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) emission_us: u64,
    pub(crate) burst: u64,
}

impl From<RateConfig> for Rate {
    fn from(config: RateConfig) -> Self {
        Self {
            emission_us: 60_000_000 / u64::from(config.per_minute.max(1)),
            burst: u64::from(config.burst.max(1)),
        }
    }
}

impl Rate {
    /// The window in which `burst` calls refill, in whole seconds (the policy's `w`).
    pub(crate) fn window_seconds(self) -> u64 {
        (self.emission_us * self.burst).div_ceil(1_000_000)
    }
}

/// Everything one call must pass, all checked before anything is consumed.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// The caller's hashed id: the in-process key and the Redis hash tag.
    pub(crate) tag: &'a str,
    pub(crate) class: OpClass,
    pub(crate) rate: Option<Rate>,
    pub(crate) endpoint: Option<(&'a str, Rate)>,
    pub(crate) quota: Option<QuotaPlan>,
    pub(crate) inflight: Option<InflightPlan<'a>>,
}

impl Plan<'_> {
    /// Whether the plan holds money-like state (a day quota of requests or credits, a cap on
    /// jobs in flight): such a call is never let through while the store is down.
    pub(crate) fn money_like(&self) -> bool {
        self.inflight.is_some()
            || self
                .quota
                .is_some_and(|quota| quota.requests.is_some() || quota.credits.is_some())
    }
}

/// The day quota of a paid call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotaPlan {
    pub(crate) requests: Option<u64>,
    pub(crate) credits: Option<u64>,
    pub(crate) cost: u64,
    pub(crate) day_offset_us: i64,
}

/// The concurrency cap of a submit, and the slot it reserves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InflightPlan<'a> {
    pub(crate) max: u64,
    pub(crate) ttl_us: u64,
    pub(crate) reservation: &'a str,
}

/// The answer of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted(Granted),
    Refused(Exceeded),
}

/// What an admitted call left, for the `RateLimit` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) rate: Option<Gauge>,
    pub(crate) endpoint: Option<Gauge>,
    pub(crate) quota: Option<QuotaUse>,
    pub(crate) inflight: Option<u64>,
}

/// A rate's state after a call: calls left now, and microseconds until it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gauge {
    pub(crate) remaining: u64,
    pub(crate) reset_us: u64,
}

/// The quota day's use after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaUse {
    pub(crate) day: i64,
    pub(crate) requests: u64,
    pub(crate) credits: u64,
    pub(crate) reset_us: u64,
}

/// Why a call was refused; nothing was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Rate { retry_us: u64 },
    Endpoint { retry_us: u64 },
    Requests { reset_us: u64 },
    Credits { reset_us: u64 },
    Inflight { count: u64 },
}

/// One GCRA step at `now`: the new theoretical arrival time and gauge, or the wait until the
/// call would conform.
pub(crate) fn gcra(tat: u64, now: u64, rate: Rate) -> Result<(u64, Gauge), u64> {
    let new_tat = tat.max(now) + rate.emission_us;
    let limit = rate.emission_us * rate.burst;
    let used = new_tat - now;
    if used > limit {
        return Err(used - limit);
    }
    let remaining = (limit - used) / rate.emission_us;
    Ok((
        new_tat,
        Gauge {
            remaining,
            reset_us: used,
        },
    ))
}

/// What a rate has left at `now`, consuming nothing (for `GET /api/fal/usage`): the calls that
/// would pass now and the microseconds until it is full again. Computed with [`gcra`] itself,
/// so it can never disagree with an admission: exactly `remaining` calls at `now` pass.
pub(crate) fn peek(tat: u64, now: u64, rate: Rate) -> Gauge {
    let remaining = gcra(tat, now, rate).map_or(0, |(_, after)| after.remaining + 1);
    Gauge {
        remaining,
        reset_us: tat.saturating_sub(now),
    }
}

/// The quota day containing `now` and the microseconds until it ends.
pub(crate) fn quota_day(now_us: u64, offset_us: i64) -> (i64, u64) {
    let shifted = now_us as i64 - offset_us;
    let day = shifted.div_euclid(DAY_US);
    (day, ((day + 1) * DAY_US - shifted) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        emission_us: 1_000_000,
        burst: 3,
    };

    #[test]
    fn gcra_admits_the_burst_at_once_then_one_per_emission_interval() {
        let mut tat = 0;
        for left in [2, 1, 0] {
            let (next, gauge) = gcra(tat, 10_000_000, RATE).unwrap();
            assert_eq!(gauge.remaining, left);
            tat = next;
        }
        assert_eq!(gcra(tat, 10_000_000, RATE), Err(1_000_000));
        assert!(gcra(tat, 11_000_000, RATE).is_ok());
    }

    #[test]
    fn peek_counts_exactly_the_calls_that_pass_and_the_time_until_full() {
        let now = 10_000_000;
        assert_eq!(
            peek(0, now, RATE),
            Gauge {
                remaining: 3,
                reset_us: 0
            }
        );
        let mut tat = 0;
        for _ in 0..2 {
            tat = gcra(tat, now, RATE).unwrap().0;
        }
        assert_eq!(
            peek(tat, now, RATE),
            Gauge {
                remaining: 1,
                reset_us: 2_000_000
            }
        );
        tat = gcra(tat, now, RATE).unwrap().0;
        assert_eq!(
            peek(tat, now, RATE),
            Gauge {
                remaining: 0,
                reset_us: 3_000_000
            }
        );
        assert!(gcra(tat, now, RATE).is_err(), "peek said none are left");
        assert_eq!(peek(tat, now + 1_500_000, RATE).remaining, 1, "one refilled");
    }

    #[test]
    fn quota_day_starts_at_utc_midnight_plus_offset() {
        assert_eq!(quota_day(DAY_US as u64 + 5, 0), (1, DAY_US as u64 - 5));
        assert_eq!(quota_day(DAY_US as u64 + 5, 10), (0, 5));
    }
}
