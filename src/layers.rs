//! The outer stack every public request passes, outermost first. No layer buffers a body and
//! none imposes a total timeout, so event streams pass untouched.

use std::any::Any;

use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::Cors;
use crate::cors;
use crate::error::GateError;
use crate::telemetry::access_log;

/// Wraps the public router in the cross-cutting layers.
pub fn wrap(router: Router, cors_config: Cors) -> Router {
    router.layer(
        ServiceBuilder::new()
            // Request id, span, one access-log line, metrics, and the JSON body of every refusal.
            .layer(from_fn(access_log::observe))
            // CORS: preflights answered here (before auth); allowed origins on every response.
            .layer(from_fn_with_state(Arc::new(cors_config), cors::cors))
            // A panic becomes a 500 in the contract's shape instead of a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    GateError::Internal("a handler panicked".into()).into_response()
}
