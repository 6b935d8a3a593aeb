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
    /// How often the reconciler asks fal about jobs in flight (0 = never; slots then free only
    /// when a poll sees the end, or after `inflight_ttl_seconds`). See `limits/reconcile.rs`.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// A job in flight is asked about once nobody learned its state for this long.
    #[serde(default = "default_reconcile_idle_ms")]
    pub reconcile_idle_ms: u64,
    /// Most jobs asked about in one pass.
    #[serde(default = "default_reconcile_batch")]
    pub reconcile_batch: u32,
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
    /// Give a caller back the request and credits of a job fal reports (in a verified webhook,
    /// `webhooks`) as failed for a server-side reason, which fal does not bill.
    #[serde(default)]
    pub refund_failed_jobs: bool,
}

/// The limits of one tier, as written. A limit left out inherits the default tier's value (the
/// default tier's own left-out limits are not enforced); `"unlimited"` says so on purpose.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Queue submits and sync runs.
    pub submit: Option<Limit<RateConfig>>,
    /// Status, status stream and result reads.
    pub poll: Option<Limit<RateConfig>>,
    /// Cancels.
    pub cancel: Option<Limit<RateConfig>>,
    /// Storage upload initiations.
    pub upload: Option<Limit<RateConfig>>,
    /// Temporary fal tokens minted for `fal.realtime` and client-mode streams.
    pub token: Option<Limit<RateConfig>>,
    /// Jobs submitted and not yet completed, cancelled or expired.
    pub max_inflight_jobs: Option<Limit<u32>>,
    /// Paid calls (submit, upload) per quota day.
    pub daily_requests: Option<Limit<u64>>,
    /// Credits per quota day.
    pub daily_credits: Option<Limit<u64>>,
    /// Overrides `[limits] streams_per_caller` for this tier.
    pub streams_per_caller: Option<u32>,
    /// Overrides `[limits] relays_per_caller` for this tier.
    pub relays_per_caller: Option<u32>,
}

/// One tier limit: a value, or the string `"unlimited"` (written on purpose, never implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    Unlimited,
    Max(T),
}

/// What a tier enforces once the default tier's values are inherited: `None` = not enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierCaps {
    pub submit: Option<RateConfig>,
    pub poll: Option<RateConfig>,
    pub cancel: Option<RateConfig>,
    pub upload: Option<RateConfig>,
    pub token: Option<RateConfig>,
    pub max_inflight_jobs: Option<u32>,
    pub daily_requests: Option<u64>,
    pub daily_credits: Option<u64>,
    pub streams_per_caller: Option<u32>,
    pub relays_per_caller: Option<u32>,
}

/// The spelling of an explicit [`Limit::Unlimited`].
pub const UNLIMITED: &str = "unlimited";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Limit<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Untagged by hand: serde's untagged enums hide the inner error behind a generic one.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Word(String),
            Value(T),
        }
        match Raw::<T>::deserialize(deserializer) {
            Ok(Raw::Value(value)) => Ok(Self::Max(value)),
            Ok(Raw::Word(word)) if word == UNLIMITED => Ok(Self::Unlimited),
            _ => Err(serde::de::Error::custom(format!("expected a limit or \"{UNLIMITED}\""))),
        }
    }
}

impl<T: Copy> Limit<T> {
    /// The value enforced: `own` when written, else `inherited`.
    fn over(own: Option<Self>, inherited: Option<T>) -> Option<T> {
        match own {
            None => inherited,
            Some(Self::Unlimited) => None,
            Some(Self::Max(value)) => Some(value),
        }
    }
}

impl TierLimits {
    /// What this tier enforces over `base` (the default tier's caps; empty for the default tier).
    pub fn caps(&self, base: &TierCaps) -> TierCaps {
        TierCaps {
            submit: Limit::over(self.submit, base.submit),
            poll: Limit::over(self.poll, base.poll),
            cancel: Limit::over(self.cancel, base.cancel),
            upload: Limit::over(self.upload, base.upload),
            token: Limit::over(self.token, base.token),
            max_inflight_jobs: Limit::over(self.max_inflight_jobs, base.max_inflight_jobs),
            daily_requests: Limit::over(self.daily_requests, base.daily_requests),
            daily_credits: Limit::over(self.daily_credits, base.daily_credits),
            streams_per_caller: self.streams_per_caller,
            relays_per_caller: self.relays_per_caller,
        }
    }

    /// The rates written in this table, with their operation names.
    fn rates(&self) -> [(&'static str, Option<Limit<RateConfig>>); 5] {
        [
            ("submit", self.submit),
            ("poll", self.poll),
            ("cancel", self.cancel),
            ("upload", self.upload),
            ("token", self.token),
        ]
    }
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

/// Redis unreachable or slow, for short-term limits (rates, the per-IP rate, stream and relay
/// slots per caller): refuse the call (`deny`, 503) or let it through unmetered (`allow`,
/// counted in `falgate_limits_fail_open_total`). Money-like limits (day quotas, jobs in
/// flight, idempotency keys) always refuse (`limits/store_error.rs`).
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

fn default_reconcile_interval_ms() -> u64 {
    15_000
}

fn default_reconcile_idle_ms() -> u64 {
    30_000
}

fn default_reconcile_batch() -> u32 {
    100
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

/// The entry of `map` whose key is `endpoint` or its longest parent path (`a/b` covers
/// `a/b/c`), with that key: how a call is priced and globally rated.
pub(crate) fn longest<'a, V>(map: &'a BTreeMap<String, V>, endpoint: &str) -> Option<(&'a str, &'a V)> {
    map.iter()
        .filter(|(key, _)| {
            endpoint
                .strip_prefix(key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(key, _)| key.len())
        .map(|(key, value)| (key.as_str(), value))
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
            reconcile_interval_ms: default_reconcile_interval_ms(),
            reconcile_idle_ms: default_reconcile_idle_ms(),
            reconcile_batch: default_reconcile_batch(),
            on_store_error: OnStoreError::default(),
            max_tracked_callers: default_max_tracked_callers(),
            streams_per_caller: default_per_caller(),
            relays_per_caller: default_per_caller(),
            max_streams: default_max_streams(),
            max_relays: default_max_relays(),
            client_token_max_seconds: default_client_token_max_seconds(),
            refund_failed_jobs: false,
        }
    }

    /// Every tier's caps, the default tier's inherited by the others, and the default tier's.
    pub fn caps(&self) -> (BTreeMap<String, TierCaps>, TierCaps) {
        let base = self
            .tiers
            .get(&self.default_tier)
            .map(|tier| tier.caps(&TierCaps::default()))
            .unwrap_or_default();
        let tiers = self
            .tiers
            .iter()
            .map(|(name, tier)| (name.clone(), tier.caps(&base)))
            .collect();
        (tiers, base)
    }

    /// Refuses a `limits.credits.endpoints` or `limits.endpoint_rates` key that names no
    /// configured endpoint entry (`EndpointId::covers`: the entry or a parent path of the key): such a
    /// key would never price or rate a call.
    pub fn check_endpoint_keys(&self, covered: impl Fn(&str) -> bool) -> Result<(), LimitsConfigError> {
        let keys = (self
            .credits
            .endpoints
            .keys()
            .map(|key| ("limits.credits.endpoints", key)))
        .chain(self.endpoint_rates.keys().map(|key| ("limits.endpoint_rates", key)));
        for (section, key) in keys {
            if !covered(key) {
                return Err(LimitsConfigError(format!(
                    "`{section}.\"{key}\"` names no endpoint of [endpoints] (an entry or a sub path of one): it would never apply"
                )));
            }
        }
        Ok(())
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
            tier.rates().into_iter().filter_map(move |(op, rate)| match rate {
                Some(Limit::Max(rate)) => Some((format!("limits.tiers.{name}.{op}"), rate)),
                _ => None,
            })
        });
        let other_rates = self
            .endpoint_rates
            .iter()
            .map(|(name, rate)| (format!("limits.endpoint_rates.\"{name}\""), *rate))
            .chain(
                self.unauthenticated_ip_rate
                    .iter()
                    .map(|rate| ("limits.unauthenticated_ip_rate".to_owned(), *rate)),
            );
        let caps = [
            ("limits.streams_per_caller", Some(self.streams_per_caller)),
            ("limits.relays_per_caller", Some(self.relays_per_caller)),
            ("limits.max_streams", Some(self.max_streams)),
            ("limits.max_relays", Some(self.max_relays)),
            ("limits.reconcile_batch", Some(self.reconcile_batch)),
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
