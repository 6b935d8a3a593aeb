//! What is left of each of a caller's limits, for `GET /api/fal/usage`: read from the same store
//! the limiter admits with (Redis through `usage.lua`, one round trip that writes nothing, else
//! this replica's memory, which a read never grows), then turned into [`PolicyState`]s with the
//! limiter's own arithmetic ([`plan::peek`] is [`plan::gcra`] without the write, and
//! [`plan::quota_day`]), so the answer cannot drift from what the next call would meet.

use std::time::SystemTime;

use super::answer::rate_state;
use super::plan;
use super::{headers, micros, LimitError, Limiter, OpClass, PolicyState, SlotKind, Subject};
use crate::redis::tag_of;

/// What one caller has spent, as a store holds it, at `now_us` (the store's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spent {
    pub(crate) now_us: u64,
    /// Theoretical arrival time per [`OpClass`].
    pub(crate) tats: [u64; 5],
    /// The quota day `requests` and `credits` were counted in (-1: none yet).
    pub(crate) day: i64,
    pub(crate) requests: u64,
    pub(crate) credits: u64,
    /// Jobs in flight (reservations and running jobs not yet expired).
    pub(crate) inflight: u64,
    /// Open status streams and buffered relays.
    pub(crate) streams: u32,
    pub(crate) relays: u32,
}

impl Spent {
    /// A caller the store has never seen.
    pub(crate) fn nothing(now_us: u64) -> Self {
        Self {
            now_us,
            tats: [0; 5],
            day: -1,
            requests: 0,
            credits: 0,
            inflight: 0,
            streams: 0,
            relays: 0,
        }
    }
}

impl Limiter {
    /// Every limit that applies to `who` (their tier's rates per operation class, day quotas,
    /// jobs in flight, open streams and relays), with what is left and when it is full again.
    /// Consumes nothing. Redis unreachable: this replica's view (`allow`) or 503 (`deny`).
    pub async fn usage(&self, who: &Subject<'_>) -> Result<Vec<PolicyState>, LimitError> {
        self.usage_at(who, self.clock.now()).await
    }

    /// [`Self::usage`] with the in-process clock at `now` (Redis always uses its own `TIME`).
    pub async fn usage_at(&self, who: &Subject<'_>, now: SystemTime) -> Result<Vec<PolicyState>, LimitError> {
        let tier = self.tier(who.tier);
        let tag = tag_of(who.principal);
        let ttl_us = self.config.inflight_ttl_seconds.saturating_mul(1_000_000);
        let in_memory = || {
            let mut spent = self.memory.peek(&tag, micros(now), ttl_us);
            spent.streams = self.slots.held(SlotKind::Stream, &tag);
            spent.relays = self.slots.held(SlotKind::Relay, &tag);
            spent
        };
        let spent = match &self.redis {
            Some(redis) => match redis.usage(&tag, ttl_us).await {
                Ok(mut shared) => {
                    // Slots this replica holds for the caller outside Redis (none with
                    // `[redis]` today: a slot opened while it was down is not counted).
                    shared.streams += self.slots.held(SlotKind::Stream, &tag);
                    shared.relays += self.slots.held(SlotKind::Relay, &tag);
                    shared
                }
                // What was spent lives in Redis only: no answer is better than a wrong one.
                Err(err) => return Err(self.errors.fail_closed(&err)),
            },
            None => in_memory(),
        };
        let mut states = Vec::new();
        for class in OpClass::ALL {
            if let Some(rate) = class.rate(tier) {
                let gauge = plan::peek(spent.tats[class as usize], spent.now_us, rate);
                states.push(rate_state(class.name(), rate, gauge.remaining, gauge.reset_us));
            }
        }
        let offset_us = self.config.quota_day_offset_seconds.saturating_mul(1_000_000);
        let (day, reset_us) = plan::quota_day(spent.now_us, offset_us);
        let (requests, credits) = match spent.day == day {
            true => (spent.requests, spent.credits),
            false => (0, 0),
        };
        for (name, max, used) in [
            ("daily-requests", tier.daily_requests, requests),
            ("daily-credits", tier.daily_credits, credits),
        ] {
            states.extend(max.map(|quota| PolicyState {
                name,
                quota,
                window_seconds: Some(86_400),
                remaining: quota.saturating_sub(used),
                reset_seconds: headers::ceil_seconds(reset_us),
            }));
        }
        let caps = [
            ("inflight", tier.max_inflight_jobs.map(u64::from), spent.inflight),
            (
                SlotKind::Stream.name(),
                Some(tier.streams_per_caller.unwrap_or(self.config.streams_per_caller).into()),
                spent.streams.into(),
            ),
            (
                SlotKind::Relay.name(),
                Some(tier.relays_per_caller.unwrap_or(self.config.relays_per_caller).into()),
                spent.relays.into(),
            ),
        ];
        for (name, max, used) in caps {
            states.extend(max.map(|quota| PolicyState {
                name,
                quota,
                window_seconds: None,
                remaining: quota.saturating_sub(used),
                reset_seconds: 0,
            }));
        }
        Ok(states)
    }
}
