//! What a store error means for a call (`on_store_error`), logged at most once per interval.

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
    /// `Ok` to fall back to memory (`allow`), or the 503 refusal (`deny`).
    pub(crate) fn fallback(&self, mode: OnStoreError, err: &StoreError) -> Result<(), LimitError> {
        self.log(err);
        match mode {
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => Err(LimitError::StoreDown),
        }
    }

    pub(crate) fn log(&self, err: &StoreError) {
        self.seen.fetch_add(1, Ordering::Relaxed);
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

    /// How many store errors were seen since start.
    #[cfg(test)]
    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}
