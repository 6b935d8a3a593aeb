//! CORS for browser callers: an exact-origin allowlist (`[cors]`), answered in one middleware.
//!
//! Written by hand rather than with `tower_http::cors::CorsLayer` because falgate needs what that
//! layer does not promise: a request with two `Origin` headers gets no CORS headers at all,
//! preflights are answered 204 before authentication (they never reach fal or count against
//! anything), and `Vary: Origin` is on every response, falgate's own refusals included.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use std::collections::BTreeSet;
use std::time::Duration;

/// Request headers a browser may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, accept, idempotency-key, x-fal-target-url, \
x-fal-queue-priority, x-fal-runner-hint, x-fal-request-timeout, x-fal-object-lifecycle-preference, \
x-fal-object-lifecycle, x-fal-no-retry";
/// Methods the gate serves.
const ALLOWED_METHODS: &str = "GET, POST, PUT";
/// Response headers a browser script may read.
const EXPOSED_HEADERS: &str = "x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type, retry-after, \
ratelimit, ratelimit-policy, x-falgate-error, x-falgate-request-id";

/// Browser origins allowed to call falgate.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Exact serialised origins (`https://app.example.com`).
    pub allowed_origins: BTreeSet<String>,
    pub allow_credentials: bool,
    pub max_age: Duration,
}

/// The first half of the middleware, with the request's `[cors]` config: a preflight is
/// answered here (`Err`, the answer), any other request goes on with the origin its answer
/// will allow (if any).
pub fn before(config: &Cors, request: &Request) -> Result<Option<HeaderValue>, Box<Response>> {
    let origin = allowed_origin(config, request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return Err(Box::new(preflight_response(config, origin)));
    }
    Ok(origin)
}

/// The second half: `Vary: origin` on every answer, and the allowed origin's headers.
pub fn after(config: &Cors, headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        allow(config, headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
}

/// The request's origin, when it is exactly one `Origin` header on the allowlist.
fn allowed_origin(config: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?;
    if origins.next().is_some() {
        return None;
    }
    config
        .allowed_origins
        .contains(origin.to_str().ok()?)
        .then(|| origin.clone())
}

fn preflight_response(config: &Cors, origin: Option<HeaderValue>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::VARY,
        HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
    );
    if let Some(origin) = origin {
        allow(config, headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(config.max_age.as_secs()),
        );
    }
    response
}

fn allow(config: &Cors, headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if config.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
