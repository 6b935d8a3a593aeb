//! fal's signed webhooks, received by falgate itself (`POST /api/fal/webhook`, issue 24): a job
//! learns it ended the moment fal says so, instead of when a browser polls or the reconciler
//! asks.
//!
//! With `[webhooks] receive = true` (and `public_url` set) every submit falgate forwards carries
//! `fal_webhook=<public_url>/api/fal/webhook` ([`Webhooks::hooked`]); a caller's own allowlisted
//! `fal_webhook` is recorded with the job ([`jobs`]) and the delivery is forwarded there once
//! verified ([`forward`]). A delivery has no JWT: fal's Ed25519 signature is its credential
//! ([`verify`], keys from fal's JWKS: [`jwks`]). In order, a delivery is refused when: the
//! receiver is off (404), its body is over `max_body_bytes` or slower than the body timeout
//! (the route reads it), a signed header is missing or garbled, its timestamp is more than
//! `max_skew_seconds` away, it names another fal user than `fal_user_id`, no key of fal's JWKS
//! verifies it (after at most one bounded refetch), or falgate never submitted its request
//! (404). Each refusal before the signature verified spends the IP's failed-authentication
//! rate, like a bad token (past it the answer is 429 instead); none has any effect. A verified
//! delivery is applied once per request id, whichever replica receives it ([`dedup`]): a
//! repeat answers 200 and does nothing. The first one also consumes the job's record
//! ([`jobs`]), so a copy arriving after its mark is gone (evicted from a full in-process set,
//! expired) finds no job and has no effect either. [`apply`] is everything a verified delivery
//! does.

mod dedup;
mod forward;
mod jobs;
pub mod jwks;
mod settings;
pub mod verify;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use serde_json::Value;

use crate::clock::Clock;
use crate::fal::{AppId, Call, FalRequestId, Op};
use crate::limits::{Limiter, OnStoreError};
use crate::redis::RedisStore;
pub use jobs::Submitted;
pub use settings::{RawWebhooks, WebhooksConfig, RECEIVER_PATH};
use verify::Signed;

/// Why a delivery was refused (each becomes a `GateError`, so its answer is the contract's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A signed header other than the timestamp and signature is missing or garbled.
    #[error("the {0} header is missing or invalid")]
    Malformed(&'static str),
    /// The timestamp is missing, not Unix seconds, or more than `max_skew_seconds` away.
    #[error("the webhook's timestamp is missing or too far from this server's clock")]
    Stale,
    /// `X-Fal-Webhook-User-Id` is not `[webhooks] fal_user_id`.
    #[error("the webhook is for another fal account")]
    WrongUser,
    /// The signature is missing, garbled, or verified by no key of fal's JWKS.
    #[error("the webhook's signature was not made by fal's signing keys")]
    BadSignature,
    /// Signed by fal, but for a request falgate never submitted (or forgot).
    #[error("no request with this id was submitted through this gateway")]
    UnknownRequest,
    /// fal's JWKS could not be loaded (fal retries the delivery later).
    #[error("fal's webhook signing keys are unavailable")]
    KeysUnavailable,
    /// Redis did not answer and `on_store_error = "deny"`.
    #[error("the shared state store is unavailable")]
    StoreDown,
}

impl Refusal {
    /// Whether the refusal is a failed authentication (it spends the IP's failed-auth rate).
    fn unauthenticated(self) -> bool {
        match self {
            Self::Malformed(_) | Self::Stale | Self::WrongUser | Self::BadSignature => true,
            Self::UnknownRequest | Self::KeysUnavailable | Self::StoreDown => false,
        }
    }
}

/// How a job ended, as fal's delivery says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `"status": "OK"`.
    Ok,
    /// `"status": "ERROR"`, with fal's `error_type` when it gave one.
    Error { error_type: Option<String> },
    /// A verified delivery whose body is not the JSON fal documents: the job ended, how is unknown.
    Unknown,
}

/// fal's error types for a job that failed on fal's side (fal does not bill them): what
/// `[limits] refund_failed_jobs` refunds. `request_timeout` is not among them: it may be the
/// caller's own `x-fal-request-timeout`.
pub const SERVER_SIDE_ERRORS: &[&str] = &[
    "internal_server_error",
    "startup_timeout",
    "runner_scheduling_failure",
    "runner_connection_timeout",
    "runner_disconnected",
    "runner_server_error",
];

impl Outcome {
    /// Reads fal's delivery body: `{"request_id", "status": "OK" | "ERROR", "error",
    /// "error_type", "payload"}`.
    pub fn of(body: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Self::Unknown;
        };
        match value.get("status").and_then(Value::as_str) {
            Some("OK") => Self::Ok,
            Some("ERROR") => Self::Error {
                error_type: value
                    .get("error_type")
                    .and_then(Value::as_str)
                    .filter(|kind| kind.len() <= 64)
                    .map(str::to_owned),
            },
            _ => Self::Unknown,
        }
    }

    /// Whether fal failed the job for a reason of its own ([`SERVER_SIDE_ERRORS`]).
    pub fn failed_server_side(&self) -> bool {
        match self {
            Self::Error { error_type: Some(kind) } => SERVER_SIDE_ERRORS.contains(&kind.as_str()),
            Self::Error { error_type: None } | Self::Ok | Self::Unknown => false,
        }
    }
}

/// One job that ended, as the "job ended" notification carries it.
#[derive(Debug, Clone)]
pub struct Ended<'a> {
    pub request_id: &'a FalRequestId,
    pub app: &'a AppId,
    /// The submitter's hash tag (`redis::tag_of` of `iss|sub`; the principal is never stored).
    pub caller_tag: &'a str,
    pub outcome: &'a Outcome,
    /// Whether its credits were given back.
    pub refunded: bool,
}

/// Who else learns that a job ended: called by [`apply`] once per job, after its slot was
/// freed. The seam for the per-user event stream and the ownership record's outcome (issue 24
/// items 3 and 4): their implementation replaces [`Counting`] in [`Webhooks::new`]. It must
/// not block: a slow notification holds the delivery's answer to fal.
pub trait JobEnded: Send + Sync {
    fn job_ended<'a>(&'a self, ended: Ended<'a>) -> BoxFuture<'a, ()>;
}

/// The in-process [`JobEnded`]: counts the jobs it was told about (tests read it).
#[derive(Debug, Default)]
pub struct Counting(AtomicUsize);

impl Counting {
    /// Jobs told about so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl JobEnded for Counting {
    fn job_ended<'a>(&'a self, _ended: Ended<'a>) -> BoxFuture<'a, ()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// Everything a verified, first delivery of job `id` does: frees the job's in-flight slot at
/// once (and drops it from the reconciler's index), gives back its request and credits when
/// `[limits] refund_failed_jobs` is on and fal failed it on its side, then tells `ended`.
/// Returns whether it refunded.
pub async fn apply(
    limiter: &Limiter,
    ended: &dyn JobEnded,
    id: &FalRequestId,
    job: &Submitted,
    outcome: &Outcome,
) -> bool {
    let Ok(app) = AppId::from_segments(&job.app.split('/').collect::<Vec<_>>()) else {
        // Written by this falgate from a parsed app: cannot happen; the reconciler is the backstop.
        return false;
    };
    let refund = (limiter.refunds_failed_jobs() && outcome.failed_server_side())
        .then_some(job.spend)
        .flatten();
    limiter.job_ended(&job.tag, &app, id, refund).await;
    let refunded = refund.is_some();
    ended
        .job_ended(Ended {
            request_id: id,
            app: &app,
            caller_tag: &job.tag,
            outcome,
            refunded,
        })
        .await;
    refunded
}

/// The receiver's process-lived parts: settings, fal's keys, delivered and submitted records,
/// the forward queue, and the "job ended" notification.
pub struct Webhooks {
    config: WebhooksConfig,
    keys: jwks::FalKeys,
    deliveries: dedup::Deliveries,
    jobs: jobs::Submissions,
    forwarder: forward::Forwarder,
    ended: Arc<dyn JobEnded>,
    clock: Clock,
}

/// What [`Webhooks::new`] builds from besides `[webhooks]`.
pub struct Parts<'a> {
    pub storage_url: &'a url::Url,
    pub redis: Option<RedisStore>,
    pub on_store_error: OnStoreError,
    /// How long a submitted job is remembered (the ownership record's TTL).
    pub job_ttl: std::time::Duration,
    pub clock: Clock,
    pub ended: Arc<dyn JobEnded>,
}

/// A delivery's answer when it was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The first delivery of its request: applied.
    Applied,
    /// A repeat (fal's retry, or another replica got it first): nothing done.
    Duplicate,
}

impl Webhooks {
    /// Builds the receiver (inside a Tokio runtime: the forward worker starts).
    pub fn new(config: WebhooksConfig, parts: Parts<'_>) -> Result<Self, String> {
        let keys = jwks::FalKeys::new(
            parts.storage_url,
            config.jwks_timeout,
            config.jwks_max_bytes,
            config.jwks_cooldown,
            parts.clock.clone(),
        )?;
        let forwarder = forward::Forwarder::start(forward::Terms {
            attempts: config.forward_attempts,
            timeout: config.forward_timeout,
            backoff: config.forward_backoff,
            queue: config.forward_queue,
            queue_bytes: config.forward_queue_bytes,
        })?;
        Ok(Self {
            deliveries: dedup::Deliveries::new(config.max_tracked, config.dedup_ttl, parts.redis.clone()),
            jobs: jobs::Submissions::new(config.max_tracked, parts.job_ttl, parts.redis, parts.on_store_error),
            keys,
            forwarder,
            ended: parts.ended,
            clock: parts.clock,
            config,
        })
    }

    /// Whether the receiver is on.
    pub fn receiving(&self) -> bool {
        self.config.hook_url.is_some()
    }

    /// Largest delivery body read.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    /// The call forwarded to fal for `call`: a submit carries falgate's own hook when the
    /// receiver is on (the caller's own, if any, is kept with the job by [`Self::submitted`]).
    pub fn hooked<'a>(&self, call: &'a Call) -> std::borrow::Cow<'a, Call> {
        match (&call.op, &self.config.hook_url) {
            (Op::Submit { endpoint, .. }, Some(hook)) => std::borrow::Cow::Owned(Call {
                op: Op::Submit {
                    endpoint: endpoint.clone(),
                    webhook: Some(hook.clone()),
                },
            }),
            _ => std::borrow::Cow::Borrowed(call),
        }
    }

    /// The job recorded for `id` (tests read what a submit recorded).
    #[cfg(test)]
    pub(crate) async fn job(&self, id: &FalRequestId) -> Option<Arc<Submitted>> {
        self.jobs.lookup(id).await.ok().flatten()
    }

    /// Records a submit fal accepted with falgate's hook (nothing when the receiver is off).
    pub async fn submitted(&self, id: &FalRequestId, job: Submitted) {
        if self.receiving() {
            // Boxed: inline, its store call would size every call's future.
            Box::pin(self.jobs.record(id, job)).await;
        }
    }

    /// Checks one delivery and, verified, applies it once ([`apply`]) and queues its forward
    /// to the caller's own hook when `allowed` (the policy now) still allows that hook. Errs
    /// with why it was refused; the route spends the IP's failed-auth rate when
    /// [`is_failed_authentication`] says so.
    pub async fn receive(
        &self,
        limiter: &Limiter,
        allowed: &(dyn Fn(&str) -> bool + Sync),
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Received, Refusal> {
        let signed = Signed::parse(headers)?;
        signed.check_time(self.clock.unix_seconds(), self.config.max_skew)?;
        signed.check_user(self.config.fal_user_id.as_deref())?;
        self.check_signature(&signed, body).await?;
        let Some(job) = self.jobs.lookup(&signed.request_id).await? else {
            // Its first delivery consumed the record: a copy (fal's retry) answers 200.
            if self.deliveries.seen(&signed.request_id).await? {
                crate::telemetry::metrics::webhook_delivered(false);
                return Ok(Received::Duplicate);
            }
            return Err(Refusal::UnknownRequest);
        };
        // The mark answers fal's retries; consuming the job's record guards the effect even
        // when the mark is gone (a full in-process set evicts, a mark expires).
        if !self.deliveries.first(&signed.request_id).await? || !self.jobs.take(&signed.request_id).await {
            crate::telemetry::metrics::webhook_delivered(false);
            return Ok(Received::Duplicate);
        }
        crate::telemetry::metrics::webhook_delivered(true);
        let outcome = Outcome::of(body);
        apply(limiter, self.ended.as_ref(), &signed.request_id, &job, &outcome).await;
        if let Some(url) = job.hook.as_deref().and_then(|hook| self.forward_url(hook, allowed)) {
            self.forwarder.enqueue(forward::Forward {
                url,
                headers: forwarded_headers(headers),
                body: body.clone(),
            });
        }
        Ok(Received::Applied)
    }

    /// Where a forward to `hook` goes: the hook, or its path and query on `forward_via`; None
    /// when `allowed` no longer allows it.
    fn forward_url(&self, hook: &str, allowed: &(dyn Fn(&str) -> bool + Sync)) -> Option<url::Url> {
        if !allowed(hook) {
            return None;
        }
        let hook = url::Url::parse(hook).ok()?;
        let Some(via) = &self.config.forward_via else {
            return Some(hook);
        };
        let mut url = via.clone();
        url.set_path(hook.path());
        url.set_query(hook.query());
        Some(url)
    }

    /// Any key of fal's JWKS verifies `signed`; an unknown signature asks for one refetch
    /// (bounded by the cooldown: a flood of forgeries costs at most one fetch per cooldown).
    async fn check_signature(&self, signed: &Signed, body: &[u8]) -> Result<(), Refusal> {
        let keys = match self.keys.current().await {
            jwks::Keys::Known(keys) => keys,
            jwks::Keys::Unavailable => return Err(Refusal::KeysUnavailable),
        };
        if signed.verified_by(&keys, body) {
            return Ok(());
        }
        match self.keys.refresh().await {
            jwks::Keys::Known(fresh) if !Arc::ptr_eq(&fresh, &keys) && signed.verified_by(&fresh, body) => Ok(()),
            _ => Err(Refusal::BadSignature),
        }
    }
}

/// What is forwarded to the caller's hook besides the body: fal's signature headers and the
/// content type, unchanged.
fn forwarded_headers(headers: &HeaderMap) -> Vec<(http::HeaderName, http::HeaderValue)> {
    verify::HEADERS
        .iter()
        .map(|name| http::HeaderName::from_static(name))
        .chain([http::header::CONTENT_TYPE])
        .filter_map(|name| Some((name.clone(), headers.get(&name)?.clone())))
        .collect()
}

/// Whether a refusal spends the IP's failed-authentication rate.
pub fn is_failed_authentication(refusal: Refusal) -> bool {
    refusal.unauthenticated()
}

#[cfg(test)]
mod tests;
