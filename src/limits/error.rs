//! [`LimitError`]: every refusal of the limits step, with what the caller is told to wait and
//! the state of the limit that refused. Its status, code and headers are the edge's
//! (`error::GateError`'s refusal table).

use std::time::Duration;

use super::headers::PolicyState;

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
