//! The outer stack every public request passes, outermost first. No layer buffers a body and
//! none imposes a total timeout, so event streams pass untouched.

use std::any::Any;

use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::GateError;
use crate::telemetry::access_log;

/// Wraps the public router in the cross-cutting layers.
pub fn wrap(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            // Request id, span, one access-log line, metrics, and the JSON body of every refusal.
            .layer(from_fn(access_log::observe))
            // A panic becomes a 500 in the contract's shape instead of a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    GateError::Internal("a handler panicked".into()).into_response()
}
