//! The IETF rate-limit headers (draft-ietf-httpapi-ratelimit-headers-08+, structured fields):
//! `RateLimit-Policy: "submit";q=10;w=60` names each limit, `RateLimit: "submit";r=3;t=12`
//! says what is left of it (`r`) and the seconds until it is full again (`t`).

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One limit as the headers show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy's name: `submit`, `poll`, `cancel`, `upload`, `endpoint`, `daily-requests`,
    /// `daily-credits`, `inflight`, `streams`, `relays` or `unauthenticated`.
    pub name: &'static str,
    /// The quota units of the policy (`q`): the burst, day total or concurrency cap.
    pub quota: u64,
    /// The window in seconds (`w`); none for the concurrency cap.
    pub window_seconds: Option<u64>,
    /// What is left (`r`).
    pub remaining: u64,
    /// Seconds until the policy is full again (`t`).
    pub reset_seconds: u64,
}

impl PolicyState {
    fn policy_item(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self.window_seconds {
            Some(window) => write!(out, "\"{}\";q={};w={window}", self.name, self.quota),
            None => write!(out, "\"{}\";q={};qu=\"concurrent-requests\"", self.name, self.quota),
        };
    }

    fn state_item(&self, out: &mut String) {
        let _ = write!(out, "\"{}\";r={};t={}", self.name, self.remaining, self.reset_seconds);
    }
}

/// Whole seconds, rounded up, so a client never retries too early.
pub(crate) fn ceil_seconds(micros: u64) -> u64 {
    micros.div_ceil(1_000_000)
}

/// `Retry-After` in whole seconds, at least one.
pub(crate) fn retry_after(wait: Duration) -> (HeaderName, HeaderValue) {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))
}

thread_local! {
    /// The header value being written; its capacity is kept between calls.
    static LIST: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

/// The `RateLimit-Policy` and `RateLimit` headers for `states` (none if empty).
pub(crate) fn ratelimit_headers(states: &[PolicyState]) -> Vec<(HeaderName, HeaderValue)> {
    if states.is_empty() {
        return Vec::new();
    }
    // Written into the thread's buffer, then copied once into a value of exactly its size (one
    // allocation per header; a `String` of a guessed capacity handed over as `Bytes` cost two).
    let join = |item: fn(&PolicyState, &mut String)| {
        LIST.with_borrow_mut(|list| {
            list.clear();
            for (i, state) in states.iter().enumerate() {
                if i > 0 {
                    list.push_str(", ");
                }
                item(state, list);
            }
            // Names are static and numbers are digits, so the value is always visible ASCII.
            HeaderValue::from_str(list).unwrap_or_else(|_| HeaderValue::from_static(""))
        })
    };
    vec![
        (RATELIMIT_POLICY, join(PolicyState::policy_item)),
        (RATELIMIT, join(PolicyState::state_item)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_structured_field_form() {
        let states = [
            PolicyState {
                name: "submit",
                quota: 10,
                window_seconds: Some(60),
                remaining: 3,
                reset_seconds: 12,
            },
            PolicyState {
                name: "inflight",
                quota: 2,
                window_seconds: None,
                remaining: 1,
                reset_seconds: 0,
            },
        ];
        let headers = ratelimit_headers(&states);
        assert_eq!(
            headers[0].1,
            r#""submit";q=10;w=60, "inflight";q=2;qu="concurrent-requests""#
        );
        assert_eq!(headers[1].1, r#""submit";r=3;t=12, "inflight";r=1;t=0"#);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after(Duration::from_millis(1500)).1, "2");
        assert_eq!(retry_after(Duration::ZERO).1, "1");
    }
}
