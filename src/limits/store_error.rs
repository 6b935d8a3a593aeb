//! What a store error means for a call, logged at most once per interval. Money-like limits
//! (a day quota of requests or credits, jobs in flight, idempotency records) always fail closed:
//! 503 `dependency_unavailable`. Short-term limits (rates, the per-IP rate, stream and relay
//! slots per caller) follow `on_store_error`: `deny` refuses the same way, `allow` lets the call
//! through unmetered, counted in `falgate_limits_fail_open_total{limit}`. Never a per-replica
//! count in memory: with N replicas that multiplies every limit by N, and a quota held in one
//! replica's memory forgets what was spent before the outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::{micros, LimitError, OnStoreError};
use crate::redis::StoreError;

/// A down store is logged at most once per this interval.
const STORE_ERROR_LOG_INTERVAL_S: u64 = 30;

/// Decides what a store error means, and logs it at most once per interval.
#[derive(Debug, Default)]
pub(crate) struct StoreErrorLog {
    last_logged_s: AtomicU64,
}

impl StoreErrorLog {
    /// `Ok` to let a call through short-term limit `limit` unmetered (`allow`, counted), or the
    /// 503 refusal (`deny`).
    pub(crate) fn fail_open(
        &self,
        mode: OnStoreError,
        limit: &'static str,
        err: &StoreError,
    ) -> Result<(), LimitError> {
        self.log(err);
        match mode {
            OnStoreError::Allow => {
                crate::telemetry::metrics::limits_fail_open(limit);
                Ok(())
            }
            OnStoreError::Deny => Err(LimitError::StoreDown),
        }
    }

    /// The 503 refusal of a call whose money-like state the store holds.
    pub(crate) fn fail_closed(&self, err: &StoreError) -> LimitError {
        self.log(err);
        LimitError::StoreDown
    }

    pub(crate) fn log(&self, err: &StoreError) {
        let now_s = micros(SystemTime::now()) / 1_000_000;
        let last = self.last_logged_s.load(Ordering::Relaxed);
        let due = now_s >= last + STORE_ERROR_LOG_INTERVAL_S;
        if due
            && self
                .last_logged_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %err, "limits store unavailable; repeats are not logged for 30 s");
        }
    }
}
