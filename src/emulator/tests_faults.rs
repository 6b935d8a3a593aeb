//! Faults (in-process and over the control API) and request recording.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use super::tests::{call, emulator, send, submit};
use crate::emulator::{Fault, FaultAction, Op};

fn fault(op: Option<Op>, action: FaultAction, times: Option<u32>) -> Fault {
    Fault {
        op,
        path_contains: None,
        action,
        times,
    }
}

#[tokio::test(start_paused = true)]
async fn status_fault_answers_its_body_and_headers_and_is_spent_after_times() {
    let emulator = emulator();
    let action = FaultAction::Status {
        status: 503,
        body: json!({ "detail": "busy" }),
        headers: vec![("x-fal-error-type".to_owned(), "runner_scheduling_failure".to_owned())],
    };
    emulator.add_fault(fault(Some(Op::Submit), action, Some(1)));
    let faulted = call(&emulator, "POST", "/a/b", "{}").await;
    assert_eq!(
        (faulted.status, faulted.json()),
        (StatusCode::SERVICE_UNAVAILABLE, json!({ "detail": "busy" }))
    );
    let error_type = faulted.headers.get("x-fal-error-type").and_then(|v| v.to_str().ok());
    assert_eq!(error_type, Some("runner_scheduling_failure"));
    assert_eq!(
        call(&emulator, "POST", "/a/b", "{}").await.status,
        StatusCode::OK,
        "times=1 fault must be spent"
    );
    assert_eq!(emulator.requests().len(), 2, "the faulted request is still recorded");
}

#[tokio::test(start_paused = true)]
async fn fault_selects_by_op_and_path() {
    let emulator = emulator();
    let mut garbage = fault(Some(Op::Status), FaultAction::Garbage, None);
    garbage.path_contains = Some("/x/y/".to_owned());
    emulator.add_fault(garbage);
    let id = submit(&emulator, "x/y", &json!({})).await;
    let other = submit(&emulator, "x/z", &json!({})).await;
    let faulted = call(&emulator, "GET", &format!("/x/y/requests/{id}/status"), Body::empty()).await;
    assert_eq!(faulted.status, StatusCode::OK);
    assert_eq!(
        faulted.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let bytes = faulted.body.clone().unwrap_or_default();
    assert!(
        serde_json::from_slice::<Value>(&bytes).is_err(),
        "garbage must not parse as JSON"
    );
    let clean = call(
        &emulator,
        "GET",
        &format!("/x/z/requests/{other}/status"),
        Body::empty(),
    )
    .await;
    assert_eq!(clean.json()["status"], "IN_QUEUE");
}

#[tokio::test(start_paused = true)]
async fn drop_fault_breaks_the_body_after_200_headers() {
    let emulator = emulator();
    emulator.add_fault(fault(Some(Op::Run), FaultAction::Drop, None));
    let reply = call(&emulator, "POST", "/fal.run/a/b", "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_err(), "body must end with an error");
}

#[tokio::test(start_paused = true)]
async fn stall_fault_delays_then_handles_normally() {
    let emulator = emulator();
    emulator.add_fault(fault(None, FaultAction::Stall { ms: 5_000 }, Some(1)));
    let started = tokio::time::Instant::now();
    let reply = call(&emulator, "POST", "/a/b", "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(5_000),
        "stall must wait its delay"
    );
}

#[tokio::test(start_paused = true)]
async fn control_api_sets_faults_and_lists_requests_without_recording_itself() {
    let emulator = emulator();
    let body = json!({ "op": "submit", "action": { "kind": "status", "status": 429, "body": {} }, "times": 1 });
    let added = call(&emulator, "POST", "/_emulator/faults", body.to_string()).await;
    assert_eq!(added.status, StatusCode::NO_CONTENT);
    let bad = call(&emulator, "POST", "/_emulator/faults", r#"{"action":{"kind":"nope"}}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&emulator, "POST", "/a/b", "{}").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    call(&emulator, "POST", "/_emulator/faults", body.to_string()).await;
    assert_eq!(
        call(&emulator, "DELETE", "/_emulator/faults", Body::empty())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&emulator, "POST", "/a/b", "{}").await.status,
        StatusCode::OK,
        "faults were cleared"
    );
    let listed = call(&emulator, "GET", "/_emulator/requests", Body::empty())
        .await
        .json();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "only the two fal calls are recorded: {listed}"
    );
    call(&emulator, "DELETE", "/_emulator/requests", Body::empty()).await;
    assert!(emulator.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn recording_keeps_method_path_query_all_headers_and_body() {
    let emulator = emulator();
    let request = Request::builder()
        .method("POST")
        .uri("/a/b/c?fal_webhook=https%3A%2F%2Fhook.test%2Fx")
        .header("Authorization", "Key k")
        .header("X-Fal-Queue-Priority", "low")
        .header("x-dup", "one")
        .header("x-dup", "two")
        .body(Body::from(vec![b'{', b'}', 0xff]))
        .expect("request");
    send(&emulator, request).await;
    let recorded = emulator.requests();
    let [only] = recorded.as_slice() else {
        panic!("expected one record, got {recorded:?}")
    };
    assert_eq!((only.method.as_str(), only.path.as_str()), ("POST", "/a/b/c"));
    assert_eq!(only.query.as_deref(), Some("fal_webhook=https%3A%2F%2Fhook.test%2Fx"));
    let header = |name: &str| {
        only.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("authorization"), ["Key k"]);
    assert_eq!(header("x-fal-queue-priority"), ["low"]);
    assert_eq!(header("x-dup"), ["one", "two"]);
    assert_eq!(only.body, "{}\u{fffd}");
}
