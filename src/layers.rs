//! The outer stack every public request passes, outermost first. No layer buffers a body and
//! none imposes a total timeout, so event streams pass untouched.

use std::any::Any;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::Cors;
use crate::cors;
use crate::error::GateError;
use crate::telemetry::access_log;

/// Wraps the public router in the cross-cutting layers.
pub fn wrap(router: Router, cors_config: Cors, header_caps: HeaderCaps, observer: access_log::Observer) -> Router {
    router.layer(
        ServiceBuilder::new()
            // Request id, trace context, spans, one access-log line, metrics, and the JSON body of
            // every refusal.
            .layer(from_fn_with_state(Arc::new(observer), access_log::observe))
            // 431 for oversized headers: hyper caps their count, not their size.
            .layer(from_fn_with_state(header_caps, check_header_sizes))
            // CORS: preflights answered here (before auth); allowed origins on every response.
            .layer(from_fn_with_state(Arc::new(cors_config), cors::cors))
            // A panic becomes a 500 in the contract's shape instead of a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

/// Largest single header value and all headers together, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct HeaderCaps {
    pub per_header: usize,
    pub total: usize,
}

async fn check_header_sizes(State(caps): State<HeaderCaps>, request: Request, next: Next) -> Response {
    let mut total = 0;
    for (name, value) in request.headers() {
        let size = name.as_str().len() + value.len();
        total += size;
        if size > caps.per_header || total > caps.total {
            return GateError::HeadersTooLarge.into_response();
        }
    }
    next.run(request).await
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    GateError::Internal("a handler panicked".into()).into_response()
}
