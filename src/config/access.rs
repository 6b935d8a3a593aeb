//! Typed `[tiers]`, `[webhooks]`, `[cors]` and `[ownership]`: who may do what, from where.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use url::Url;

use super::file::{RawCors, RawFalHeaders, RawOwnership, RawTier};
use super::ConfigError;
use crate::cors::Cors;
pub use crate::fal::Operation;
use crate::fal::Priority;
use crate::fal::{EndpointId, RequestTimeout};
use crate::ownership::OwnershipConfig;
use crate::policy::{EndpointPolicy, FalHeaderRules, Forward, StoreIo, Tier};
use crate::webhooks::RawWebhooks;

impl Operation {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "submit" => Self::Submit,
            "status" => Self::Status,
            "stream" => Self::Stream,
            "result" => Self::Result,
            "cancel" => Self::Cancel,
            "run" => Self::Run,
            "upload" => Self::Upload,
            "token" => Self::Token,
            _ => return None,
        })
    }
}

pub(super) fn tiers(
    raw: BTreeMap<String, RawTier>,
    endpoints: &BTreeMap<EndpointId, EndpointPolicy>,
) -> Result<BTreeMap<String, Tier>, ConfigError> {
    raw.into_iter()
        .map(|(name, tier)| Ok((name.clone(), tier_of(&name, tier, endpoints)?)))
        .collect()
}

fn tier_of(name: &str, raw: RawTier, endpoints: &BTreeMap<EndpointId, EndpointPolicy>) -> Result<Tier, ConfigError> {
    let known = |id: &str, key: &str| -> Result<EndpointId, ConfigError> {
        EndpointId::parse(id)
            .ok()
            .filter(|id| endpoints.contains_key(id))
            .ok_or_else(|| {
                ConfigError(format!(
                    "`tiers.{name}.{key}` names {id:?}, which is not in [endpoints]"
                ))
            })
    };
    let tier_endpoints = raw
        .endpoints
        .map(|ids| ids.iter().map(|id| known(id, "endpoints")).collect())
        .transpose()?;
    let operations = raw
        .operations
        .map(|ops| {
            ops.iter()
                .map(|op| Operation::parse(op).ok_or_else(|| ConfigError(format!("`tiers.{name}.operations`: unknown operation {op:?} (submit, status, stream, result, cancel, run, upload, token)"))))
                .collect()
        })
        .transpose()?;
    let max_queue_priority = raw
        .max_queue_priority
        .map(|p| {
            Priority::parse(&p).ok_or_else(|| {
                ConfigError(format!(
                    "`tiers.{name}.max_queue_priority` must be \"low\" or \"normal\""
                ))
            })
        })
        .transpose()?;
    let options = raw
        .options
        .into_iter()
        .map(|(id, fields)| Ok((known(&id, "options")?, fields)))
        .collect::<Result<_, ConfigError>>()?;
    Ok(Tier {
        endpoints: tier_endpoints,
        operations,
        max_queue_priority,
        options,
        fal_headers: fal_headers(name, raw.fal_headers)?,
    })
}

fn fal_headers(name: &str, raw: RawFalHeaders) -> Result<FalHeaderRules, ConfigError> {
    let key = |key: &str| format!("`tiers.{name}.fal_headers.{key}`");
    let pass = |value: Option<String>, field: &str| match value.as_deref() {
        None | Some("allow") => Ok(Forward::Allow),
        Some("drop") => Ok(Forward::Drop),
        Some(_) => Err(ConfigError(format!("{} must be \"allow\" or \"drop\"", key(field)))),
    };
    let store_io = match raw.store_io.as_deref() {
        None | Some("caller") => StoreIo::Caller,
        Some("off") => StoreIo::Off,
        Some("on") => StoreIo::On,
        Some(_) => {
            return Err(ConfigError(format!(
                "{} must be \"caller\", \"off\" or \"on\"",
                key("store_io")
            )))
        }
    };
    let max_request_timeout = raw
        .max_request_timeout_seconds
        .map(|secs| {
            RequestTimeout::new(secs).map_err(|_| {
                ConfigError(format!(
                    "{} must be more than 1 and at most 86400",
                    key("max_request_timeout_seconds")
                ))
            })
        })
        .transpose()?;
    if let Some(lifecycle) = &raw.object_lifecycle {
        lifecycle
            .check()
            .map_err(|_| ConfigError(format!("{} is out of bounds", key("object_lifecycle"))))?;
    }
    Ok(FalHeaderRules {
        runner_hint: pass(raw.runner_hint, "runner_hint")?,
        no_retry: pass(raw.no_retry, "no_retry")?,
        disable_fallbacks: pass(raw.disable_fallbacks, "disable_fallbacks")?,
        max_request_timeout,
        max_object_expiration_seconds: raw.max_object_expiration_seconds,
        object_lifecycle: raw.object_lifecycle,
        store_io,
    })
}

pub(super) fn webhooks(raw: RawWebhooks) -> Result<BTreeSet<String>, ConfigError> {
    raw.allowed_hosts
        .into_iter()
        .map(|host| match url::Host::parse(&host) {
            Ok(url::Host::Domain(domain)) if domain == host => Ok(host),
            _ => Err(ConfigError(format!(
                "`webhooks.allowed_hosts`: {host:?} is not a lower-case DNS name"
            ))),
        })
        .collect()
}

pub(super) fn cors(raw: RawCors) -> Result<Cors, ConfigError> {
    let allowed_origins = raw
        .allowed_origins
        .into_iter()
        .map(|origin| {
            let canonical = Url::parse(&origin).ok().filter(|u| matches!(u.scheme(), "https" | "http")).map(|u| u.origin().ascii_serialization());
            if canonical.as_deref() == Some(origin.as_str()) {
                Ok(origin)
            } else {
                Err(ConfigError(format!("`cors.allowed_origins`: {origin:?} is not an exact origin like https://app.example.com (no `*`, `null`, path or trailing slash)")))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Cors {
        allowed_origins,
        allow_credentials: raw.allow_credentials,
        max_age: Duration::from_secs(raw.max_age_seconds),
    })
}

pub(super) fn ownership(raw: &RawOwnership) -> Result<OwnershipConfig, ConfigError> {
    if raw.ttl_seconds == 0 || raw.max_entries == 0 {
        return Err(ConfigError(
            "`ownership.ttl_seconds` and `ownership.max_entries` must be greater than zero".into(),
        ));
    }
    if !(1..=10_000).contains(&raw.per_caller) {
        return Err(ConfigError("`ownership.per_caller` must be between 1 and 10000".into()));
    }
    if !(1..=100).contains(&raw.list_max) || !(1..=raw.list_max).contains(&raw.list_limit) {
        return Err(ConfigError(
            "`ownership.list_max` must be between 1 and 100, and `ownership.list_limit` between 1 and it".into(),
        ));
    }
    Ok(OwnershipConfig {
        ttl: Duration::from_secs(raw.ttl_seconds),
        max_entries: raw.max_entries,
        per_caller: raw.per_caller,
        list_limit: raw.list_limit,
        list_max: raw.list_max,
    })
}
