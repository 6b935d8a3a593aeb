//! Every public route in one table. Routes only parse: each turns its path, query and headers
//! into a [`crate::fal::Call`] and hands it to [`crate::pipeline::handle`].

mod health;
mod proxy;
mod queue;

use std::sync::Arc;

use axum::routing::{any, get};
use axum::Router;

use crate::app::Gate;
use crate::error::GateError;

/// The public router (without the outer layers).
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/api/fal/proxy", any(proxy::handle))
        .route("/api/fal/queue/{*path}", any(queue::queue))
        .route("/api/fal/run/{*path}", any(queue::run))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gate)
}

async fn route_not_found() -> GateError {
    GateError::RouteNotFound
}

async fn method_not_allowed() -> GateError {
    GateError::MethodNotAllowed
}

/// Refuses a call made with another method than fal expects for it.
fn check_method(request: &axum::extract::Request, call: &crate::fal::Call) -> Result<(), GateError> {
    if request.method() == call.method() {
        Ok(())
    } else {
        Err(GateError::MethodNotAllowed)
    }
}
