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
            // every refusal (`access_log::observe_with`); then the host and header-size checks,
            // CORS and private answers ([`edge`]). One layer: each `from_fn` layer boxes its
            // future and its inner service per request.
            .layer(from_fn_with_state(Arc::new((observer, current)), outer))
            // A panic becomes a 500 in the contract's shape instead of a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

/// The access log around [`edge`].
async fn outer(
    State(state): State<Arc<(access_log::Observer, Arc<Current>)>>,
    request: Request,
    next: Next,
) -> Response {
    let (observer, current) = &*state;
    access_log::observe_with(observer, request, |request| edge(current, request, next)).await
}

/// What every request meets after the access log, in one middleware (each `from_fn` layer
/// boxes its future and its inner service per request), outermost first:
/// - answers under /api/fal/ and /playground/api/ are one caller's: `no-store`, `Vary` on the
///   credentials, and no validator or expiry of fal's ([`private`]); this covers the refusals
///   below (400, 431, CORS preflights) too;
/// - 400 for a repeated Host, 431 for oversized headers ([`header_sizes`]): hyper caps their
///   count, not their size. The first reader of config: it attaches the request's snapshot;
/// - CORS: preflights answered here (before auth); allowed origins on every response.
async fn edge(current: &Current, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let private = PRIVATE_PREFIXES.iter().any(|prefix| path.starts_with(prefix));
    let mut response = match header_sizes(current, &mut request) {
        Err(refused) => *refused,
        Ok(gate) => match cors::before(&gate.config.cors, &request) {
            Err(preflight) => *preflight,
            Ok(origin) => {
                let mut response = next.run(request).await;
                cors::after(&gate.config.cors, response.headers_mut(), origin);
                response
            }
        },
    };
    if private {
        make_private(&mut response);
    }
    response
}

/// 400 when `Host` is repeated (RFC 9112 §3.2: a request with more than one is invalid, and two
/// readers could each pick another); 431 when one header is over `request.max_header_bytes` or
/// all together are over `request.max_headers_total_bytes`. Attaches the request's snapshot of
/// the gate, and gives it back.
fn header_sizes(current: &Current, request: &mut Request) -> Result<Arc<crate::state::Gate>, Box<Response>> {
    if request.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Box::new(
            GateError::Malformed("the Host header may be sent only once".into()).into_response(),
        ));
    }
    let gate = current.of(request.extensions_mut());
    let (per_header, all) = (gate.config.max_header_bytes, gate.config.max_headers_total_bytes);
    let mut total = 0;
    for (name, value) in request.headers() {
        let size = name.as_str().len() + value.len();
        total += size;
        if size > per_header || total > all {
            return Err(Box::new(GateError::HeadersTooLarge.into_response()));
        }
    }
    Ok(gate)
}

/// Marks an answer private and uncacheable (errors and streams too), and drops the caching
/// headers of fal's (the relay's allowlist already leaves them behind; this is the one place
/// that decides). Replaces the `no-cache` the relay puts on event streams.
fn make_private(response: &mut Response) {
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

/// Where every answer depends on the caller: the proxied routes and usage, and the playground's
/// API (a caller's endpoints and tier). Static pages, assets and health checks are not.
const PRIVATE_PREFIXES: [&str; 2] = ["/api/fal/", "/playground/api/"];

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    GateError::Internal("a handler panicked".into()).into_response()
}
