//! [`LimitError`]: every refusal of the limits step, with its status, code and headers in one
//! `match` each. `Retry-After` is advisory (the fal JS client ignores it and retries 429 up to
//! three times, fal-protocol §4.3), so a refusal must be cheap and consume nothing.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::headers::{ratelimit_headers, retry_after, PolicyState};

/// Why the limits step refused a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error("too many requests; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration, policy: PolicyState },
    #[error("too many jobs in flight; wait for one to finish")]
    ConcurrencyLimited { retry_after: Duration, policy: PolicyState },
    /// A stream or relay cap (the caller's, or this replica's when `policy` is None).
    #[error("{message}")]
    SlotsTaken {
        message: String,
        retry_after: Duration,
        policy: Option<PolicyState>,
    },
    #[error("the daily quota is used up; it resets in {} s", reset_after.as_secs())]
    QuotaExceeded { reset_after: Duration, policy: PolicyState },
    #[error("the limits store is unavailable")]
    StoreDown,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInFlight,
}

impl LimitError {
    /// 429 for rates and concurrency, 403 for a used-up quota (not retried by the fal
    /// clients), 503 for a down store, 422 / 409 for idempotency conflicts.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } | Self::SlotsTaken { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            Self::StoreDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyInFlight => StatusCode::CONFLICT,
        }
    }

    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::ConcurrencyLimited { .. } | Self::SlotsTaken { .. } => "concurrency_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::StoreDown => "dependency_unavailable",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInFlight => "idempotency_in_flight",
        }
    }

    /// `Retry-After` plus the `RateLimit-Policy` / `RateLimit` of the limit that refused.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Self::RateLimited {
                retry_after: wait,
                policy,
            }
            | Self::ConcurrencyLimited {
                retry_after: wait,
                policy,
            }
            | Self::QuotaExceeded {
                reset_after: wait,
                policy,
            } => {
                let mut headers = vec![retry_after(*wait)];
                headers.extend(ratelimit_headers(std::slice::from_ref(policy)));
                headers
            }
            Self::SlotsTaken {
                retry_after: wait,
                policy,
                ..
            } => {
                let mut headers = vec![retry_after(*wait)];
                headers.extend(ratelimit_headers(policy.as_slice()));
                headers
            }
            Self::StoreDown | Self::IdempotencyInFlight => {
                vec![retry_after(Duration::from_secs(1))]
            }
            Self::IdempotencyKeyReused => Vec::new(),
        }
    }
}
