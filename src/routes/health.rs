//! `/healthz` (the process serves) and `/readyz` (config loaded; shared state reachable when
//! configured). The only public routes without a caller.

use axum::Json;
use serde_json::{json, Value};

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn ready() -> Json<Value> {
    Json(json!({ "status": "ready" }))
}
