//! Router-level tests: shared helpers plus submit shape, lifecycle by paused time, logs, app
//! scoping, auth and odd inputs; results, faults, SSE and storage live in `tests_*.rs`.

use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{Emulator, EmulatorConfig};

pub(super) const VPG: &str = "fal-ai/video-prompt-generator";

/// A response with its body read to the end (`Err` if the body broke).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Result<Bytes, String>,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        let bytes = self.body.clone().unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

pub(super) fn emulator() -> Emulator {
    Emulator::new(EmulatorConfig::default())
}

pub(super) async fn call(emulator: &Emulator, method: &str, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "emu.test")
        .header("authorization", "Key test-id:test-secret")
        .body(body.into())
        .expect("valid request");
    send(emulator, request).await
}

pub(super) async fn send(emulator: &Emulator, request: Request<Body>) -> Reply {
    let response = emulator.router().oneshot(request).await.expect("infallible router");
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|error| error.to_string());
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub(super) async fn submit(emulator: &Emulator, endpoint: &str, input: &Value) -> String {
    let reply = call(emulator, "POST", &format!("/{endpoint}"), input.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()["request_id"].as_str().unwrap_or_default().to_owned()
}

pub(super) async fn status(emulator: &Emulator, app: &str, id: &str, query: &str) -> Value {
    call(
        emulator,
        "GET",
        &format!("/{app}/requests/{id}/status{query}"),
        Body::empty(),
    )
    .await
    .json()
}

pub(super) async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn submit_answers_fal_shape_with_urls_built_from_host() {
    let emulator = emulator();
    let reply = call(&emulator, "POST", &format!("/{VPG}"), r#"{"input_concept":"x"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let id = body["request_id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "request id must be a uuid: {body}");
    let base = format!("http://emu.test/{VPG}/requests/{id}");
    let expected = json!({
        "request_id": id, "gateway_request_id": id, "status": "IN_QUEUE", "queue_position": 0,
        "response_url": base, "status_url": format!("{base}/status"), "cancel_url": format!("{base}/cancel"),
    });
    assert_eq!(body, expected);
    assert_eq!(
        reply.headers.get("x-fal-request-id").and_then(|v| v.to_str().ok()),
        Some(id)
    );
}

#[tokio::test(start_paused = true)]
async fn queue_position_counts_unstarted_requests_ahead() {
    let emulator = emulator();
    let first = submit(&emulator, "a/b", &json!({})).await;
    advance(200).await;
    let second = call(&emulator, "POST", "/a/b", "{}").await.json();
    assert_eq!(second["queue_position"], 1);
    let other_app = call(&emulator, "POST", "/a/c", "{}").await.json();
    assert_eq!(other_app["queue_position"], 0, "positions are per app");
    let second_id = second["request_id"].as_str().unwrap_or_default();
    assert_eq!(status(&emulator, "a/b", second_id, "").await["queue_position"], 1);
    advance(100).await;
    assert_eq!(status(&emulator, "a/b", &first, "").await["status"], "IN_PROGRESS");
    assert_eq!(status(&emulator, "a/b", second_id, "").await["queue_position"], 0);
}

#[tokio::test(start_paused = true)]
async fn status_moves_from_queue_to_progress_to_completed_by_time() {
    let emulator = emulator();
    let id = submit(&emulator, VPG, &json!({ "input_concept": "x" })).await;
    let phase = |body: Value| body["status"].as_str().unwrap_or_default().to_owned();
    assert_eq!(phase(status(&emulator, VPG, &id, "").await), "IN_QUEUE");
    advance(299).await;
    assert_eq!(phase(status(&emulator, VPG, &id, "").await), "IN_QUEUE");
    advance(1).await;
    assert_eq!(phase(status(&emulator, VPG, &id, "").await), "IN_PROGRESS");
    advance(699).await;
    assert_eq!(phase(status(&emulator, VPG, &id, "").await), "IN_PROGRESS");
    advance(1).await;
    let done = status(&emulator, VPG, &id, "").await;
    assert_eq!(
        (done["status"].as_str(), &done["metrics"]),
        (Some("COMPLETED"), &json!({ "inference_time": 0.7 }))
    );
    assert!(done.get("error").is_none(), "successful request has no error: {done}");
    assert_eq!(
        done["cancel_url"],
        format!("http://emu.test/{VPG}/requests/{id}/cancel")
    );
}

#[tokio::test(start_paused = true)]
async fn logs_are_listed_only_when_asked_for() {
    let emulator = emulator();
    let id = submit(&emulator, VPG, &json!({ "input_concept": "x" })).await;
    advance(300 + 250).await;
    assert_eq!(status(&emulator, VPG, &id, "?logs=0").await["logs"], Value::Null);
    assert_eq!(status(&emulator, VPG, &id, "").await["logs"], Value::Null);
    let logs = status(&emulator, VPG, &id, "?logs=1").await["logs"].clone();
    assert_eq!(
        logs.as_array().map(Vec::len),
        Some(2),
        "two of three lines by 250/700 ms: {logs}"
    );
    assert_eq!(
        (&logs[0]["level"], &logs[0]["source"]),
        (&json!("INFO"), &json!("USER"))
    );
    let stamp = logs[0]["timestamp"].as_str().unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok(),
        "timestamp must be RFC 3339: {stamp}"
    );
    advance(1000).await;
    let done = status(&emulator, VPG, &id, "?logs=true").await;
    assert_eq!(done["logs"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(start_paused = true)]
async fn subpath_requests_live_under_owner_alias_only_and_ids_are_per_app() {
    let emulator = emulator();
    let reply = call(&emulator, "POST", "/fal-ai/flux/dev", r#"{"prompt":"p"}"#)
        .await
        .json();
    let id = reply["request_id"].as_str().unwrap_or_default();
    assert_eq!(
        reply["status_url"],
        format!("http://emu.test/fal-ai/flux/requests/{id}/status")
    );
    assert_eq!(status(&emulator, "fal-ai/flux", id, "").await["status"], "IN_QUEUE");
    let elsewhere = call(
        &emulator,
        "GET",
        &format!("/fal-ai/other/requests/{id}/status"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (elsewhere.status, elsewhere.json()),
        (StatusCode::NOT_FOUND, json!({ "detail": "Request not found" }))
    );
    advance(1000).await;
    let result = call(&emulator, "GET", &format!("/fal-ai/flux/requests/{id}"), Body::empty())
        .await
        .json();
    assert_eq!(
        result,
        json!({ "echo": { "prompt": "p" }, "endpoint": "fal-ai/flux/dev" })
    );
}

#[tokio::test(start_paused = true)]
async fn missing_or_non_key_authorization_is_401() {
    let emulator = emulator();
    for auth in [None, Some("Bearer abc"), Some("Key "), Some("Key")] {
        let mut request = Request::builder().method("POST").uri(format!("/{VPG}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let reply = send(&emulator, request.body(Body::from("{}")).expect("request")).await;
        assert_eq!(
            (reply.status, reply.json()),
            (StatusCode::UNAUTHORIZED, json!({ "detail": "Unauthorized" })),
            "{auth:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bad_paths_methods_and_bodies_answer_json_errors() {
    let emulator = emulator();
    let cases = [
        ("GET", "/a/b/requests/x/cancel", "", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/a/b", "", StatusCode::METHOD_NOT_ALLOWED),
        ("POST", "/single", "{}", StatusCode::NOT_FOUND),
        ("POST", "/rest.fal.ai/tokens", "{}", StatusCode::NOT_FOUND),
        ("POST", "/rest.fal.ai/tokens/", "{}", StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/rest.fal.ai/tokens/", "", StatusCode::METHOD_NOT_ALLOWED),
        ("POST", "/a/b", "[1]", StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/fal.run/a/b", "{nope", StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (method, uri, body, expected) in cases {
        let reply = call(&emulator, method, uri, body).await;
        assert_eq!(reply.status, expected, "{method} {uri}");
        assert!(
            reply.json().get("detail").is_some(),
            "{method} {uri} must answer a JSON detail"
        );
    }
    let invalid_utf8 = call(&emulator, "POST", "/a/b", vec![0xff, 0xfe, b'{']).await;
    assert_eq!(invalid_utf8.status, StatusCode::UNPROCESSABLE_ENTITY);
    let huge = call(&emulator, "POST", "/a/b", vec![b' '; 64 * 1024 * 1024 + 1]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        emulator.requests().len(),
        cases.len() + 2,
        "every fal request is recorded, even refused ones"
    );
}

#[test]
fn config_fills_defaults_and_rejects_unknown_keys() {
    let config: EmulatorConfig = serde_json::from_str(r#"{"queue_ms":5}"#).expect("partial config");
    assert_eq!((config.queue_ms, config.progress_ms, config.log_lines), (5, 700, 3));
    assert!(serde_json::from_str::<EmulatorConfig>(r#"{"queue":5}"#).is_err());
}
