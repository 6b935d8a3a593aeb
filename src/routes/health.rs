//! `/healthz` (the process serves) and `/readyz` (config loaded, every issuer's keys loaded;
//! shared state reachable when configured). The only public routes without a caller.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::app::Gate;

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn ready(State(gate): State<Arc<Gate>>) -> (StatusCode, Json<Value>) {
    if gate.auth.ready() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "waiting_for": ["jwks"] })),
        )
    }
}
