//! fal's webhooks, emulated: a submit with `?fal_webhook=<url>` gets one delivery when its job
//! completes, signed as fal signs (headers `X-Fal-Webhook-Request-Id`, `-User-Id`,
//! `-Timestamp`, `-Signature` = hex Ed25519 over `request_id \n user_id \n timestamp \n
//! hex(sha256(body))`) with the emulator's own key, generated at start and served as a JWKS at
//! the REST host's `/rest.fal.ai/.well-known/jwks.json` (where falgate, told
//! `storage_url = <emulator>/rest.fal.ai`, looks for fal's). A delivery not answered 2xx is
//! retried, at most [`Settings::attempts`] times (fal: 10), waiting `backoff` doubled each time
//! (fast in tests: [`super::Emulator::set_webhook_retry`]). A `webhook` fault on the submit
//! spoils every delivery ([`Tamper`]) or fails the job. Every attempt is recorded
//! ([`super::Emulator::deliveries`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::faults::Tamper;
use super::model::ModelResult;
use super::queue::JobView;
use super::{lock, Emulator};
use crate::fal::signature as verify;

/// The fal user id the emulator's deliveries name.
pub const WEBHOOK_USER_ID: &str = "emulator-user";

/// Where the JWKS is served (fal's REST host's well-known path, under the emulator's prefix).
const JWKS_PATH: &str = "/rest.fal.ai/.well-known/jwks.json";

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            attempts: 10,
            backoff: Duration::from_millis(500),
        }
    }
}

/// One delivery attempt, as the emulator made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub request_id: String,
    pub url: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's status (None: not answered).
    pub status: Option<u16>,
    /// The receiver's `x-falgate-error` code, when it sent one.
    pub code: Option<String>,
    pub tamper: Option<Tamper>,
}

/// The signing keys (the current one signs; retired ones are still served) and the record.
pub(crate) struct Hooks {
    keys: Mutex<Vec<SigningKey>>,
    settings: Mutex<Settings>,
    deliveries: Mutex<Vec<Delivery>>,
    jwks_served: AtomicUsize,
    client: reqwest::Client,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            keys: Mutex::new(vec![new_key()]),
            settings: Mutex::default(),
            deliveries: Mutex::default(),
            jwks_served: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

impl Hooks {
    fn current(&self) -> SigningKey {
        lock(&self.keys).last().cloned().unwrap_or_else(new_key)
    }

    pub(crate) fn public_keys(&self) -> Vec<VerifyingKey> {
        lock(&self.keys).iter().map(SigningKey::verifying_key).collect()
    }

    pub(crate) fn rotate(&self) {
        let mut keys = lock(&self.keys);
        keys.push(new_key());
        // Bounded: the oldest retired keys go.
        if keys.len() > 4 {
            keys.remove(0);
        }
    }

    pub(crate) fn set(&self, settings: Settings) {
        *lock(&self.settings) = settings;
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    pub(crate) fn jwks_served(&self) -> usize {
        self.jwks_served.load(Ordering::SeqCst)
    }

    /// The four signed headers of a delivery of `body` for `request_id`, as fal would send them
    /// (`user_id` and `timestamp` as given), signed with the current key.
    pub(crate) fn sign(&self, request_id: &str, user_id: &str, timestamp: u64, body: &[u8]) -> Vec<(String, String)> {
        let timestamp = timestamp.to_string();
        let signature = self
            .current()
            .sign(&verify::message(request_id, user_id, &timestamp, body));
        vec![
            (verify::REQUEST_ID.to_owned(), request_id.to_owned()),
            (verify::USER_ID.to_owned(), user_id.to_owned()),
            (verify::TIMESTAMP.to_owned(), timestamp),
            (verify::SIGNATURE.to_owned(), hex::encode(signature.to_bytes())),
        ]
    }
}

/// `GET /rest.fal.ai/.well-known/jwks.json` (never recorded as a fal request, never faulted).
pub(crate) fn routes() -> Router<Emulator> {
    Router::new().route(JWKS_PATH, get(serve_jwks))
}

async fn serve_jwks(State(emulator): State<Emulator>) -> Response {
    let signer = &emulator.inner.webhooks;
    signer.jwks_served.fetch_add(1, Ordering::SeqCst);
    Json(verify::jwks_document(&signer.public_keys())).into_response()
}

/// What a submit's fault asks of its deliveries.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spoil {
    pub(crate) tamper: Option<Tamper>,
}

/// Schedules the delivery of job `id` of `app` to `url`, once its job completes.
pub(crate) fn schedule(emulator: &Emulator, app: String, id: String, url: String, spoil: Spoil, after: Duration) {
    let emulator = emulator.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let Some(snapshot) = emulator.inner.queue.snapshot(&app, &id) else {
            return;
        };
        let body = payload(&id, &snapshot).to_string();
        deliver(&emulator, &id, &url, body.as_bytes(), spoil.tamper).await;
    });
}

/// fal's delivery body: `status` `OK` with the output as `payload`, or `ERROR` with `error`,
/// `error_type` and what fal had as `payload`.
fn payload(id: &str, snapshot: &JobView) -> Value {
    let mut body = json!({ "request_id": id, "gateway_request_id": id });
    match (super::status::failure(snapshot), &snapshot.outcome) {
        (None, ModelResult::Output(output)) => {
            body["status"] = json!("OK");
            body["payload"] = output.clone();
        }
        (failure, outcome) => {
            let (error, error_type) = failure.unwrap_or(("Invalid status code: 500", "internal_server_error".into()));
            body["status"] = json!("ERROR");
            body["error"] = json!(error);
            body["error_type"] = json!(error_type);
            body["payload"] = match outcome {
                ModelResult::Invalid(detail) => json!({ "detail": detail }),
                ModelResult::Output(_) | ModelResult::Failed(_) => Value::Null,
            };
        }
    }
    body
}

/// Sends one delivery until it is answered 2xx or the attempts are spent (a `duplicate` tamper
/// sends each attempt twice).
async fn deliver(emulator: &Emulator, id: &str, url: &str, body: &[u8], tamper: Option<Tamper>) {
    let signer = &emulator.inner.webhooks;
    let settings = *lock(&signer.settings);
    let mut backoff = settings.backoff;
    for attempt in 1..=settings.attempts {
        let copies = if tamper == Some(Tamper::Duplicate) { 2 } else { 1 };
        let mut taken = false;
        for _ in 0..copies {
            let (status, code) = send(signer, id, url, body, tamper).await;
            taken |= status.is_some_and(|status| (200..300).contains(&status));
            lock(&signer.deliveries).push(Delivery {
                request_id: id.to_owned(),
                url: url.to_owned(),
                attempt,
                status,
                code,
                tamper,
            });
        }
        if taken {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// One signed POST; the receiver's status and error code.
async fn send(
    signer: &Hooks,
    id: &str,
    url: &str,
    body: &[u8],
    tamper: Option<Tamper>,
) -> (Option<u16>, Option<String>) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (user, timestamp) = match tamper {
        Some(Tamper::WrongUser) => ("someone-else", now),
        Some(Tamper::StaleTimestamp) => (WEBHOOK_USER_ID, now.saturating_sub(3600)),
        _ => (WEBHOOK_USER_ID, now),
    };
    let mut headers = signer.sign(id, user, timestamp, body);
    if tamper == Some(Tamper::BadSignature) {
        let signature = &mut headers[3].1;
        let flipped = if signature.starts_with('0') { "1" } else { "0" };
        signature.replace_range(0..1, flipped);
    }
    let mut request = signer
        .client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let code = response
                .headers()
                .get("x-falgate-error")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            (Some(response.status().as_u16()), code)
        }
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(outcome: ModelResult, cancelled: bool) -> JobView {
        JobView {
            phase: super::super::queue::Phase::Completed,
            queue_position: 0,
            logs: Vec::new(),
            cancelled,
            outcome,
            inference_time: None,
        }
    }

    #[test]
    fn deliveries_carry_fals_payload_shapes() {
        let ok = payload("r1", &snapshot(ModelResult::Output(json!({"prompt": "p"})), false));
        assert_eq!(
            (ok["status"].as_str(), &ok["payload"]),
            (Some("OK"), &json!({"prompt": "p"}))
        );
        assert_eq!(ok["request_id"], "r1");
        let invalid = payload("r1", &snapshot(ModelResult::Invalid(json!([{"loc": ["body"]}])), false));
        assert_eq!(invalid["status"], "ERROR");
        assert_eq!(invalid["error_type"], "validation_error");
        assert_eq!(invalid["payload"]["detail"][0]["loc"][0], "body");
        let failed = payload(
            "r1",
            &snapshot(ModelResult::Failed("runner_disconnected".into()), false),
        );
        assert_eq!(
            (failed["status"].as_str(), failed["error_type"].as_str()),
            (Some("ERROR"), Some("runner_disconnected"))
        );
        let cancelled = payload("r1", &snapshot(ModelResult::Output(json!({})), true));
        assert_eq!(cancelled["error_type"], "request_cancelled");
    }

    #[test]
    fn a_signature_verifies_with_the_served_keys_and_rotation_keeps_old_ones() {
        let hooks = Hooks::default();
        let headers = hooks.sign("r1", WEBHOOK_USER_ID, 1_700_000_000, b"{}");
        let signature: [u8; 64] = hex::decode(&headers[3].1).unwrap().try_into().unwrap();
        let message = verify::message("r1", WEBHOOK_USER_ID, "1700000000", b"{}");
        let served = verify::jwks_keys(verify::jwks_document(&hooks.public_keys()).to_string().as_bytes()).unwrap();
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        assert!(served.iter().any(|key| key.verify_strict(&message, &signature).is_ok()));
        hooks.rotate();
        assert_eq!(hooks.public_keys().len(), 2);
        let rotated = hooks.sign("r1", WEBHOOK_USER_ID, 1_700_000_000, b"{}");
        assert_ne!(rotated[3].1, headers[3].1, "signed with the new key");
    }
}
