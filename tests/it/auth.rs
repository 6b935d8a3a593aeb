//! Authentication: no request reaches fal without a valid HS256 bearer token.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::support::{TestGate, SECRET, VPG};

fn signed(claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn submit_with(gate: &TestGate, authorization: Option<String>) -> reqwest::Response {
    let mut request = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .json(&json!({"input_concept": "x"}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn missing_token_is_401_with_www_authenticate_and_nothing_reaches_fal() {
    let gate = TestGate::spawn().await;
    let response = submit_with(&gate, None).await;
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    gate.assert_refused(response, 401, "unauthenticated").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn invalid_tokens_are_401_and_nothing_reaches_fal() {
    let gate = TestGate::spawn().await;
    let wrong_secret = signed(
        &json!({"sub": "u", "exp": now() + 60}),
        b"wrong-secret-wrong-secret-wrong-secret",
    );
    let no_sub = signed(&json!({"exp": now() + 60}), SECRET.as_bytes());
    let no_exp = signed(&json!({"sub": "u"}), SECRET.as_bytes());
    for value in [
        format!("Bearer {wrong_secret}"),
        format!("Bearer {no_sub}"),
        format!("Bearer {no_exp}"),
        "Bearer not.a.jwt".to_owned(),
        "Basic dXNlcjpwdw==".to_owned(),
        format!("Key {SECRET}"),
        "Bearer".to_owned(),
    ] {
        let response = submit_with(&gate, Some(value.clone())).await;
        let body = gate.assert_refused(response, 401, "unauthenticated").await;
        if value.len() > 20 {
            assert!(!body.to_string().contains(&value[7..]), "credential echoed in {body}");
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn expired_token_is_401_and_says_expired() {
    let gate = TestGate::spawn().await;
    let expired = signed(&json!({"sub": "u", "exp": now() - 5}), SECRET.as_bytes());
    let response = submit_with(&gate, Some(format!("Bearer {expired}"))).await;
    let body = gate.assert_refused(response, 401, "unauthenticated").await;
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn anonymous_request_on_the_proxy_route_is_401_before_target_parsing() {
    let gate = TestGate::spawn().await;
    let response = gate
        .client
        .post(format!("{}/api/fal/proxy", gate.url))
        .header("x-fal-target-url", "https://evil.example/x")
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 401, "unauthenticated").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}
