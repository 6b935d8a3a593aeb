//! Input validation at the gate: fal's 422 shape plus the contract's fields, every failing field
//! reported, strict JSON, and nothing sent to fal for a refused input.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{TestGate, VPG};

async fn submit_raw(gate: &TestGate, body: &str) -> reqwest::Response {
    gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn locs(body: &Value) -> Vec<String> {
    body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"][1].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn bad_input_is_422_in_fal_shape_with_every_field_and_never_reaches_fal() {
    let gate = TestGate::spawn().await;
    let input =
        json!({"style": "Noir", "camera_style": 3, "pacing": "Warp", "prompt_length": "Huge", "model": "gpt-9"});
    let response = submit_raw(&gate, &input.to_string()).await;
    let body = gate.assert_refused(response, 422, "validation_failed").await;
    assert_eq!(
        locs(&body),
        [
            "input_concept",
            "style",
            "camera_style",
            "pacing",
            "model",
            "prompt_length"
        ]
    );
    let missing = &body["detail"][0];
    assert_eq!(
        (missing["msg"].as_str(), missing["type"].as_str()),
        (Some("field required"), Some("value_error.missing"))
    );
    assert_eq!(body["detail"][1]["type"], "type_error.enum");
    assert!(body["detail"][1]["msg"].as_str().unwrap().contains("'Cinematic'"));
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn every_enum_field_refuses_a_wrong_value_by_name() {
    let gate = TestGate::spawn().await;
    for field in [
        "style",
        "camera_style",
        "camera_direction",
        "pacing",
        "special_effects",
        "model",
        "prompt_length",
    ] {
        let response = submit_raw(&gate, &json!({"input_concept": "x", field: "not-a-value"}).to_string()).await;
        let body = gate.assert_refused(response, 422, "validation_failed").await;
        assert_eq!(locs(&body), [field]);
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn unknown_fields_are_refused_and_valid_input_is_forwarded_byte_for_byte() {
    let gate = TestGate::spawn().await;
    let response = submit_raw(&gate, r#"{"input_concept": "x", "sync_mode": true}"#).await;
    let body = gate.assert_refused(response, 422, "validation_failed").await;
    assert_eq!(locs(&body), ["sync_mode"]);
    assert!(gate.fal_saw().is_empty());
    let exact = "{ \"input_concept\" : \"a lighthouse\",\n  \"style\": \"Cinematic\" }";
    assert_eq!(submit_raw(&gate, exact).await.status(), 200);
    assert_eq!(gate.fal_saw()[0].body, exact);
}

#[tokio::test]
async fn duplicate_keys_bom_and_deep_nesting_are_400() {
    let gate = TestGate::spawn().await;
    let deep = format!(
        "{{\"input_concept\": \"x\", \"custom_elements\": {}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    for body in [
        r#"{"input_concept": "x", "input_concept": "y"}"#,
        "\u{feff}{\"input_concept\": \"x\"}",
        deep.as_str(),
        "",
    ] {
        let response = submit_raw(&gate, body).await;
        gate.assert_refused(response, 400, "invalid_json").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

/// fal answers a body that is JSON but not an object with a 422 on `["body"]` (pydantic's
/// `type_error.dict`), which `@fal-ai/client` raises as a `ValidationError`: so does the gate,
/// on both route families and before anything reaches fal.
#[tokio::test]
async fn json_that_is_not_an_object_is_422_in_fal_shape_on_both_route_families() {
    let gate = TestGate::spawn().await;
    let expected = json!([{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]);
    for body in ["[1]", "\"a prompt\"", "42", "null"] {
        let rest = [format!("/api/fal/queue/{VPG}"), format!("/api/fal/run/{VPG}")];
        let proxied = [format!("https://queue.fal.run/{VPG}"), format!("https://fal.run/{VPG}")];
        let requests = rest
            .iter()
            .map(|path| gate.as_alice(Method::POST, path))
            .chain(proxied.iter().map(|target| {
                gate.as_alice(Method::POST, "/api/fal/proxy")
                    .header("x-fal-target-url", target.as_str())
            }));
        for request in requests {
            let response = request
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            let refused = gate.assert_refused(response, 422, "validation_failed").await;
            assert_eq!(refused["detail"], expected, "{body}");
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn overlays_cap_lengths_and_refuse_non_image_data_uris() {
    let gate = TestGate::builder()
        .config("[endpoints.\"fal-ai/video-prompt-generator\".overlay.fields.input_concept]\nmax_length = 10\n[endpoints.\"fal-ai/video-prompt-generator\".overlay.fields.image_url]\nschemes = [\"https\", \"data\"]\ndata_uri_types = [\"image/*\"]\n")
        .spawn()
        .await;
    let long = submit_raw(&gate, &json!({"input_concept": "x".repeat(11)}).to_string()).await;
    assert_eq!(
        locs(&gate.assert_refused(long, 422, "validation_failed").await),
        ["input_concept"]
    );
    let pdf = submit_raw(
        &gate,
        &json!({"input_concept": "x", "image_url": "data:application/pdf;base64,AAAA"}).to_string(),
    )
    .await;
    assert_eq!(
        locs(&gate.assert_refused(pdf, 422, "validation_failed").await),
        ["image_url"]
    );
    let http = submit_raw(
        &gate,
        &json!({"input_concept": "x", "image_url": "http://example.com/a.png"}).to_string(),
    )
    .await;
    assert_eq!(
        locs(&gate.assert_refused(http, 422, "validation_failed").await),
        ["image_url"]
    );
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn input_in_the_query_string_of_a_submit_is_refused() {
    let gate = TestGate::spawn().await;
    let response = gate
        .post_as_alice(
            &format!("/api/fal/queue/{VPG}?input_concept=x"),
            &json!({"input_concept": "x"}),
        )
        .await;
    gate.assert_refused(response, 400, "malformed_request").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}
