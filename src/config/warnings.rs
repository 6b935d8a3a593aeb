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
    found.extend(shared_failed_auth_bucket(config));
    found
}

/// The failed-authentication rate counts per client IP; behind a balancer or ingress that is
/// not in `limits.trusted_proxies`, every client arrives from its address and they all share one
/// bucket. falgate serves plain HTTP, so an `https` `public_url` says something terminates TLS
/// in front of it: a proxy. (A proxy seen at run time is warned about by `limits::client_ip`.)
fn shared_failed_auth_bucket(config: &Config) -> Option<String> {
    let limits = &config.limits;
    let behind_proxy = config.public_url.as_ref().is_some_and(|url| url.scheme() == "https");
    if limits.unauthenticated_ip_rate.is_none() || !limits.trusted_proxies.is_empty() || !behind_proxy {
        return None;
    }
    Some(
        "`limits.unauthenticated_ip_rate` is on and `limits.trusted_proxies` is empty, while `public_url` is https (a proxy terminates TLS in front of falgate): every client arrives from the proxy's address and shares one failed-authentication bucket; set `limits.trusted_proxies` to the proxy's addresses".to_owned(),
    )
}

/// The default tier writes no rate at all: its callers, and the rates every other tier leaves
/// out (inherited from it), are not limited. Another tier never gets this warning: what it
/// leaves out is the default tier's, and `"unlimited"` written anywhere says it is meant.
fn unlimited_tiers(config: &Config) -> Option<String> {
    let name = &config.limits.default_tier;
    let tier = config.limits.tiers.get(name)?;
    let rates = [&tier.submit, &tier.poll, &tier.cancel, &tier.upload];
    if rates.iter().any(|rate| rate.is_some()) {
        return None;
    }
    Some(format!(
        "`limits.tiers.{name}` (the default tier, whose limits the other tiers inherit) sets no rate (submit, poll, cancel, upload): its callers are not rate limited; write e.g. `submit = \"unlimited\"` if that is meant"
    ))
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
