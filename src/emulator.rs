//! An in-process fake of fal's queue, run, storage and CDN hosts, served on one listener by path
//! prefix (`/`, `/fal.run/`, `/rest.fal.ai/` (storage, tokens), `/_storage/`) plus a `/_emulator/` control API.
//! `GET /fal.run/{app}/realtime` is a WebSocket echo that accepts only the tokens issued here.
//! Lifecycles are driven by `tokio::time`, so tests control them with paused time.

mod control;
mod dispatch;
mod faults;
mod model;
mod queue;
mod realtime;
mod route;
mod status;
mod storage;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faults;
#[cfg(test)]
mod tests_realtime;
#[cfg(test)]
mod tests_results;
#[cfg(test)]
mod tests_stream_storage;
mod tokens;
mod webhooks;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use serde::{Deserialize, Serialize};

pub use faults::{Fault, FaultAction, Op, Tamper};
pub use tokens::IssuedToken;
pub use webhooks::{Delivery, WEBHOOK_USER_ID};

/// Timing and verbosity knobs of the emulator (config section `[emulator]`, all optional).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Time a request stays `IN_QUEUE` after submit, in milliseconds.
    pub queue_ms: u64,
    /// Time a request stays `IN_PROGRESS` before `COMPLETED`, in milliseconds.
    pub progress_ms: u64,
    /// Number of log lines emitted, evenly spread over the `IN_PROGRESS` phase.
    pub log_lines: usize,
    /// Interval between two events of the SSE status stream, in milliseconds.
    pub stream_interval_ms: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            queue_ms: 300,
            progress_ms: 700,
            log_lines: 3,
            stream_interval_ms: 100,
        }
    }
}

/// The emulator: cheap to clone, all clones share the same queue, faults, storage and records.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

/// One request received on a fal host path (control-API and `/_storage/` calls are not recorded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path as received, including the host prefix (e.g. `/fal.run/fal-ai/flux/dev`).
    pub path: String,
    /// Raw query string without the `?`, if any.
    pub query: Option<String>,
    /// Every header, names lower-cased, duplicates kept in order.
    pub headers: Vec<(String, String)>,
    /// The body decoded as lossy UTF-8 (empty when the body exceeded the size limit).
    pub body: String,
}

struct Inner {
    config: EmulatorConfig,
    requests: Mutex<Vec<RecordedRequest>>,
    faults: faults::FaultList,
    queue: queue::Queue,
    storage: storage::Store,
    holds: stream::Holds,
    /// Temporary tokens issued by `POST rest.fal.ai/tokens/`, by token.
    tokens: Mutex<std::collections::HashMap<String, tokens::IssuedToken>>,
    /// The webhook signing keys, retry settings and delivery record.
    webhooks: webhooks::Hooks,
}

impl Emulator {
    /// Creates an emulator with empty queue, storage, faults and request log.
    pub fn new(config: EmulatorConfig) -> Self {
        let inner = Inner {
            queue: queue::Queue::new(&config),
            config,
            requests: Mutex::new(Vec::new()),
            faults: faults::FaultList::default(),
            storage: storage::Store::default(),
            holds: stream::Holds::default(),
            tokens: Mutex::default(),
            webhooks: webhooks::Hooks::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The whole app: fal hosts by path prefix, the fake CDN and the `/_emulator/` control API.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(control::routes())
            .merge(storage::routes())
            .merge(webhooks::routes())
            .fallback(dispatch::handle)
            .with_state(self.clone())
    }

    /// Every request received so far on fal host paths, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Forgets all recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    /// Appends a fault; faults are consulted in insertion order and the first match wins.
    pub fn add_fault(&self, fault: Fault) {
        self.inner.faults.add(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.inner.faults.clear();
    }

    /// Releases the streams a `Hold` fault holds under `key` (and any that reach it later).
    pub fn release(&self, key: &str) {
        self.inner.holds.release(key.to_owned());
    }

    /// The public keys of the webhook signing key set, current last (what the JWKS serves).
    pub fn webhook_keys(&self) -> Vec<ed25519_dalek::VerifyingKey> {
        self.inner.webhooks.public_keys()
    }

    /// Starts signing deliveries with a new key (the old ones are still served).
    pub fn rotate_webhook_key(&self) {
        self.inner.webhooks.rotate();
    }

    /// Delivery attempts per job (fal: 10) and the first wait between two (doubled each time).
    pub fn set_webhook_retry(&self, attempts: u32, backoff: std::time::Duration) {
        self.inner.webhooks.set(webhooks::Settings { attempts, backoff });
    }

    /// Every webhook delivery attempt so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.webhooks.deliveries()
    }

    /// How many times the JWKS was served.
    pub fn jwks_served(&self) -> usize {
        self.inner.webhooks.jwks_served()
    }

    /// The signed headers fal would send with a delivery of `body` for `request_id`, naming
    /// `user_id` at `timestamp` (Unix seconds), signed with the current key: for tests that
    /// craft deliveries themselves.
    pub fn sign_webhook(&self, request_id: &str, user_id: &str, timestamp: u64, body: &[u8]) -> Vec<(String, String)> {
        self.inner.webhooks.sign(request_id, user_id, timestamp, body)
    }

    fn config(&self) -> &EmulatorConfig {
        &self.inner.config
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.inner.requests).push(request);
    }
}

/// Serves `emulator` on an already bound listener until `shutdown` resolves, then drains
/// open connections (SSE streams end at completion, stalls after their delay).
pub async fn serve(
    listener: tokio::net::TcpListener,
    emulator: Emulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, emulator.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
