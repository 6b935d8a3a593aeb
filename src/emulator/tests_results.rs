//! Results, validation errors (sync run and queued) and cancel codes.

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::json;

use super::tests::{advance, call, emulator, status, submit, VPG};

#[tokio::test(start_paused = true)]
async fn result_is_400_until_completed_then_a_deterministic_prompt() {
    let emulator = emulator();
    let input = json!({ "input_concept": "A futuristic city at dusk", "style": "Cinematic", "pacing": "Slow burn" });
    let id = submit(&emulator, VPG, &input).await;
    let early = call(&emulator, "GET", &format!("/{VPG}/requests/{id}"), Body::empty()).await;
    assert_eq!(
        (early.status, early.json()),
        (
            StatusCode::BAD_REQUEST,
            json!({ "detail": "Request is still in progress" })
        )
    );
    let again = submit(&emulator, VPG, &input).await;
    advance(1000).await;
    let first = call(&emulator, "GET", &format!("/{VPG}/requests/{id}"), Body::empty()).await;
    let second = call(&emulator, "GET", &format!("/{VPG}/requests/{again}"), Body::empty()).await;
    let prompt = "Cinematic video of A futuristic city at dusk. Camera: None, None. Pacing: Slow burn.";
    assert_eq!(
        (first.status, first.json()),
        (StatusCode::OK, json!({ "prompt": prompt }))
    );
    assert_eq!(second.json(), first.json());
    assert_eq!(
        first.headers.get("x-fal-request-id").and_then(|v| v.to_str().ok()),
        Some(id.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn sync_run_answers_422_details_at_once() {
    let emulator = emulator();
    let missing = call(&emulator, "POST", &format!("/fal.run/{VPG}"), "{}").await;
    let item = json!({ "loc": ["body", "input_concept"], "msg": "field required", "type": "value_error.missing" });
    assert_eq!(
        (missing.status, missing.json()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!({ "detail": [item] }))
    );
    let body = json!({ "input_concept": 7, "prompt_length": "Huge" }).to_string();
    let wrong = call(&emulator, "POST", &format!("/fal.run/{VPG}"), body).await.json();
    assert_eq!(
        wrong["detail"][0],
        json!({ "loc": ["body", "input_concept"], "msg": "str type expected", "type": "type_error.str" })
    );
    assert_eq!(wrong["detail"][1]["type"], "type_error.enum");
    assert_eq!(
        wrong["detail"][1]["ctx"],
        json!({ "enum_values": ["Short", "Medium", "Long"] })
    );
    let ok = call(
        &emulator,
        "POST",
        &format!("/fal.run/{VPG}"),
        r#"{"input_concept":"x","prompt_length":"Short"}"#,
    )
    .await;
    assert_eq!(
        (ok.status, ok.json()),
        (StatusCode::OK, json!({ "prompt": "Simple video of x." }))
    );
    assert!(ok.headers.contains_key("x-fal-request-id"));
}

#[tokio::test(start_paused = true)]
async fn invalid_queued_input_completes_with_error_and_result_422() {
    let emulator = emulator();
    let id = submit(&emulator, VPG, &json!({ "input_concept": "x", "style": "Bogus" })).await;
    advance(1000).await;
    let done = status(&emulator, VPG, &id, "").await;
    assert_eq!(
        (done["status"].as_str(), done["error_type"].as_str()),
        (Some("COMPLETED"), Some("validation_error"))
    );
    let result = call(&emulator, "GET", &format!("/{VPG}/requests/{id}"), Body::empty()).await;
    assert_eq!(result.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(result.json()["detail"][0]["loc"], json!(["body", "style"]));
    assert_eq!(
        result.json()["detail"][0]["ctx"]["enum_values"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_answers_202_then_400_and_404_for_unknown() {
    let emulator = emulator();
    let id = submit(&emulator, "a/b", &json!({})).await;
    let cancel = |id: String| {
        let emulator = emulator.clone();
        async move { call(&emulator, "PUT", &format!("/a/b/requests/{id}/cancel"), Body::empty()).await }
    };
    let first = cancel(id.clone()).await;
    assert_eq!(
        (first.status, first.json()),
        (StatusCode::ACCEPTED, json!({ "status": "CANCELLATION_REQUESTED" }))
    );
    let after = status(&emulator, "a/b", &id, "").await;
    assert_eq!(
        (after["status"].as_str(), after["error"].as_str()),
        (Some("COMPLETED"), Some("Request was cancelled"))
    );
    let result = call(&emulator, "GET", &format!("/a/b/requests/{id}"), Body::empty()).await;
    assert_eq!(
        (result.status, result.json()),
        (StatusCode::BAD_REQUEST, json!({ "detail": "Request was cancelled" }))
    );
    let second = cancel(id).await;
    assert_eq!(
        (second.status, second.json()),
        (StatusCode::BAD_REQUEST, json!({ "status": "ALREADY_COMPLETED" }))
    );
    let finished = submit(&emulator, "a/b", &json!({})).await;
    advance(1000).await;
    assert_eq!(cancel(finished).await.status, StatusCode::BAD_REQUEST);
    let unknown = cancel("nope".to_owned()).await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (StatusCode::NOT_FOUND, json!({ "status": "NOT_FOUND" }))
    );
}
