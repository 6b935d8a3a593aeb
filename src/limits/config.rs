//! `[limits]`: the raw TOML shape of rates, quotas, concurrency and credit costs, with units
//! in the key names. Unknown keys are refused.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;

/// All limits. Every section is optional; an absent rate or quota is not enforced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Limits per tier, by tier name (the token's `tier` claim). Default: one empty `default`.
    #[serde(default = "default_tiers")]
    pub tiers: BTreeMap<String, TierLimits>,
    /// The tier of callers whose token names no tier, or a tier not configured here.
    #[serde(default = "default_tier_name")]
    pub default_tier: String,
    /// A global rate on submits per endpoint (all callers together), by endpoint id.
    #[serde(default)]
    pub endpoint_rates: BTreeMap<String, RateConfig>,
    /// The rate per client IP (IPv6: per /64) of requests that fail authentication.
    #[serde(default)]
    pub unauthenticated_ip_rate: Option<RateConfig>,
    /// What one call costs against `daily_credits`.
    #[serde(default)]
    pub credits: CreditsConfig,
    /// Shifts the quota day: it starts at 00:00 UTC plus this many seconds.
    #[serde(default)]
    pub quota_day_offset_seconds: i64,
    /// Peers allowed to set `X-Forwarded-For` / `Forwarded` (load balancers), as CIDRs.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long a submit's `Idempotency-Key` answer is remembered.
    #[serde(default = "default_idempotency_ttl_seconds")]
    pub idempotency_ttl_seconds: u64,
    /// A job that never reports completion frees its concurrency slot after this long.
    #[serde(default = "default_inflight_ttl_seconds")]
    pub inflight_ttl_seconds: u64,
    /// What to do when Redis cannot answer.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Most callers (and IPs) tracked in process; the least used are evicted past it.
    #[serde(default = "default_max_tracked_callers")]
    pub max_tracked_callers: u64,
    /// Status streams one caller may hold open at once (a tier may override it).
    #[serde(default = "default_per_caller")]
    pub streams_per_caller: u32,
    /// Buffered answers (result, sync run) relayed to one caller at once (a tier may override it).
    #[serde(default = "default_per_caller")]
    pub relays_per_caller: u32,
    /// Status streams open on this replica at once, all callers together.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Buffered answers relayed by this replica at once, all callers together.
    #[serde(default = "default_max_relays")]
    pub max_relays: u32,
    /// Longest life of a temporary fal token minted for a caller (`fal.realtime`), in seconds:
    /// a longer `token_expiration` is lowered to it. At most fal's default, 120.
    #[serde(default = "default_client_token_max_seconds")]
    pub client_token_max_seconds: u64,
}

/// The limits of one tier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Queue submits and sync runs.
    pub submit: Option<RateConfig>,
    /// Status, status stream and result reads.
    pub poll: Option<RateConfig>,
    /// Cancels.
    pub cancel: Option<RateConfig>,
    /// Storage upload initiations.
    pub upload: Option<RateConfig>,
    /// Temporary fal tokens minted for `fal.realtime` and client-mode streams.
    pub token: Option<RateConfig>,
    /// Jobs submitted and not yet completed, cancelled or expired.
    pub max_inflight_jobs: Option<u32>,
    /// Paid calls (submit, upload) per quota day.
    pub daily_requests: Option<u64>,
    /// Credits per quota day.
    pub daily_credits: Option<u64>,
    /// Overrides `[limits] streams_per_caller` for this tier.
    pub streams_per_caller: Option<u32>,
    /// Overrides `[limits] relays_per_caller` for this tier.
    pub relays_per_caller: Option<u32>,
}

/// Fastest rate accepted: one call per microsecond.
pub const MAX_PER_MINUTE: u32 = 60_000_000;

/// A GCRA rate: up to `burst` calls at once, refilled at `per_minute` calls a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub burst: u32,
    pub per_minute: u32,
}

/// Credit costs: an endpoint's `cost`, or, when the input field `field` holds one of `values`,
/// that value's cost instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsConfig {
    /// The cost of an endpoint not listed.
    #[serde(default = "default_cost")]
    pub default_cost: u64,
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointCredits>,
    /// The cost of one temporary fal token (`fal.realtime`): the calls made with it never pass
    /// through falgate, so the token is what is paid for.
    #[serde(default = "default_cost")]
    pub client_token_cost: u64,
}

/// The credit cost of one endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCredits {
    pub cost: u64,
    /// An input field whose value picks the cost, e.g. `model`.
    pub field: Option<String>,
    /// Cost per value of `field`; a value not listed costs `cost`.
    #[serde(default)]
    pub values: BTreeMap<String, u64>,
}

/// Redis unreachable or slow: refuse paid calls (`deny`, 503) or fall back to this replica's
/// in-process limits (`allow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Deny,
    Allow,
}

impl Default for CreditsConfig {
    fn default() -> Self {
        Self {
            default_cost: default_cost(),
            endpoints: BTreeMap::new(),
            client_token_cost: default_cost(),
        }
    }
}

fn default_cost() -> u64 {
    1
}

fn default_idempotency_ttl_seconds() -> u64 {
    24 * 3600
}

fn default_inflight_ttl_seconds() -> u64 {
    3600
}

fn default_max_tracked_callers() -> u64 {
    100_000
}

fn default_tiers() -> BTreeMap<String, TierLimits> {
    BTreeMap::from([(default_tier_name(), TierLimits::default())])
}

fn default_tier_name() -> String {
    "default".to_owned()
}

fn default_per_caller() -> u32 {
    8
}

fn default_max_streams() -> u32 {
    2048
}

fn default_max_relays() -> u32 {
    256
}

/// fal's own default token life (`@fal-ai/client` `TOKEN_EXPIRATION_SECONDS`), and the cap.
pub const MAX_CLIENT_TOKEN_SECONDS: u64 = 120;

fn default_client_token_max_seconds() -> u64 {
    MAX_CLIENT_TOKEN_SECONDS
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid [limits] config: {0}")]
pub struct LimitsConfigError(pub String);

impl LimitsConfig {
    /// No rate, quota or concurrency limit (no `[limits]` section); idempotency still works.
    pub fn unlimited() -> Self {
        Self {
            tiers: default_tiers(),
            default_tier: default_tier_name(),
            endpoint_rates: BTreeMap::new(),
            unauthenticated_ip_rate: None,
            credits: CreditsConfig::default(),
            quota_day_offset_seconds: 0,
            trusted_proxies: Vec::new(),
            idempotency_ttl_seconds: default_idempotency_ttl_seconds(),
            inflight_ttl_seconds: default_inflight_ttl_seconds(),
            on_store_error: OnStoreError::default(),
            max_tracked_callers: default_max_tracked_callers(),
            streams_per_caller: default_per_caller(),
            relays_per_caller: default_per_caller(),
            max_streams: default_max_streams(),
            max_relays: default_max_relays(),
            client_token_max_seconds: default_client_token_max_seconds(),
        }
    }

    /// Checks what serde cannot: the default tier exists and every rate can refill.
    pub fn validate(&self) -> Result<(), LimitsConfigError> {
        if !self.tiers.contains_key(&self.default_tier) {
            let tier = &self.default_tier;
            return Err(LimitsConfigError(format!(
                "`limits.default_tier`: `{tier}` is not in [limits.tiers]"
            )));
        }
        // Each rate with its key path, so the message names the key.
        let tier_rates = self.tiers.iter().flat_map(|(name, tier)| {
            [
                ("submit", &tier.submit),
                ("poll", &tier.poll),
                ("cancel", &tier.cancel),
                ("upload", &tier.upload),
                ("token", &tier.token),
            ]
            .into_iter()
            .filter_map(move |(op, rate)| rate.as_ref().map(|rate| (format!("limits.tiers.{name}.{op}"), rate)))
        });
        let other_rates = self
            .endpoint_rates
            .iter()
            .map(|(name, rate)| (format!("limits.endpoint_rates.\"{name}\""), rate))
            .chain(
                self.unauthenticated_ip_rate
                    .iter()
                    .map(|rate| ("limits.unauthenticated_ip_rate".to_owned(), rate)),
            );
        let caps = [
            ("limits.streams_per_caller", Some(self.streams_per_caller)),
            ("limits.relays_per_caller", Some(self.relays_per_caller)),
            ("limits.max_streams", Some(self.max_streams)),
            ("limits.max_relays", Some(self.max_relays)),
        ]
        .into_iter()
        .chain(self.tiers.values().flat_map(|tier| {
            [
                ("limits.tiers.*.streams_per_caller", tier.streams_per_caller),
                ("limits.tiers.*.relays_per_caller", tier.relays_per_caller),
            ]
        }));
        if !(1..=MAX_CLIENT_TOKEN_SECONDS).contains(&self.client_token_max_seconds) {
            return Err(LimitsConfigError(format!(
                "`limits.client_token_max_seconds` must be between 1 and {MAX_CLIENT_TOKEN_SECONDS} (fal's default)"
            )));
        }
        for (name, cap) in caps {
            // 0 would refuse every stream: disallow the operation in [tiers] instead.
            if cap == Some(0) {
                return Err(LimitsConfigError(format!("`{name}` must be at least 1")));
            }
        }
        for (key, rate) in tier_rates.chain(other_rates) {
            if rate.burst == 0 || rate.per_minute == 0 {
                return Err(LimitsConfigError(format!(
                    "`{key}`: burst and per_minute must be at least 1"
                )));
            }
            // GCRA counts in microseconds: a faster rate would have a zero emission interval.
            if rate.per_minute > MAX_PER_MINUTE {
                return Err(LimitsConfigError(format!(
                    "`{key}`: per_minute must be at most {MAX_PER_MINUTE}"
                )));
            }
        }
        Ok(())
    }
}
