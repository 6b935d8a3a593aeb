//! What a caller may do: the endpoint allowlist, the caller's tier (endpoints, operations,
//! queue priority cap, allowed input options), webhook hosts and uploads.
//! [`Policy::authorize`] returns a [`Grant`], the proof that a call is allowed.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::auth::Caller;
use crate::fal::{AppId, Call, EndpointId, Op, Priority, Webhook};

pub use self::error::PolicyError;
pub use self::settings::{EndpointPolicy, FalHeaderRules, Forward, Settings, StoreIo, Tier};

/// The header fal reads the queue priority from.
const PRIORITY_HEADER: &str = "x-fal-queue-priority";

/// The allow rules, built once from config.
pub struct Policy {
    endpoints: BTreeMap<EndpointId, EndpointPolicy>,
    /// Each entry's app, computed once: status, result and cancel are matched on it.
    apps: Vec<(AppId, EndpointId)>,
    tiers: BTreeMap<String, Tier>,
    /// Used when no tiers are configured: everything `endpoints` allows.
    open_tier: Tier,
    webhook_hosts: BTreeSet<String>,
    uploads: bool,
}

/// Proof that a call passed the policy, with what the tier still constrains.
#[derive(Debug)]
pub struct Grant<'a> {
    /// The configured endpoint entry that allowed it (None for storage uploads).
    pub endpoint: Option<EndpointId>,
    /// The endpoint a submit, sync run or streaming run calls (the entry or a sub path of it):
    /// what its credit price and global rate are looked up by (the longest `[limits]` key
    /// covering it). Set for the operations the table (`fal::OpFacts`) prices or rates by it.
    pub called: Option<EndpointId>,
    tier: &'a Tier,
}

impl Policy {
    /// Builds the policy from its settings (`config` assembles them: `Config::policy`).
    pub fn new(settings: &Settings<'_>) -> Self {
        Self {
            endpoints: settings.endpoints.clone(),
            apps: settings
                .endpoints
                .keys()
                .map(|entry| (entry.app(), entry.clone()))
                .collect(),
            tiers: settings.tiers.clone(),
            open_tier: Tier::default(),
            webhook_hosts: settings.webhook_hosts.clone(),
            uploads: settings.uploads,
        }
    }

    /// Decides whether `caller` may make `call`.
    pub fn authorize(&self, caller: &Caller, call: &Call) -> Result<Grant<'_>, PolicyError> {
        let tier = self.tier(caller)?;
        let facts = call.facts();
        if tier
            .operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&facts.operation))
        {
            return Err(PolicyError::OperationNotAllowed(call.op_name()));
        }
        // Priced and rated by the endpoint it calls, as the operations table says (a streaming
        // run exactly like a sync run).
        let called = call.op.endpoint().filter(|_| facts.calls_endpoint()).cloned();
        let endpoint = match &call.op {
            Op::Submit { endpoint, webhook } => {
                let (entry, _) = self.endpoint(tier, endpoint)?;
                if let Some(hook) = webhook {
                    self.check_webhook(hook)?;
                }
                Some(entry)
            }
            // A streaming run is a sync run whose answer is an event stream: the same rule.
            Op::Run { endpoint } | Op::RunStream { endpoint } => {
                let (entry, rules) = self.endpoint(tier, endpoint)?;
                if !rules.sync_run {
                    return Err(PolicyError::SyncRunNotAllowed);
                }
                Some(entry)
            }
            Op::Status { app, .. } | Op::StatusStream { app, .. } | Op::Result { app, .. } | Op::Cancel { app, .. } => {
                Some(self.app(tier, app)?)
            }
            Op::StorageInitiate { .. } if self.uploads => None,
            Op::StorageInitiate { .. } => return Err(PolicyError::UploadsNotAllowed),
            // The apps are in the body: `check_token_apps` once it is read.
            Op::ClientToken { .. } => None,
        };
        Ok(Grant { endpoint, called, tier })
    }

    fn tier(&self, caller: &Caller) -> Result<&Tier, PolicyError> {
        if self.tiers.is_empty() {
            return Ok(&self.open_tier);
        }
        self.tiers.get(&*caller.tier).ok_or(PolicyError::TierNotAllowed)
    }

    /// The most specific configured entry equal to `endpoint` or a parent of it (`fal-ai/flux`
    /// covers `fal-ai/flux/dev`), if the tier may use that entry. The entry is chosen first and
    /// the tier checked on it: a tier allowed `acme/echo` never reaches a configured
    /// `acme/echo/pro` through its parent (whose schema, price and `sync_run` would apply).
    fn endpoint(&self, tier: &Tier, endpoint: &EndpointId) -> Result<(EndpointId, EndpointPolicy), PolicyError> {
        self.endpoints
            .iter()
            .filter(|(entry, _)| entry.covers(endpoint))
            .max_by_key(|(entry, _)| entry.as_str().len())
            .filter(|(entry, _)| tier_allows(tier, entry))
            .map(|(entry, rules)| (entry.clone(), *rules))
            .ok_or_else(|| PolicyError::EndpointNotAllowed(endpoint.as_str().to_owned()))
    }

    /// An entry whose app is `app`: status, result and cancel name only the app.
    fn app(&self, tier: &Tier, app: &AppId) -> Result<EndpointId, PolicyError> {
        self.apps
            .iter()
            .find(|(entry_app, entry)| entry_app == app && tier_allows(tier, entry))
            .map(|(_, entry)| entry.clone())
            .ok_or_else(|| PolicyError::EndpointNotAllowed(app.as_str().to_owned()))
    }

    /// Whether the policy (as it is now) lets a job's recorded `fal_webhook` be posted to: the
    /// webhook receiver asks again before forwarding a delivery, so a host dropped from
    /// `webhooks.allowed_hosts` by a reload gets nothing more.
    pub fn allows_webhook(&self, hook: &str) -> bool {
        Webhook::parse(hook).is_ok_and(|hook| self.check_webhook(&hook).is_ok())
    }

    /// `fal_webhook` must be an https URL on an allowed host (fal would POST results there). The
    /// check reads the same parsed, canonical URL that is forwarded (`fal::Webhook`).
    fn check_webhook(&self, hook: &Webhook) -> Result<(), PolicyError> {
        let url = hook.url();
        let allowed = url.scheme() == "https"
            && url.username().is_empty()
            && url.password().is_none()
            && url.port().is_none()
            && matches!(url.host(), Some(url::Host::Domain(host)) if self.webhook_hosts.contains(host));
        if allowed {
            Ok(())
        } else {
            Err(PolicyError::WebhookNotAllowed)
        }
    }
}

impl Grant<'_> {
    /// Lowers `x-fal-queue-priority` to the tier's cap (the JS client always sends `normal`).
    pub fn cap_priority(&self, headers: &mut HeaderMap) {
        let Some(cap) = self.tier.max_queue_priority else {
            return;
        };
        let asked = headers
            .get(PRIORITY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Priority::parse)
            .unwrap_or(Priority::Normal);
        if asked > cap {
            headers.insert(PRIORITY_HEADER, HeaderValue::from_static(cap.as_str()));
        }
    }

    /// The tier's rules over the `x-fal-*` headers (applied by `upstream::forwarded_headers`).
    pub fn fal_headers(&self) -> &FalHeaderRules {
        &self.tier.fal_headers
    }

    /// Refuses input options the tier may not use (e.g. a premium `model`), naming the field.
    /// `input` is the input as fal will see it: the schema's defaults applied for absent fields
    /// (`schema::ValidInput::ruled`), so a default the tier may not use is refused too.
    pub fn check_options<'a>(&self, input: impl Into<crate::schema::Ruled<'a>>) -> Result<(), PolicyError> {
        let input = input.into();
        let Some(fields) = self.endpoint.as_ref().and_then(|entry| self.tier.options.get(entry)) else {
            return Ok(());
        };
        for (field, allowed) in fields {
            if let Some(value) = input.get(field) {
                if !allowed.contains(value) {
                    let list = allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
                    return Err(PolicyError::OptionNotAllowed {
                        field: field.clone(),
                        allowed: list,
                    });
                }
            }
        }
        Ok(())
    }
}

fn tier_allows(tier: &Tier, entry: &EndpointId) -> bool {
    tier.endpoints.as_ref().is_none_or(|allowed| allowed.contains(entry))
}

mod error;
mod settings;
#[cfg(test)]
mod tests;
mod tokens;

#[cfg(test)]
mod tests_edges;
