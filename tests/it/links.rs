//! Links in answers (issue 12 item 14): on the REST routes, the `response_url`, `status_url` and
//! `cancel_url` of submit and status answers lead to falgate's own routes (where the caller's
//! token works), under `public_url` or the request's origin; on the proxy route they stay as fal
//! sent them (`@fal-ai/client` sends them back as `x-fal-target-url`).

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{wait_completed, TestGate, VPG};

fn links(answer: &Value) -> [String; 3] {
    ["response_url", "status_url", "cancel_url"].map(|field| answer[field].as_str().unwrap().to_owned())
}

fn expected(base: &str, id: &str) -> [String; 3] {
    let request = format!("{base}/api/fal/queue/{VPG}/requests/{id}");
    [
        request.clone(),
        format!("{request}/status"),
        format!("{request}/cancel"),
    ]
}

async fn submit_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.json(&json!({"input_concept": "x"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn rest_answers_link_to_the_gate_and_the_links_work_with_the_callers_token() {
    let gate = TestGate::spawn().await;
    let submitted = submit_json(gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))).await;
    let id = submitted["request_id"].as_str().unwrap().to_owned();
    let [response_url, status_url, cancel_url] = links(&submitted);
    assert_eq!(
        [&response_url, &status_url, &cancel_url],
        expected(&gate.url, &id).each_ref()
    );

    let status = gate
        .client
        .get(&status_url)
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert_eq!(
        links(&status),
        expected(&gate.url, &id),
        "status answers are rewritten too"
    );

    wait_completed(&gate, &id).await;
    let result = gate
        .client
        .get(&response_url)
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    assert!(result.json::<Value>().await.unwrap()["prompt"].is_string());
    let cancel = gate
        .client
        .put(&cancel_url)
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cancel.status(),
        400,
        "fal's ALREADY_COMPLETED, relayed: the route exists"
    );
    assert!(cancel.headers().get("x-falgate-error").is_none());
}

#[tokio::test]
async fn the_proxy_route_keeps_fals_links() {
    let gate = TestGate::spawn().await;
    let submitted = submit_json(
        gate.as_alice(Method::POST, "/api/fal/proxy")
            .header("x-fal-target-url", format!("https://queue.fal.run/{VPG}")),
    )
    .await;
    let id = submitted["request_id"].as_str().unwrap();
    let fal = format!("{}/fal-ai/video-prompt-generator/requests/{id}", gate.fal_url);
    assert_eq!(
        links(&submitted),
        [fal.clone(), format!("{fal}/status"), format!("{fal}/cancel")]
    );
}

#[tokio::test]
async fn links_use_the_configured_public_url() {
    let gate = TestGate::builder()
        .env("FALGATE_PUBLIC_URL", "https://gate.example.com/edge/")
        .spawn()
        .await;
    // A configured base wins over anything the request says.
    let submitted = submit_json(
        gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("x-forwarded-host", "evil.example"),
    )
    .await;
    let id = submitted["request_id"].as_str().unwrap();
    assert_eq!(links(&submitted), expected("https://gate.example.com/edge", id));
}

#[tokio::test]
async fn forwarded_proto_and_host_are_believed_only_from_a_trusted_proxy() {
    let forwarded = |gate: &TestGate| {
        gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "gate.example.com")
    };
    let untrusted = TestGate::spawn().await;
    let submitted = submit_json(forwarded(&untrusted)).await;
    let id = submitted["request_id"].as_str().unwrap();
    assert_eq!(links(&submitted), expected(&untrusted.url, id));

    let behind_balancer = TestGate::builder()
        .config("[limits]\ntrusted_proxies = [\"127.0.0.0/8\"]\n")
        .spawn()
        .await;
    let submitted = submit_json(forwarded(&behind_balancer)).await;
    let id = submitted["request_id"].as_str().unwrap();
    assert_eq!(links(&submitted), expected("https://gate.example.com", id));
    // A forwarded host that is not a plain host[:port] is never written into a link: the links
    // are then paths on the origin the caller used.
    let submitted = submit_json(
        behind_balancer
            .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("x-forwarded-host", "user@evil.example/x"),
    )
    .await;
    let id = submitted["request_id"].as_str().unwrap();
    assert_eq!(links(&submitted), expected("", id));
}
