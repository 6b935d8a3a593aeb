//! `/healthz` (the process serves) and `/readyz` (config loaded, every issuer's keys loaded;
//! shared state reachable when configured, and its mode: `memory`, `single`, `sentinel` or
//! `cluster`; 503 `draining` once shutdown began). The only public routes without a caller.

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::limits::Readiness;
use crate::state::Snapshot;

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn ready(Snapshot(gate): Snapshot) -> (StatusCode, Json<Value>) {
    if gate.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" })));
    }
    let store = gate.limiter.ready().await;
    let store_name = match store {
        Readiness::Ready => "ok",
        Readiness::Degraded => "degraded",
        Readiness::Unavailable => "unavailable",
    };
    let ready = gate.auth.ready() && store.is_ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "jwks": gate.auth.ready(),
        "store": store_name,
        "store_mode": gate.limiter.store_mode(),
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
