//! Bad input of every kind: each answers its contract error, nothing reaches fal, and falgate
//! keeps serving.

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::support::{TestGate, VPG};

#[tokio::test]
async fn malformed_json_is_400() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body("{\"input_concept\": ")
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 400, "invalid_json").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn non_json_content_type_on_submit_is_415() {
    let gate = TestGate::spawn().await;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = gate
            .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("content-type", content_type)
            .body("{\"input_concept\": \"x\"}")
            .send()
            .await
            .unwrap();
        gate.assert_refused(response, 415, "unsupported_media_type").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn oversized_body_is_413_with_or_without_content_length() {
    let gate = TestGate::spawn().await;
    let big = json!({"input_concept": "x".repeat(5000)}).to_string();
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 413, "body_too_large").await;
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 413, "body_too_large").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn unknown_route_is_404_in_the_contract_shape() {
    let gate = TestGate::spawn().await;
    for path in ["/", "/api/fal", "/api/fal/other", "/metrics"] {
        let response = gate.as_alice(Method::GET, path).send().await.unwrap();
        gate.assert_refused(response, 404, "route_not_found").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn wrong_method_on_a_rest_route_is_405() {
    let gate = TestGate::spawn().await;
    let id = "764cabcf-b745-4b3e-ae38-1200304cf45b";
    for (method, path) in [
        (Method::GET, format!("/api/fal/queue/{VPG}")),
        (Method::POST, format!("/api/fal/queue/{VPG}/requests/{id}/status")),
        (Method::DELETE, format!("/api/fal/queue/{VPG}/requests/{id}")),
        (Method::GET, format!("/api/fal/queue/{VPG}/requests/{id}/cancel")),
        (Method::GET, format!("/api/fal/run/{VPG}")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let response = gate.as_alice(method, &path).send().await.unwrap();
        gate.assert_refused(response, 405, "method_not_allowed").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn malformed_queue_paths_are_400() {
    let gate = TestGate::spawn().await;
    for path in [
        "/api/fal/queue/fal-ai",
        "/api/fal/queue/fal-ai/%2e%2e/x",
        "/api/fal/queue/fal-ai/video-prompt-generator/requests/not-an-id/status",
        "/api/fal/queue/fal-ai/video-prompt-generator?fal_webhook=https://x&fal_webhook=https://y",
        "/api/fal/queue/fal-ai//x",
    ] {
        let response = gate.as_alice(Method::POST, path).json(&json!({})).send().await.unwrap();
        gate.assert_refused(response, 400, "malformed_request").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn endpoint_not_allowed_and_sync_run_not_allowed_are_403() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::POST, "/api/fal/queue/other/app")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 403, "endpoint_not_allowed").await;
    let response = gate
        .as_alice(Method::POST, "/api/fal/run/fal-ai/echo")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 403, "sync_run_not_allowed").await;
    let response = gate
        .as_alice(
            Method::POST,
            &format!("/api/fal/queue/{VPG}?fal_webhook=https%3A%2F%2Fx.example"),
        )
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 403, "webhook_not_allowed").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn another_callers_request_is_404_on_every_verb() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("bob", json!({"input_concept": "x"})).await;
    gate.emulator.clear_requests();
    for (method, suffix) in [
        (Method::GET, "/status"),
        (Method::GET, "/status/stream"),
        (Method::GET, ""),
        (Method::PUT, "/cancel"),
    ] {
        let response = gate
            .as_alice(method, &format!("/api/fal/queue/{VPG}/requests/{id}{suffix}"))
            .send()
            .await
            .unwrap();
        gate.assert_refused(response, 404, "request_not_found").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn invalid_fal_header_values_are_400() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("x-fal-queue-priority", "urgent")
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 400, "malformed_request").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::GET, "/healthz")
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 431, "headers_too_large").await;
    let mut request = gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"));
    for i in 0..10 {
        request = request.header(format!("x-pad-{i}"), "b".repeat(4_000));
    }
    gate.assert_refused(request.json(&json!({})).send().await.unwrap(), 431, "headers_too_large")
        .await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_408_and_never_forwarded() {
    let gate = TestGate::builder()
        .env("FALGATE_REQUEST__BODY_TIMEOUT_MS", "300")
        .spawn()
        .await;
    let trickle = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"{\"input_concept\":".to_vec())])
        .chain(futures_util::stream::pending());
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 408, "body_timeout").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn fal_rejecting_the_server_key_is_502_never_401_to_the_browser() {
    let gate = TestGate::spawn().await;
    for status in [401, 403] {
        gate.emulator.clear_faults();
        gate.fault(
            falgate::emulator::Op::Submit,
            falgate::emulator::FaultAction::Status {
                status,
                body: json!({"detail": "Invalid key fk-..."}),
                headers: vec![],
            },
        );
        let response = gate
            .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
            .await;
        let body = gate
            .assert_refused(response, 502, "upstream_credentials_rejected")
            .await;
        assert!(!body.to_string().contains("Invalid key"), "fal's text leaked: {body}");
    }
}
