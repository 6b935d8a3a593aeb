//! Typed `[tiers]`, `[webhooks]`, `[cors]` and `[ownership]`: who may do what, from where.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::file::{RawCors, RawOwnership, RawTier, RawWebhooks};
use super::{ConfigError, EndpointPolicy};
use crate::fal::EndpointId;

/// One kind of call a tier may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Submit,
    Status,
    Stream,
    Result,
    Cancel,
    Run,
    Upload,
    /// Minting a temporary fal token (`fal.realtime`).
    Token,
}

/// fal's queue priorities, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low,
    Normal,
}

/// What callers of one tier may do.
#[derive(Debug, Clone, Default)]
pub struct Tier {
    /// Endpoint entries allowed; None = all configured endpoints.
    pub endpoints: Option<BTreeSet<EndpointId>>,
    /// Operations allowed; None = all.
    pub operations: Option<BTreeSet<Operation>>,
    pub max_queue_priority: Option<Priority>,
    /// Per endpoint entry, per input field: the values allowed.
    pub options: BTreeMap<EndpointId, BTreeMap<String, Vec<Value>>>,
}

/// Browser origins allowed to call falgate.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Exact serialised origins (`https://app.example.com`).
    pub allowed_origins: BTreeSet<String>,
    pub allow_credentials: bool,
    pub max_age: Duration,
}

/// Ownership memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnershipConfig {
    pub ttl: Duration,
    pub max_entries: u64,
}

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

impl Priority {
    /// Parses fal's header value.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }

    /// fal's header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
        }
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
    Ok(OwnershipConfig {
        ttl: Duration::from_secs(raw.ttl_seconds),
        max_entries: raw.max_entries,
    })
}
