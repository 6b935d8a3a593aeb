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
    /// Every store error seen, logged or not (tests count the calls a down store refused).
    seen: AtomicU64,
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
        self.log_at(err, SystemTime::now());
    }

    /// [`Self::log`] at `now`.
    fn log_at(&self, err: &StoreError, now: SystemTime) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let now_s = micros(now) / 1_000_000;
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

    /// How many store errors were seen since start.
    #[cfg(test)]
    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::OnTheWire;
    use crate::telemetry::captured::Captured;

    #[test]
    fn a_down_store_is_logged_once_per_interval_and_every_error_is_counted() {
        let captured = Captured::default();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(captured.clone())
                .finish(),
        );
        let log = StoreErrorLog::default();
        let err = StoreError::Timeout(Duration::from_millis(200));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lines = |at: SystemTime| {
            tracing::dispatcher::with_default(&dispatch, || log.log_at(&err, at));
            captured.text().matches("limits store unavailable").count()
        };
        assert_eq!(lines(t0), 1, "the first error is logged");
        assert_eq!(
            lines(t0 + Duration::from_millis(29_999)),
            1,
            "repeats within 30 s are not"
        );
        assert_eq!(lines(t0 + Duration::from_secs(30)), 2, "the next one 30 s on is");
        assert_eq!(lines(t0 + Duration::from_secs(59)), 2);
        assert_eq!(lines(t0 + Duration::from_secs(60)), 3);
        assert_eq!(log.seen(), 5);
        // Mode decides what a short-term limit's error means for the call; money-like state
        // fails closed whatever the mode.
        assert!(log.fail_open(OnStoreError::Allow, "rate", &err).is_ok());
        assert_eq!(
            log.fail_open(OnStoreError::Deny, "rate", &err).unwrap_err().code(),
            "dependency_unavailable"
        );
        assert_eq!(log.fail_closed(&err).code(), "dependency_unavailable");
    }
}
