//! The server span with OpenTelemetry on: it continues the caller's trace (a `traceparent` sent
//! once), the handler (and so fal) sees a `traceparent` naming falgate's span, and the span ends
//! with the call's status, id, operation, endpoint and error code. Found by mutation
//! (TESTING.md): with tracing off, as in every other unit test, none of this runs.

use std::sync::Mutex;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// The spans ended so far.
#[derive(Debug, Clone, Default)]
struct Ended(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Ended {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

/// Answers with the `traceparent` it was given (what `upstream` would send fal).
async fn echo_traceparent(headers: HeaderMap) -> Response {
    let seen = headers
        .get(TRACEPARENT)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut response = Response::new(Body::from(seen));
    response.extensions_mut().insert(CallFacts {
        operation: Some("status"),
        endpoint: Some("fal-ai/flux".into()),
        principal: None,
    });
    response
}

async fn refused() -> Response {
    use axum::response::IntoResponse as _;
    GateError::UpstreamBadResponse("fal sent garbage".into()).into_response()
}

/// Calls `path` with `headers` under an OpenTelemetry layer; returns the body and the server span.
async fn traced(path: &str, headers: &[(&str, &str)]) -> (String, SpanData) {
    let ended = Ended::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(ended.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let router = Router::new()
        .route("/api/fal/queue/{*rest}", get(echo_traceparent))
        .route("/api/fal/run/{*rest}", get(refused))
        .layer(from_fn_with_state(Arc::new(Observer::default()), observe));
    let mut request = Request::builder().uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let spans = ended.0.lock().unwrap().clone();
    let server: Vec<SpanData> = spans
        .into_iter()
        .filter(|span| span.span_kind == opentelemetry::trace::SpanKind::Server)
        .collect();
    assert_eq!(server.len(), 1, "one server span per call: {server:?}");
    (
        String::from_utf8(body.to_vec()).unwrap(),
        server.into_iter().next().unwrap(),
    )
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn hex<const N: usize>(bytes: [u8; N]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_server_span_continues_the_callers_trace_and_names_the_call() {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (seen, span) = traced(
        "/api/fal/queue/fal-ai/flux/requests/1/status",
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(hex(span.span_context.trace_id().to_bytes()), TRACE_ID);
    assert_eq!(hex(span.parent_span_id.to_bytes()), PARENT_ID);
    assert_eq!(span.name, "GET /api/fal/queue/");
    // The handler (and fal) get the same trace, with falgate's span as the parent.
    let ours = hex(span.span_context.span_id().to_bytes());
    assert_eq!(seen, format!("00-{TRACE_ID}-{ours}-01"));
    assert_eq!(attribute(&span, "http.response.status_code"), Some(Value::I64(200)));
    assert_eq!(attribute(&span, "falgate.operation"), Some(Value::from("status")));
    assert_eq!(attribute(&span, "falgate.endpoint"), Some(Value::from("fal-ai/flux")));
    assert!(attribute(&span, "falgate.request_id").is_some());
    assert_eq!(attribute(&span, "falgate.error_code"), None);
    assert_eq!(span.status, Status::Unset, "a complete 200 is no error");
}

#[tokio::test]
async fn a_traceparent_sent_twice_is_ignored_and_a_fresh_trace_begins() {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (seen, span) = traced(
        "/api/fal/queue/fal-ai/flux/requests/1/status",
        &[("traceparent", &traceparent), ("traceparent", &traceparent)],
    )
    .await;
    let trace_id = hex(span.span_context.trace_id().to_bytes());
    assert_ne!(trace_id, TRACE_ID);
    let ours = hex(span.span_context.span_id().to_bytes());
    assert_eq!(seen, format!("00-{trace_id}-{ours}-01"));
}

#[tokio::test]
async fn a_server_refusal_ends_the_span_in_error_with_its_code() {
    let (_, span) = traced("/api/fal/run/fal-ai/flux", &[]).await;
    assert_eq!(attribute(&span, "http.response.status_code"), Some(Value::I64(502)));
    assert_eq!(
        attribute(&span, "falgate.error_code"),
        Some(Value::from("upstream_bad_response"))
    );
    assert_eq!(attribute(&span, "falgate.operation"), Some(Value::from("none")));
    assert_eq!(attribute(&span, "falgate.endpoint"), None);
    assert_eq!(
        span.status,
        Status::Error {
            description: "upstream_bad_response".into()
        }
    );
}
