//! The outermost middleware: gives each request its request id and trace context, writes the JSON
//! body of any [`GateError`] refusal, logs one access line and records the call's metrics. The
//! only place a refusal is logged.
//!
//! - **Request id**: `x-falgate-request-id` or `x-request-id` from a peer inside
//!   `limits.trusted_proxies` when it is a plain id of at most 128 bytes
//!   ([`trace_context::valid_request_id`]), else a fresh UUID. It is returned in
//!   `x-falgate-request-id`, sent to fal as `x-request-id` (the inbound header is rewritten here,
//!   so `upstream::forwarded_headers` finds it), and every log line inside the request carries
//!   it (`telemetry::request_scope`: a task-local read by the log format, not a span).
//! - **Trace**: with OpenTelemetry on, a server span (target [`OTEL_TARGET`]) continues the
//!   caller's W3C trace, and the inbound `traceparent` is rewritten to name that span, so fal
//!   gets the same trace id with falgate's span as parent. With tracing off, the caller's
//!   `traceparent` is left for `forwarded_headers` to check (or replace with a fresh one).
//! - **Access line**: one per call, written when the answer ends: at once for answers read
//!   whole, at the end of the body for streams (so `total_ms` and `bytes` are the stream's; the
//!   line says `outcome = "complete"`, `"error"` when fal broke off, or `"client_gone"`).
//!   It names route, method, endpoint, operation, status, error code, time to headers
//!   (`headers_ms`), `total_ms`, `bytes`, a hash of the principal (never the token or the
//!   subject) and fal's `x-fal-request-id`. What the route learned about the call arrives as a
//!   [`CallFacts`] response extension.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use ipnet::IpNet;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::error::{render, GateError};
use crate::telemetry::access_line::{millis_f64, Answered, ACCESS_TARGET};
use crate::telemetry::access_log::{CallFacts, REQUEST_ID_HEADER, X_REQUEST_ID};
use crate::telemetry::metrics::{self, InFlightGuard};
use crate::telemetry::request_scope;
use crate::telemetry::trace_context::{self, TraceParent};
use crate::telemetry::OTEL_TARGET;

const FALGATE_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const FAL_REQUEST_ID: HeaderName = HeaderName::from_static("x-fal-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What the middleware needs besides the request: who may name the request id.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    pub trusted_proxies: Arc<[IpNet]>,
}

/// The middleware function.
pub async fn observe(State(observer): State<Arc<Observer>>, request: Request, next: Next) -> Response {
    observe_with(&observer, request, |request| next.run(request)).await
}

/// [`observe`] around any inner handler (`layers` runs its own middleware inside it, as one
/// layer: each `from_fn` layer boxes its future and its inner service per request).
pub async fn observe_with<F, Fut>(observer: &Observer, mut request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = Instant::now();
    let in_flight = InFlightGuard::start();
    let route = route_family(request.uri().path());
    let method = request.method().clone();
    let request_id = request_id(observer, &request);
    let headers = request.headers_mut();
    headers.remove(FALGATE_REQUEST_ID);
    headers.insert(X_REQUEST_ID, request_id.clone());
    let trace = server_span(route, &method, headers);
    // Every log line inside the request names it (`request_scope`; the access line names it
    // itself).
    let id = request_id.to_str().unwrap_or_default();
    let handled = request_scope::scope(request_id.clone(), inner(request));
    let mut response = handled.instrument(trace.clone()).await;
    let to_headers = started.elapsed();
    let refusal = response.extensions().get::<Arc<GateError>>().cloned();
    if let Some(error) = &refusal {
        *response.body_mut() = Body::from(render(error, id).to_string());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response.headers_mut().insert(FALGATE_REQUEST_ID, request_id.clone());
    let line = AccessLine {
        request_id,
        method,
        route,
        facts: response.extensions_mut().remove::<CallFacts>().unwrap_or_default(),
        status: response.status().as_u16(),
        refusal,
        fal_request_id: response.headers().get(FAL_REQUEST_ID).cloned(),
        started,
        to_headers,
        trace,
        _in_flight: in_flight,
    };
    match response.body().size_hint().exact() {
        // Read whole (a refusal, a control answer, model output): the answer has ended.
        Some(bytes) => {
            line.write(Ending::Complete, bytes, to_headers);
            response
        }
        None => {
            // The line waits for the stream's end: it must not pin the buffers its header
            // values were read into (fal's id is a slice of the fal connection's 8 KiB read
            // buffer, a trusted proxy's request id of the caller's), so it keeps copies.
            let line = line.detached();
            response.map(|body| {
                Body::new(Logged {
                    inner: body,
                    bytes: 0,
                    line: Some(line),
                })
            })
        }
    }
}

/// The request id: a trusted proxy's, when it is a plain id, else a fresh UUID.
fn request_id(observer: &Observer, request: &Request) -> HeaderValue {
    let trusted = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| is_trusted(peer.ip(), &observer.trusted_proxies));
    let from_proxy = || {
        [FALGATE_REQUEST_ID, X_REQUEST_ID].iter().find_map(|name| {
            let mut values = request.headers().get_all(name).iter();
            let value = values.next()?;
            (values.next().is_none() && trace_context::valid_request_id(value.as_bytes())).then(|| value.clone())
        })
    };
    trusted.then(from_proxy).flatten().unwrap_or_else(|| {
        let mut buffer = uuid::Uuid::encode_buffer();
        let fresh = uuid::Uuid::new_v4().as_hyphenated().encode_lower(&mut buffer);
        HeaderValue::from_str(fresh).unwrap_or_else(|_| HeaderValue::from_static("-"))
    })
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    // An IPv4-mapped IPv6 peer counts as its IPv4 address (as in `limits::client_ip`).
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// The OpenTelemetry server span of this call (disabled when tracing is off). It continues the
/// caller's trace, and the inbound `traceparent` is rewritten to name it, so the call to fal
/// carries this span as its parent.
fn server_span(route: &'static str, method: &Method, headers: &mut HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        target: OTEL_TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
    );
    if span.is_disabled() {
        return span;
    }
    let caller = single(headers, &TRACEPARENT).and_then(|v| TraceParent::parse(v.as_bytes()));
    if let Some(parent) = caller {
        let state = single(headers, &TRACESTATE)
            .filter(|v| trace_context::valid_tracestate(v))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<opentelemetry::trace::TraceState>().ok())
            .unwrap_or_default();
        let remote = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from(parent.trace_id),
            opentelemetry::trace::SpanId::from(parent.parent_id),
            opentelemetry::trace::TraceFlags::new(parent.flags),
            true,
            state,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    } else {
        headers.remove(TRACESTATE);
    }
    let context = span.context();
    let ours = context.span().span_context().clone();
    if ours.is_valid() {
        let parent = TraceParent {
            trace_id: u128::from_be_bytes(ours.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(ours.span_id().to_bytes()),
            flags: ours.trace_flags().to_u8(),
        };
        headers.insert(TRACEPARENT, parent.to_header());
    }
    span
}

/// The header's value when it is present exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// How an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Complete,
    /// fal broke off or went silent mid-stream.
    Error,
    /// The client closed the connection before the end.
    ClientGone,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Error => "error",
            Self::ClientGone => "client_gone",
        }
    }
}

/// Everything the access line says, kept until the answer ends.
struct AccessLine {
    request_id: HeaderValue,
    method: Method,
    route: &'static str,
    facts: CallFacts,
    status: u16,
    refusal: Option<Arc<GateError>>,
    fal_request_id: Option<HeaderValue>,
    started: Instant,
    to_headers: Duration,
    /// The OpenTelemetry span; it ends when this line is written.
    trace: tracing::Span,
    _in_flight: InFlightGuard,
}

/// A copy of `value` in its own allocation (not a slice of the buffer it was parsed from).
fn detached(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
}

impl AccessLine {
    /// The line with its header values copied out of the buffers they were parsed from.
    fn detached(mut self) -> Self {
        self.request_id = detached(&self.request_id);
        self.fal_request_id = self.fal_request_id.as_ref().map(detached);
        self
    }

    fn write(self, outcome: Ending, bytes: u64, total: Duration) {
        let Self {
            request_id,
            method,
            route,
            facts,
            status,
            refusal,
            fal_request_id,
            to_headers,
            trace,
            ..
        } = self;
        let request_id = request_id.to_str().unwrap_or_default();
        let operation = facts.operation.unwrap_or("none");
        let endpoint = facts.endpoint.as_deref().unwrap_or("-");
        let fal_request_id = fal_request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
        let outcome = outcome.as_str();
        match &refusal {
            Some(error) => {
                let principal = facts.principal.map(tracing::field::display);
                let headers_ms = millis_f64(to_headers);
                let total_ms = millis_f64(total);
                if error.status().is_server_error() {
                    tracing::warn!(
                        target: ACCESS_TARGET,
                        %request_id, %method, route, endpoint, operation, status, code = error.code(),
                        headers_ms, total_ms, bytes, principal, fal_request_id,
                        detail = error.log_detail(), "refused"
                    );
                } else {
                    tracing::info!(
                        target: ACCESS_TARGET,
                        %request_id, %method, route, endpoint, operation, status, code = error.code(),
                        headers_ms, total_ms, bytes, principal, fal_request_id,
                        reason = %error, detail = error.log_detail(), "refused"
                    );
                }
            }
            // The common line, without the formatter (`telemetry::access_line`).
            None => Answered {
                request_id,
                method: method.as_str(),
                route,
                endpoint,
                operation,
                status,
                headers: to_headers,
                total,
                bytes,
                principal: facts.principal,
                fal_request_id,
                outcome,
            }
            .log(),
        }
        let code = refusal.as_deref().map(GateError::code);
        metrics::request_finished(route, operation, status, total, code);
        if !trace.is_disabled() {
            trace.set_attribute("http.response.status_code", i64::from(status));
            trace.set_attribute("falgate.request_id", request_id.to_owned());
            trace.set_attribute("falgate.operation", operation);
            if let Some(endpoint) = facts.endpoint {
                trace.set_attribute("falgate.endpoint", endpoint);
            }
            if let Some(code) = code {
                trace.set_attribute("falgate.error_code", code);
            }
            if status >= 500 || outcome != "complete" {
                trace.set_status(opentelemetry::trace::Status::error(code.unwrap_or(outcome)));
            }
        }
    }
}

/// A streamed answer's body, counting bytes and writing the access line when it ends (or is
/// dropped: the client went away).
struct Logged {
    inner: Body,
    bytes: u64,
    line: Option<AccessLine>,
}

impl Logged {
    fn finish(&mut self, outcome: Ending) {
        if let Some(line) = self.line.take() {
            let total = line.started.elapsed();
            line.write(outcome, self.bytes, total);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Ending::Error),
            Poll::Ready(None) => self.finish(Ending::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish(Ending::ClientGone);
    }
}

/// A bounded route label: the family, never the raw path.
fn route_family(path: &str) -> &'static str {
    const FAMILIES: [&str; 6] = [
        "/api/fal/proxy",
        "/api/fal/queue/",
        "/api/fal/run/",
        "/api/fal/usage",
        "/healthz",
        "/readyz",
    ];
    FAMILIES
        .into_iter()
        .find(|family| path == *family || (family.ends_with('/') && path.starts_with(family)))
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trusted_peers_may_name_the_request_id() {
        let observer = Observer {
            trusted_proxies: Arc::from(vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]),
        };
        let request = |peer: &str, id: &str| {
            let mut request = Request::new(Body::empty());
            request
                .headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
            request
                .extensions_mut()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            request
        };
        assert_eq!(request_id(&observer, &request("10.1.2.3:1", "lb-123")), "lb-123");
        assert_eq!(
            request_id(&observer, &request("[::ffff:10.1.2.3]:1", "lb-123")),
            "lb-123"
        );
        assert_ne!(request_id(&observer, &request("203.0.113.9:1", "lb-123")), "lb-123");
        // A trusted peer's unsafe id is replaced too.
        assert_ne!(request_id(&observer, &request("10.1.2.3:1", "a;b")), "a;b");
    }
}

#[cfg(test)]
mod tests_lines;
#[cfg(test)]
mod tests_trace;
