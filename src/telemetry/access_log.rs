//! The outermost middleware: gives each request a falgate request id, writes the JSON body of
//! any [`GateError`] refusal, logs one line and records metrics. The only place a refusal is
//! logged.
//!
//! The access line carries the request id, method and route itself. The request also runs in a
//! `request` span, at DEBUG level: with the default `info` filter it is never built (a span's
//! creation, field formatting and enter/exit on every poll cost more than the line itself in
//! `bench/run`), and with `RUST_LOG=debug` every line inside a request names its request id.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::{render, GateError};
use crate::telemetry::metrics;

/// The response header carrying falgate's request id.
pub const REQUEST_ID_HEADER: &str = "x-falgate-request-id";

/// The middleware function.
pub async fn observe(request: Request, next: Next) -> Response {
    // Always a fresh id: a caller-supplied one could be forged or carry log-injection bytes.
    let mut id_buffer = uuid::Uuid::encode_buffer();
    let request_id: &str = uuid::Uuid::new_v4().as_hyphenated().encode_lower(&mut id_buffer);
    let route = route_family(request.uri().path());
    let method = request.method().clone();
    let span = tracing::debug_span!("request", request_id, %method, route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let refusal = response.extensions().get::<Arc<GateError>>().cloned();
    if let Some(error) = &refusal {
        *response.body_mut() = Body::from(render(error, request_id).to_string());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    // Milliseconds to the microsecond (`0.317`, not `0.31690199999999996`).
    let latency_ms = f64::from(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)) / 1000.0;
    span.in_scope(|| match &refusal {
        Some(error) if error.status().is_server_error() => {
            tracing::warn!(
                %request_id,
                %method,
                route,
                status,
                latency_ms,
                code = error.code(),
                detail = error.log_detail(),
                "refused"
            )
        }
        Some(error) => {
            tracing::info!(%request_id, %method, route, status, latency_ms, code = error.code(), reason = %error, "refused")
        }
        None => tracing::info!(%request_id, %method, route, status, latency_ms, "answered"),
    });
    metrics::request_finished(route, status, elapsed, refusal.as_deref().map(GateError::code));
    response
}

/// A bounded route label: the family, never the raw path.
fn route_family(path: &str) -> &'static str {
    const FAMILIES: [&str; 5] = [
        "/api/fal/proxy",
        "/api/fal/queue/",
        "/api/fal/run/",
        "/healthz",
        "/readyz",
    ];
    FAMILIES
        .into_iter()
        .find(|family| path == *family || (family.ends_with('/') && path.starts_with(family)))
        .unwrap_or("other")
}
