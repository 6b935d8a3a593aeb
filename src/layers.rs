//! The outer stack every public request passes, outermost first. No layer buffers a body and
//! none imposes a total timeout, so event streams pass untouched. The first layer that reads
//! config attaches the request's snapshot of the gate ([`crate::state::Current::of`]): the header
//! caps, CORS and the routes all read that one snapshot, whatever a reload does meanwhile.

pub mod access_log;

use std::any::Any;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::cors;
use crate::error::GateError;
use crate::state::Current;

/// Wraps the public router in the cross-cutting layers.
pub fn wrap(router: Router, current: Arc<Current>, observer: access_log::Observer) -> Router {
    router.layer(
        ServiceBuilder::new()
            // Request id, trace context, spans, one access-log line, metrics, and the JSON body of
            // every refusal.
            .layer(from_fn_with_state(Arc::new(observer), access_log::observe))
            // Answers under /api/fal/ and /playground/api/ are one caller's: `no-store`, `Vary` on the credentials,
            // and no validator or expiry of fal's. Outside the layers below, so their refusals
            // (431, CORS) are covered too.
            .layer(axum::middleware::from_fn(private_answers))
            // 400 for a repeated Host, 431 for oversized headers: hyper caps their count, not
            // their size. The first reader of config: it attaches the request's snapshot.
            .layer(from_fn_with_state(current.clone(), check_header_sizes))
            // CORS: preflights answered here (before auth); allowed origins on every response.
            .layer(from_fn_with_state(current, cors))
            // A panic becomes a 500 in the contract's shape instead of a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

/// 400 when `Host` is repeated (RFC 9112 §3.2: a request with more than one is invalid, and two
/// readers could each pick another); 431 when one header is over `request.max_header_bytes` or
/// all together are over `request.max_headers_total_bytes`.
async fn check_header_sizes(State(current): State<Arc<Current>>, mut request: Request, next: Next) -> Response {
    if request.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return GateError::Malformed("the Host header may be sent only once".into()).into_response();
    }
    let gate = current.of(request.extensions_mut());
    let (per_header, all) = (gate.config.max_header_bytes, gate.config.max_headers_total_bytes);
    drop(gate);
    let mut total = 0;
    for (name, value) in request.headers() {
        let size = name.as_str().len() + value.len();
        total += size;
        if size > per_header || total > all {
            return GateError::HeadersTooLarge.into_response();
        }
    }
    next.run(request).await
}

async fn cors(State(current): State<Arc<Current>>, mut request: Request, next: Next) -> Response {
    let gate = current.of(request.extensions_mut());
    cors::cors(&gate.config.cors, request, next).await
}

/// Marks every answer under [`PRIVATE_PREFIXES`] private and uncacheable (errors and streams
/// too), and
/// drops the caching headers of fal's (the relay's allowlist already leaves them behind; this
/// is the one place that decides). Replaces the `no-cache` the relay puts on event streams.
async fn private_answers(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let private = PRIVATE_PREFIXES.iter().any(|prefix| path.starts_with(prefix));
    let mut response = next.run(request).await;
    if private {
        let headers = response.headers_mut();
        for name in [header::EXPIRES, header::ETAG, header::LAST_MODIFIED, header::AGE] {
            headers.remove(name);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // One `Vary` naming the credentials and the origin first; what CORS varies a preflight
        // on besides the origin is kept after it.
        let others: Vec<HeaderValue> = headers
            .get_all(header::VARY)
            .iter()
            .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"origin"))
            .cloned()
            .collect();
        headers.insert(header::VARY, HeaderValue::from_static("Authorization, Cookie, Origin"));
        for other in others {
            headers.append(header::VARY, other);
        }
    }
    response
}

/// Where every answer depends on the caller: the proxied routes and usage, and the playground's
/// API (a caller's endpoints and tier). Static pages, assets and health checks are not.
const PRIVATE_PREFIXES: [&str; 2] = ["/api/fal/", "/playground/api/"];

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    GateError::Internal("a handler panicked".into()).into_response()
}
