//! What the policy is told: each tier's rules, each endpoint entry's, and the tiers' rules over
//! the `x-fal-*` headers. `config` reads them (`[tiers]`, `[endpoints]`), `policy` owns them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::fal::{EndpointId, ObjectLifecycle, Operation, Priority, RequestTimeout};

/// What a [`super::Policy`] is built from.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub endpoints: &'a BTreeMap<EndpointId, EndpointPolicy>,
    /// By tier name; none = one open tier allowing everything `endpoints` allows.
    pub tiers: &'a BTreeMap<String, Tier>,
    /// Hosts a `fal_webhook` may name.
    pub webhook_hosts: &'a BTreeSet<String>,
    /// Whether callers may upload files (`[storage] uploads`).
    pub uploads: bool,
}

/// What is allowed for one configured endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub sync_run: bool,
    /// Callers may mint temporary fal tokens for this endpoint's app (`fal.realtime`, client-mode
    /// streams): `POST rest.fal.ai/tokens/` through the proxy.
    pub client_tokens: bool,
    /// Body cap for this endpoint, when it differs from `request.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
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
    /// What becomes of the `x-fal-*` headers callers of this tier send.
    pub fal_headers: FalHeaderRules,
}

/// A tier's rules over the `x-fal-*` headers (`[tiers.NAME.fal_headers]`): a value is passed
/// (once parsed and canonical), dropped, capped or replaced by the operator's.
#[derive(Debug, Clone, Default)]
pub struct FalHeaderRules {
    pub runner_hint: Forward,
    pub no_retry: Forward,
    pub disable_fallbacks: Forward,
    pub max_request_timeout: Option<RequestTimeout>,
    pub max_object_expiration_seconds: Option<u64>,
    /// Forced on submits and runs (`x-fal-object-lifecycle-preference`) and uploads
    /// (`x-fal-object-lifecycle`), whatever the caller sent.
    pub object_lifecycle: Option<ObjectLifecycle>,
    pub store_io: StoreIo,
}

/// Whether a caller's header reaches fal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Forward {
    #[default]
    Allow,
    Drop,
}

/// `X-Fal-Store-IO`: the caller's valid value, or one the operator forces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreIo {
    #[default]
    Caller,
    /// `X-Fal-Store-IO: 0` on every call: fal keeps no input or output payloads.
    Off,
    /// `X-Fal-Store-IO: 1` on every call.
    On,
}
