//! The access line as written: one JSON line per call, read back field by field, for answers
//! read whole, refusals (4xx at INFO with the reason, 5xx at WARN) and streams (written at the
//! end of the body, with its bytes and how it ended). Found by mutation (TESTING.md): no unit
//! test read the line before.

use std::convert::Infallible;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::telemetry::access_log::PrincipalHash;
use crate::telemetry::captured::Captured;

const KEY: [u8; 32] = [7; 32];

/// The facts a route hands the middleware about a call.
fn facts() -> CallFacts {
    CallFacts {
        operation: Some("status"),
        endpoint: Some("fal-ai/flux".into()),
        principal: Some(PrincipalHash::keyed(&KEY, "iss", "alice")),
    }
}

async fn answered() -> Response {
    let mut response = Response::new(Body::from("{\"status\":\"IN_QUEUE\"}"));
    response
        .headers_mut()
        .insert(FAL_REQUEST_ID, HeaderValue::from_static("fal-req-1"));
    response.extensions_mut().insert(facts());
    response
}

async fn client_error() -> Response {
    use axum::response::IntoResponse as _;
    GateError::Malformed("the path is not a fal path".into()).into_response()
}

async fn server_error() -> Response {
    use axum::response::IntoResponse as _;
    GateError::UpstreamBadResponse("fal sent garbage".into()).into_response()
}

/// A stream of two chunks (5 + 6 bytes), then `end`.
fn streamed(end: Option<std::io::Error>) -> Response {
    let chunks = futures_util::stream::iter([
        Ok::<_, std::io::Error>(Bytes::from_static(b"data:")),
        Ok(Bytes::from_static(b" {}\n\n\n")),
    ])
    .chain(futures_util::stream::iter(end.map(Err)));
    let mut response = Response::new(Body::from_stream(chunks));
    response.extensions_mut().insert(facts());
    response
}

fn router() -> Router {
    Router::new()
        .route("/api/fal/queue/{*rest}", get(answered))
        .route("/api/fal/proxy", get(client_error))
        .route("/api/fal/run/{*rest}", get(server_error))
        .route("/api/fal/usage", get(|| async { streamed(None) }))
        .route(
            "/readyz",
            get(|| async { streamed(Some(std::io::Error::other("fal broke off"))) }),
        )
        .route("/healthz", get(|| async { streamed(None) }))
        .layer(from_fn_with_state(Arc::new(Observer::default()), observe))
}

/// Calls `path` with the log captured; `read` consumes the response. Returns the lines written.
async fn call<F, Fut>(path: &str, read: F) -> Vec<Value>
where
    F: FnOnce(Response) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(captured.clone())
        .finish();
    // The test's runtime is single-threaded: the whole call runs under this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);
    let request = Request::builder().uri(path).body(Body::empty()).unwrap();
    let response = router().oneshot(request).await.unwrap();
    read(response).await;
    captured
        .text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["fields"]["route"].is_string())
        .collect()
}

async fn body_of(response: Response) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn an_answer_read_whole_is_one_line_naming_the_call() {
    let mut seen = None;
    let lines = call("/api/fal/queue/fal-ai/flux/requests/1/status", |response| {
        seen = Some((response.status(), response.headers().get(REQUEST_ID_HEADER).cloned()));
        async move {
            assert_eq!(body_of(response).await, "{\"status\":\"IN_QUEUE\"}");
        }
    })
    .await;
    let (status, request_id) = seen.unwrap();
    assert_eq!(status, 200);
    let request_id = request_id.expect("every answer carries its request id");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO");
    let fields = &line["fields"];
    assert_eq!(fields["message"], "answered");
    assert_eq!(fields["request_id"], request_id.to_str().unwrap());
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["route"], "/api/fal/queue/");
    assert_eq!(fields["endpoint"], "fal-ai/flux");
    assert_eq!(fields["operation"], "status");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["bytes"], 21);
    assert_eq!(fields["outcome"], "complete");
    assert_eq!(fields["fal_request_id"], "fal-req-1");
    assert_eq!(
        fields["principal"],
        PrincipalHash::keyed(&KEY, "iss", "alice").to_string()
    );
    assert!(fields["headers_ms"].as_f64().unwrap() >= 0.0);
    assert!(fields["total_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn a_client_refusal_is_an_info_line_with_its_reason_and_a_json_body() {
    let mut body = Bytes::new();
    let mut id = None;
    let lines = call("/api/fal/proxy", |response| {
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        id = response.headers().get(REQUEST_ID_HEADER).cloned();
        async { body = body_of(response).await }
    })
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    let id = id.unwrap();
    assert_eq!(body["code"], "malformed_request");
    assert_eq!(body["request_id"], id.to_str().unwrap());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "INFO");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["message"], "refused");
    assert_eq!(fields["code"], "malformed_request");
    assert_eq!(fields["status"], 400);
    assert_eq!(fields["route"], "/api/fal/proxy");
    assert_eq!(fields["operation"], "none");
    assert_eq!(fields["endpoint"], "-");
    assert_eq!(fields["fal_request_id"], "-");
    assert!(
        fields["reason"].as_str().unwrap().contains("not a fal path"),
        "{fields}"
    );
    assert!(fields.get("principal").is_none(), "{fields}");
}

#[tokio::test]
async fn a_server_refusal_is_a_warn_line_with_its_detail_and_no_reason() {
    let lines = call("/api/fal/run/fal-ai/flux", |response| async move {
        assert_eq!(response.status(), 502);
        body_of(response).await;
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "WARN");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["message"], "refused");
    assert_eq!(fields["route"], "/api/fal/run/");
    assert_eq!(fields["code"], "upstream_bad_response");
    assert_eq!(fields["detail"], "fal sent garbage");
    assert!(fields.get("reason").is_none(), "{fields}");
}

#[tokio::test]
async fn a_stream_is_logged_at_its_end_with_its_bytes() {
    let lines = call("/api/fal/usage", |response| async move {
        // A stream's size is not known ahead, and it has not ended before it is read.
        assert_eq!(response.body().size_hint().exact(), None);
        assert!(!response.body().is_end_stream());
        assert_eq!(body_of(response).await, "data: {}\n\n\n");
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["route"], "/api/fal/usage");
    assert_eq!(fields["bytes"], 11);
    assert_eq!(fields["outcome"], "complete");
}

#[tokio::test]
async fn a_stream_fal_broke_off_is_logged_as_an_error() {
    let lines = call("/readyz", |response| async move {
        assert!(response.into_body().collect().await.is_err());
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["route"], "/readyz");
    assert_eq!(fields["bytes"], 11);
    assert_eq!(fields["outcome"], "error");
}

#[tokio::test]
async fn a_stream_the_client_left_is_logged_once_when_its_body_is_dropped() {
    let lines = call("/healthz", |response| async move {
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data:");
        drop(body);
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["route"], "/healthz");
    assert_eq!(fields["bytes"], 5);
    assert_eq!(fields["outcome"], "client_gone");
}

/// A body that says it has ended and how long it is at least, without an exact size.
struct Hinted;

impl HttpBody for Hinted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(3);
        hint
    }
}

#[test]
fn a_logged_body_reports_its_inner_bodys_end_and_size() {
    let logged = Logged {
        inner: Body::new(Hinted),
        bytes: 0,
        line: None,
    };
    assert!(logged.is_end_stream());
    assert_eq!(logged.size_hint().lower(), 3);
    assert_eq!(logged.size_hint().upper(), None);
}

#[test]
fn routes_are_named_by_family_and_anything_else_is_other() {
    for (path, family) in [
        ("/api/fal/proxy", "/api/fal/proxy"),
        ("/api/fal/proxy/x", "other"),
        ("/api/fal/proxyx", "other"),
        ("/api/fal/queue/fal-ai/flux", "/api/fal/queue/"),
        ("/api/fal/queue", "other"),
        ("/api/fal/run/fal-ai/flux", "/api/fal/run/"),
        ("/api/fal/usage", "/api/fal/usage"),
        ("/api/fal/usage/more", "other"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/", "other"),
        ("/x/api/fal/queue/", "other"),
    ] {
        assert_eq!(route_family(path), family, "{path}");
    }
}

#[test]
fn milliseconds_are_kept_to_the_microsecond() {
    assert_eq!(
        crate::telemetry::access_line::millis_f64(Duration::from_micros(317)),
        0.317
    );
    assert_eq!(
        crate::telemetry::access_line::millis_f64(Duration::from_micros(2_500_001)),
        2500.001
    );
    assert_eq!(crate::telemetry::access_line::millis_f64(Duration::ZERO), 0.0);
    // Past u32::MAX microseconds (71 minutes) the figure stops growing instead of wrapping.
    assert_eq!(
        crate::telemetry::access_line::millis_f64(Duration::from_secs(100_000)),
        f64::from(u32::MAX) / 1000.0
    );
}

#[test]
fn outcomes_have_their_documented_names() {
    assert_eq!(Ending::Complete.as_str(), "complete");
    assert_eq!(Ending::Error.as_str(), "error");
    assert_eq!(Ending::ClientGone.as_str(), "client_gone");
}

/// A line logged by the handler, inside the request, names the request the answer names
/// (`telemetry::request_scope`), at WARN too: the id is not a span's that `RUST_LOG=warn` drops.
#[tokio::test]
async fn a_line_logged_inside_a_request_names_it() {
    use crate::telemetry::request_scope::WithRequestId;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(captured.clone())
        .event_format(WithRequestId::json(
            tracing_subscriber::fmt::format().json().flatten_event(true),
        ))
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let warns = || async {
        tracing::warn!("the shared store did not answer");
        answered().await
    };
    let router = Router::new()
        .route("/api/fal/queue/{*rest}", get(warns))
        .layer(from_fn_with_state(Arc::new(Observer::default()), observe));
    let request = Request::builder()
        .uri("/api/fal/queue/fal-ai/flux/requests/1/status")
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    let id = response.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
    body_of(response).await;
    let lines: Vec<Value> = captured
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let warned: Vec<_> = lines
        .iter()
        .filter(|line| line["message"] == "the shared store did not answer")
        .collect();
    assert_eq!(warned.len(), 1, "{lines:?}");
    assert_eq!(warned[0]["request_id"], id.as_str(), "{lines:?}");
}
