//! The test control API under `/_emulator/`: read and clear recorded requests, add and clear
//! faults, release held streams. Its calls are never recorded and never faulted.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::faults::Fault;
use super::status::detail;
use super::Emulator;

/// `GET|DELETE /_emulator/requests`, `POST|DELETE /_emulator/faults`, `POST /_emulator/release`,
/// `GET /_emulator/webhooks` (every delivery attempt), `POST /_emulator/webhooks/rotate` (sign
/// with a new key, the old ones still served).
pub(crate) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/_emulator/requests", get(list_requests).delete(clear_requests))
        .route("/_emulator/faults", axum::routing::post(add_fault).delete(clear_faults))
        .route("/_emulator/release", axum::routing::post(release))
        .route("/_emulator/webhooks", get(list_deliveries))
        .route("/_emulator/webhooks/rotate", axum::routing::post(rotate_key))
}

async fn list_deliveries(State(emulator): State<Emulator>) -> Response {
    Json(emulator.deliveries()).into_response()
}

async fn rotate_key(State(emulator): State<Emulator>) -> StatusCode {
    emulator.rotate_webhook_key();
    StatusCode::NO_CONTENT
}

/// What `POST /_emulator/release` names.
#[derive(serde::Deserialize)]
struct Release {
    key: String,
}

/// Body: `{"key": "..."}`; releases the streams held under that key.
async fn release(State(emulator): State<Emulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<Release>(&body) {
        Ok(Release { key }) => {
            emulator.release(&key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => detail(StatusCode::BAD_REQUEST, format!("invalid release: {error}")),
    }
}

async fn list_requests(State(emulator): State<Emulator>) -> Response {
    Json(emulator.requests()).into_response()
}

async fn clear_requests(State(emulator): State<Emulator>) -> StatusCode {
    emulator.clear_requests();
    StatusCode::NO_CONTENT
}

/// Body: one `Fault` as JSON; a malformed fault answers 400 with the parse error.
async fn add_fault(State(emulator): State<Emulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => {
            emulator.add_fault(fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => detail(StatusCode::BAD_REQUEST, format!("invalid fault: {error}")),
    }
}

async fn clear_faults(State(emulator): State<Emulator>) -> StatusCode {
    emulator.clear_faults();
    StatusCode::NO_CONTENT
}
