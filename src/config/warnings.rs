//! Configurations that start but may surprise whoever runs them: returned with the config,
//! printed by `check-config` and logged at start, never refused.

use super::Config;

/// What in `config` works, but probably not as meant. `limits_set` says whether the file (or
/// the environment) had a `[limits]` section: without one nothing is limited, on purpose.
pub(super) fn surprises(config: &Config, limits_set: bool) -> Vec<String> {
    let mut found = Vec::new();
    if limits_set {
        found.extend(unlimited_tiers(config));
    }
    found.extend(default_tiers_left_out(config));
    found
}

/// `[limits.tiers.X]` tables that set no rate: their callers may call as fast as they like.
fn unlimited_tiers(config: &Config) -> impl Iterator<Item = String> + '_ {
    config.limits.tiers.iter().filter_map(|(name, tier)| {
        let rates = [&tier.submit, &tier.poll, &tier.cancel, &tier.upload];
        if rates.iter().any(|rate| rate.is_some()) {
            return None;
        }
        let quotas = tier.max_inflight_jobs.is_some() || tier.daily_requests.is_some() || tier.daily_credits.is_some();
        let what = if quotas {
            "no rate"
        } else {
            "no rate, quota or concurrency limit"
        };
        Some(format!(
            "`limits.tiers.{name}` sets {what} (submit, poll, cancel, upload): its callers are not rate limited"
        ))
    })
}

/// With `[tiers.*]`, a token's tier must be listed; a token without a tier claim gets its
/// issuer's `default_tier`, so leaving that out refuses every such token.
fn default_tiers_left_out(config: &Config) -> Vec<String> {
    if config.tiers.is_empty() {
        return Vec::new();
    }
    let mut missing: Vec<(&str, Vec<&str>)> = Vec::new();
    for issuer in &config.auth.issuers {
        let tier = issuer.default_tier.as_str();
        if config.tiers.contains_key(tier) {
            continue;
        }
        match missing.iter_mut().find(|(t, _)| *t == tier) {
            Some((_, issuers)) => issuers.push(&issuer.name),
            None => missing.push((tier, vec![&issuer.name])),
        }
    }
    missing
        .into_iter()
        .map(|(tier, issuers)| {
            format!(
                "`tiers` does not list `{tier}`, the tier of tokens without a tier claim (issuer {}): every such token is refused (403 tier_not_allowed)",
                issuers.join(", ")
            )
        })
        .collect()
}
