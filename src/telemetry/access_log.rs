//! The outermost middleware: gives each request a falgate request id, runs it in a span,
//! writes the JSON body of any [`GateError`] refusal, logs one line and records metrics.
//! The only place a refusal is logged.

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
    let request_id = uuid::Uuid::new_v4().to_string();
    let route = route_family(request.uri().path());
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, %method, route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let refusal = response.extensions().get::<Arc<GateError>>().cloned();
    if let Some(error) = &refusal {
        *response.body_mut() = Body::from(render(error, &request_id).to_string());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| match &refusal {
        Some(error) if error.status().is_server_error() => {
            tracing::warn!(
                status,
                latency_ms,
                code = error.code(),
                detail = error.log_detail(),
                "refused"
            )
        }
        Some(error) => {
            tracing::info!(status, latency_ms, code = error.code(), reason = %error, "refused")
        }
        None => tracing::info!(status, latency_ms, "answered"),
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
