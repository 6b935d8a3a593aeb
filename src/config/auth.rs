//! Typed `[auth]`: the issuers (each with its keys, audience and claim mapping) and the token
//! checks shared by all of them.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use url::Url;

use super::env::Sources;
use super::file::{RawAuth, RawIssuer};
use super::ConfigError;
use crate::auth::{Auth, IssuerConfig, DEFAULT_ISSUER};

/// Shortest HMAC secret accepted: the hash size (RFC 7518 §3.2).
const MIN_HS_SECRET_BYTES: usize = 32;

pub(super) fn auth(raw: RawAuth, sources: &dyn Sources) -> Result<Auth, ConfigError> {
    let mut issuers = Vec::new();
    if raw.hs256_secret.is_some() || raw.jwks_url.is_some() || !raw.key_files.is_empty() {
        issuers.push(default_issuer(&raw)?);
    }
    for (name, issuer) in raw.issuers {
        issuers.push(named_issuer(
            &name,
            issuer,
            &raw.tier_claim,
            &raw.scopes_claim,
            &raw.default_tier,
            sources,
        )?);
    }
    if issuers.is_empty() {
        return Err(ConfigError(
            "`auth.hs256_secret` or `auth.jwks_url` (or an [auth.issuers.NAME] table) is required (e.g. set FALGATE_AUTH__HS256_SECRET); falgate never runs without authentication".into(),
        ));
    }
    if issuers.iter().filter(|i| i.issuer.is_none()).count() > 1 {
        return Err(ConfigError(
            "with several issuers, at most one may leave `issuer` unset".into(),
        ));
    }
    if raw.leeway_seconds > 300 {
        return Err(ConfigError("`auth.leeway_seconds` must be at most 300".into()));
    }
    if let Some(cookie) = &raw.cookie {
        if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(ConfigError("`auth.cookie` must be a plain cookie name".into()));
        }
    }
    Ok(Auth {
        issuers,
        leeway: Duration::from_secs(raw.leeway_seconds),
        max_lifetime: Duration::from_secs(positive("auth.max_lifetime_seconds", raw.max_lifetime_seconds)?),
        max_token_bytes: usize::try_from(positive("auth.max_token_bytes", raw.max_token_bytes as u64)?)
            .unwrap_or(usize::MAX),
        cookie: raw.cookie,
        token_cache_entries: raw.token_cache_entries,
        jwks_refresh: Duration::from_secs(positive("auth.jwks_refresh_seconds", raw.jwks_refresh_seconds)?),
        jwks_cooldown: Duration::from_secs(raw.jwks_cooldown_seconds),
        jwks_timeout: Duration::from_millis(positive("auth.jwks_timeout_ms", raw.jwks_timeout_ms)?),
        jwks_max_bytes: usize::try_from(positive("auth.jwks_max_bytes", raw.jwks_max_bytes as u64)?)
            .unwrap_or(usize::MAX),
        explain_refusals: false,
    })
}

fn default_issuer(raw: &RawAuth) -> Result<IssuerConfig, ConfigError> {
    let hs_secret = raw
        .hs256_secret
        .as_deref()
        .map(|s| hs_secret("auth.hs256_secret", s))
        .transpose()?;
    let mut algorithms = algorithms("auth.algorithms", &raw.algorithms)?;
    if hs_secret.is_some() && algorithms.is_empty() && raw.jwks_url.is_none() && raw.key_files.is_empty() {
        algorithms.push(Algorithm::HS256);
    }
    let jwks_url = raw
        .jwks_url
        .as_deref()
        .map(|u| jwks_url("auth.jwks_url", u))
        .transpose()?;
    audience("auth", jwks_url.as_ref(), raw.audience.as_deref(), raw.any_audience)?;
    Ok(IssuerConfig {
        name: DEFAULT_ISSUER.into(),
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        hs_secret,
        jwks_url,
        key_files: raw.key_files.iter().map(PathBuf::from).collect(),
        algorithms,
        tier_claim: raw.tier_claim.clone(),
        scopes_claim: raw.scopes_claim.clone(),
        default_tier: raw.default_tier.clone(),
        token_type: raw.token_type.clone(),
    })
}

fn named_issuer(
    name: &str,
    raw: RawIssuer,
    tier_claim: &str,
    scopes_claim: &str,
    default_tier: &str,
    sources: &dyn Sources,
) -> Result<IssuerConfig, ConfigError> {
    let key = |field: &str| format!("auth.issuers.{name}.{field}");
    if name == DEFAULT_ISSUER
        || name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(ConfigError(format!(
            "`auth.issuers.{name}`: the name must be plain (letters, digits, - and _) and not `{DEFAULT_ISSUER}`"
        )));
    }
    let hs_secret = match &raw.hs_secret_env {
        Some(var) => {
            let secret = sources
                .var(var)
                .ok_or_else(|| ConfigError(format!("`{}` names {var}, which is not set", key("hs_secret_env"))))?;
            // Named by the variable (the error's source), then by the key that names it.
            let secret = hs_secret(var, &secret)
                .map_err(|ConfigError(msg)| ConfigError(format!("{msg} (named by `{}`)", key("hs_secret_env"))))?;
            Some(secret)
        }
        None => None,
    };
    if hs_secret.is_none() && raw.jwks_url.is_none() && raw.key_files.is_empty() {
        return Err(ConfigError(format!(
            "`auth.issuers.{name}` needs keys: jwks_url, key_files or hs_secret_env"
        )));
    }
    let algorithms = algorithms(&key("algorithms"), &raw.algorithms)?;
    if hs_secret.is_some() && algorithms.is_empty() {
        return Err(ConfigError(format!(
            "`{}` must list the HS algorithms for hs_secret_env",
            key("algorithms")
        )));
    }
    let jwks_url = raw
        .jwks_url
        .as_deref()
        .map(|u| jwks_url(&key("jwks_url"), u))
        .transpose()?;
    audience(
        &format!("auth.issuers.{name}"),
        jwks_url.as_ref(),
        raw.audience.as_deref(),
        raw.any_audience,
    )?;
    Ok(IssuerConfig {
        name: name.to_owned(),
        issuer: Some(raw.issuer),
        audience: raw.audience,
        hs_secret,
        jwks_url,
        key_files: raw.key_files.iter().map(PathBuf::from).collect(),
        algorithms,
        tier_claim: raw.tier_claim.unwrap_or_else(|| tier_claim.to_owned()),
        scopes_claim: raw.scopes_claim.unwrap_or_else(|| scopes_claim.to_owned()),
        default_tier: raw.default_tier.unwrap_or_else(|| default_tier.to_owned()),
        token_type: raw.token_type,
    })
}

fn hs_secret(key: &str, secret: &str) -> Result<SecretString, ConfigError> {
    if secret.len() < MIN_HS_SECRET_BYTES {
        return Err(ConfigError(format!(
            "`{key}` must be at least {MIN_HS_SECRET_BYTES} bytes"
        )));
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// A JWKS URL: https, or http on a loopback host only (a key set fetched in clear text over a
/// network could be swapped for an attacker's keys).
fn jwks_url(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|err| ConfigError(format!("`{key}` is not a URL ({err})")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        "http" if url.host().is_some() => Err(ConfigError(format!(
            "`{key}` must be an https URL (http only on a loopback host)"
        ))),
        _ => Err(ConfigError(format!("`{key}` must be an https URL"))),
    }
}

/// An issuer whose keys come from a JWKS (an IdP's, shared by every app it serves) must name
/// the `audience` its tokens carry for falgate, or opt out with `any_audience = true`: else any
/// token that IdP minted for any app would be accepted. `table` is the issuer's key path.
fn audience(table: &str, jwks: Option<&Url>, audience: Option<&str>, any: bool) -> Result<(), ConfigError> {
    match (jwks, audience, any) {
        (_, Some(_), true) => Err(ConfigError(format!(
            "`{table}.any_audience`: set either `audience` or `any_audience = true`, not both"
        ))),
        (Some(_), None, false) => Err(ConfigError(format!(
            "`{table}.audience` is required with a jwks_url: without it any token the IdP minted for any of its apps is accepted (set `any_audience = true` to accept that on purpose)"
        ))),
        _ => Ok(()),
    }
}

fn algorithms(key: &str, raw: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    raw.iter()
        .map(|name| {
            name.parse::<Algorithm>()
                .map_err(|_| ConfigError(format!("`{key}`: unknown algorithm {name:?}")))
        })
        .collect()
}

fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!("`{key}` must be greater than zero")));
    }
    Ok(value)
}
