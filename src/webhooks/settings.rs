//! `[webhooks]`, typed: whether falgate receives fal's signed deliveries itself, what it accepts
//! (user id, clock skew, body size), how it fetches fal's signing keys, how long it remembers a
//! delivery, and how it forwards one to a caller's own hook. Parsed once at start; restart-only
//! (`state::reload::keep_running`), since the key cache, the delivery records and the forward
//! queue live for the process. `allowed_hosts` (the caller hooks the policy allows) is the
//! policy's (`config::Config::webhook_hosts`).

use std::time::Duration;

use url::Url;

use crate::fal::Webhook;

/// The path of the receiver on falgate's public listener.
pub const RECEIVER_PATH: &str = "/api/fal/webhook";

/// `[webhooks]`: where fal may deliver a caller's `fal_webhook` callbacks, and falgate's own
/// receiver of fal's signed deliveries (`webhooks::WebhooksConfig`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    pub allowed_hosts: Vec<String>,
    pub receive: bool,
    pub fal_user_id: Option<String>,
    pub max_skew_seconds: u64,
    pub max_body_bytes: usize,
    pub jwks_timeout_ms: u64,
    pub jwks_max_bytes: usize,
    pub jwks_cooldown_seconds: u64,
    pub dedup_ttl_seconds: u64,
    pub max_tracked: u64,
    pub forward_attempts: u32,
    pub forward_timeout_ms: u64,
    pub forward_backoff_ms: u64,
    pub forward_queue: usize,
    pub forward_queue_bytes: usize,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            receive: false,
            fal_user_id: None,
            max_skew_seconds: 300,
            max_body_bytes: 1024 * 1024,
            jwks_timeout_ms: 3000,
            jwks_max_bytes: 64 * 1024,
            jwks_cooldown_seconds: 30,
            dedup_ttl_seconds: 24 * 3600,
            max_tracked: 100_000,
            forward_attempts: 5,
            forward_timeout_ms: 5000,
            forward_backoff_ms: 1000,
            forward_queue: 1024,
            forward_queue_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The receiver's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// `receive = true`: every submit carries [`Self::hook_url`] as its `fal_webhook`.
    pub receive: bool,
    /// `<public_url>/api/fal/webhook`, when `receive` (public_url is then required).
    pub hook_url: Option<Webhook>,
    /// Deliveries naming another fal user (`X-Fal-Webhook-User-Id`) are refused; None = any.
    pub fal_user_id: Option<String>,
    /// Largest gap between a delivery's timestamp and this replica's clock.
    pub max_skew: Duration,
    /// Largest delivery body read.
    pub max_body_bytes: usize,
    /// Whole-fetch timeout and size cap of fal's JWKS, and the shortest gap between two
    /// fetches (a delivery no known key verifies asks for one refetch, at most once per gap).
    pub jwks_timeout: Duration,
    pub jwks_max_bytes: usize,
    pub jwks_cooldown: Duration,
    /// How long a delivered request id is remembered (fal retries a delivery up to 10 times).
    pub dedup_ttl: Duration,
    /// In-process bound of remembered deliveries and of submitted jobs (per replica).
    pub max_tracked: u64,
    /// Forwarding a verified delivery to the caller's own hook: attempts, per-attempt timeout,
    /// first backoff (doubled per attempt), deliveries waiting at once and their body bytes
    /// (more are dropped).
    pub forward_attempts: u32,
    pub forward_timeout: Duration,
    pub forward_backoff: Duration,
    pub forward_queue: usize,
    pub forward_queue_bytes: usize,
    /// Not a config key (set in code only, by tests): every forward is sent to this origin
    /// instead of its hook's (path and query kept), as if the hook's host resolved there. The
    /// policy only lets https hooks on allowlisted hosts through, which a test cannot serve.
    pub forward_via: Option<Url>,
}

impl WebhooksConfig {
    /// The receiver off, with the defaults of every bound.
    pub fn off() -> Self {
        Self::parse(&RawWebhooks::default(), None).unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// `[webhooks]` read against `public_url` (falgate's own address).
    pub fn parse(raw: &RawWebhooks, public_url: Option<&Url>) -> Result<Self, String> {
        let positive = |key: &str, value: u64| match value {
            0 => Err(format!("`webhooks.{key}` must be greater than zero")),
            value => Ok(value),
        };
        let hook_url = match (raw.receive, public_url) {
            (false, _) => None,
            (true, None) => {
                return Err(
                    "`webhooks.receive` needs `public_url`: fal must be told where falgate's receiver is".into(),
                )
            }
            (true, Some(base)) => Some(receiver_url(base)?),
        };
        let fal_user_id = match raw.fal_user_id.as_deref() {
            None => None,
            Some(id) if !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(id.to_owned())
            }
            Some(_) => {
                return Err("`webhooks.fal_user_id` must be fal's user id (printable ASCII, at most 256 bytes)".into())
            }
        };
        // A delivery is accepted while its timestamp is within `max_skew` of the clock, so its
        // mark must outlive that window: else a replay of a captured delivery (its forward to the
        // caller's own hook carries fal's signature) after the mark expired would apply again.
        if raw.forward_queue_bytes < raw.max_body_bytes {
            return Err("`webhooks.forward_queue_bytes` must be at least `webhooks.max_body_bytes`".into());
        }
        if raw.dedup_ttl_seconds < raw.max_skew_seconds {
            return Err("`webhooks.dedup_ttl_seconds` must be at least `webhooks.max_skew_seconds`".into());
        }
        Ok(Self {
            receive: raw.receive,
            hook_url,
            fal_user_id,
            max_skew: Duration::from_secs(positive("max_skew_seconds", raw.max_skew_seconds)?),
            max_body_bytes: positive("max_body_bytes", raw.max_body_bytes as u64)? as usize,
            jwks_timeout: Duration::from_millis(positive("jwks_timeout_ms", raw.jwks_timeout_ms)?),
            jwks_max_bytes: positive("jwks_max_bytes", raw.jwks_max_bytes as u64)? as usize,
            // Zero would let every forged delivery refetch fal's JWKS.
            jwks_cooldown: Duration::from_secs(positive("jwks_cooldown_seconds", raw.jwks_cooldown_seconds)?),
            dedup_ttl: Duration::from_secs(positive("dedup_ttl_seconds", raw.dedup_ttl_seconds)?),
            max_tracked: positive("max_tracked", raw.max_tracked)?,
            forward_attempts: positive("forward_attempts", u64::from(raw.forward_attempts))? as u32,
            forward_timeout: Duration::from_millis(positive("forward_timeout_ms", raw.forward_timeout_ms)?),
            forward_backoff: Duration::from_millis(raw.forward_backoff_ms),
            forward_queue: positive("forward_queue", raw.forward_queue as u64)? as usize,
            forward_queue_bytes: raw.forward_queue_bytes,
            forward_via: None,
        })
    }
}

/// `<public_url>/api/fal/webhook` (a path prefix of `public_url` kept), in the canonical form
/// fal receives.
fn receiver_url(base: &Url) -> Result<Webhook, String> {
    let joined = format!("{}{RECEIVER_PATH}", base.as_str().trim_end_matches('/'));
    Webhook::parse(&joined).map_err(|err| format!("`public_url` cannot hold the webhook receiver: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiving_needs_public_url_and_hooks_under_its_prefix() {
        let raw = RawWebhooks {
            receive: true,
            ..RawWebhooks::default()
        };
        let err = WebhooksConfig::parse(&raw, None).unwrap_err();
        assert!(err.contains("public_url"), "{err}");
        let base = Url::parse("https://gate.example.com/prefix/").unwrap();
        let config = WebhooksConfig::parse(&raw, Some(&base)).unwrap();
        assert_eq!(
            config.hook_url.unwrap().as_str(),
            "https://gate.example.com/prefix/api/fal/webhook"
        );
        assert_eq!(config.max_skew, Duration::from_secs(300));
        assert_eq!(WebhooksConfig::off().hook_url, None);
    }

    #[test]
    fn zero_bounds_are_refused_by_name() {
        let raw = RawWebhooks {
            max_body_bytes: 0,
            ..RawWebhooks::default()
        };
        let err = WebhooksConfig::parse(&raw, None).unwrap_err();
        assert!(err.contains("webhooks.max_body_bytes"), "{err}");
        let raw = RawWebhooks {
            jwks_cooldown_seconds: 0,
            ..RawWebhooks::default()
        };
        let err = WebhooksConfig::parse(&raw, None).unwrap_err();
        assert!(err.contains("webhooks.jwks_cooldown_seconds"), "{err}");
        let raw = RawWebhooks {
            forward_queue_bytes: 1024,
            max_body_bytes: 1025,
            ..RawWebhooks::default()
        };
        let err = WebhooksConfig::parse(&raw, None).unwrap_err();
        assert!(err.contains("webhooks.forward_queue_bytes"), "{err}");
    }

    #[test]
    fn a_delivery_is_remembered_at_least_as_long_as_its_timestamp_is_accepted() {
        let raw = RawWebhooks {
            max_skew_seconds: 300,
            dedup_ttl_seconds: 299,
            ..RawWebhooks::default()
        };
        let err = WebhooksConfig::parse(&raw, None).unwrap_err();
        assert!(err.contains("webhooks.dedup_ttl_seconds"), "{err}");
        let raw = RawWebhooks {
            dedup_ttl_seconds: 300,
            ..raw
        };
        assert!(WebhooksConfig::parse(&raw, None).is_ok());
    }
}
