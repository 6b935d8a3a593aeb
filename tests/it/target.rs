//! The proxy protocol's `x-fal-target-url`: a positive control, then group A of
//! SECURITY-CASES, each refused with 400 and no upstream call.

use reqwest::Method;
use serde_json::json;

use crate::support::TestGate;

#[tokio::test]
async fn allowed_target_is_forwarded_to_exactly_the_canonical_url() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header(
            "x-fal-target-url",
            "https://queue.fal.run/fal-ai/video-prompt-generator",
        )
        .json(&json!({"input_concept": "a lighthouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["request_id"].is_string());
    let seen = gate.fal_saw();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str(), seen[0].query.as_deref()),
        ("POST", "/fal-ai/video-prompt-generator", None)
    );
    assert_eq!(seen[0].body, r#"{"input_concept":"a lighthouse"}"#);
}

#[tokio::test]
async fn target_url_tricks_are_400_and_never_reach_fal() {
    let gate = TestGate::spawn().await;
    let targets = [
        "https://queue.fal.run@evil.com/x",
        "https://queue.fal.run:443@evil.com/x",
        "https://queue.fal.run.evil.com/x",
        "https://evilfal.run/x",
        "https://api.fal.run/x",
        "https://evil.com#@queue.fal.run/",
        "https://evil.com?@queue.fal.run/",
        "https://evil.com\\@queue.fal.run/",
        "https://queue%2efal%2erun/x",
        "https:queue.fal.run/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "https://0x7f.1/",
        "https://[::1]/",
        "http://localhost:6379/",
        "http://queue.fal.run/fal-ai/video-prompt-generator",
        "file:///etc/passwd",
        "//queue.fal.run/x",
        "/fal-ai/x",
        "fal-ai/flux/dev",
        "",
        "https://queue.fal.run:8443/fal-ai/video-prompt-generator",
        "https://queue.fal.run:443/fal-ai/video-prompt-generator",
        "https://fal.run./fal-ai/video-prompt-generator",
        "https://queue.fal.run/fal-ai/../fal-ai/video-prompt-generator",
        "https://queue.fal.run/fal-ai/%2e%2e/x",
        "https://rest.fal.ai/tokens",
        "https://rest.fal.ai/tokens/?x=1",
        "https://queue.fal.run/",
        "https://fal.run",
    ];
    for target in targets {
        let response = gate.proxy_post_as_alice(target, &json!({"input_concept": "x"})).await;
        gate.assert_refused(response, 400, "invalid_target").await;
    }
    let huge = format!("https://queue.fal.run/fal-ai/{}", "a".repeat(100_000));
    let response = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header("x-fal-target-url", huge)
        .send()
        .await
        .unwrap();
    assert!(
        [400, 431].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

/// Host look-alikes carrying a path the real host serves, so the gate's host rule (not the path
/// parser) is what refuses: with a suffix match or no host allowlist, these reach fal.
#[tokio::test]
async fn look_alike_hosts_with_valid_paths_are_400_and_never_reach_fal() {
    let gate = TestGate::spawn().await;
    let path = "/fal-ai/video-prompt-generator";
    for host in [
        "evilfal.run",
        "notfal.run",
        "evilqueue.fal.run",
        "api.fal.run",
        "queue.fal.run.evil.com",
        "fal.run.evil.com",
        "fal.ai",
        "evil.com",
        "169.254.169.254",
        "127.0.0.1",
        "[::1]",
    ] {
        let response = gate
            .proxy_post_as_alice(&format!("https://{host}{path}"), &json!({"input_concept": "x"}))
            .await;
        gate.assert_refused(response, 400, "invalid_target").await;
    }
    let storage = "/storage/upload/initiate?storage_type=fal-cdn-v3";
    for host in ["evilrest.fal.ai", "rest.fal.ai.evil.com", "rest.beta.fal.ai"] {
        let response = gate
            .proxy_post_as_alice(
                &format!("https://{host}{storage}"),
                &json!({"content_type": "image/png", "file_name": "a.png"}),
            )
            .await;
        gate.assert_refused(response, 400, "invalid_target").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn unicode_and_control_bytes_in_the_target_are_400() {
    let gate = TestGate::spawn().await;
    for raw in [
        &b"https://qu\xd0\xb5ue.fal.run/x"[..],
        b"https://queue.fal.run/fal-ai/video\t-prompt-generator",
    ] {
        let value = reqwest::header::HeaderValue::from_bytes(raw).unwrap();
        let response = gate
            .as_alice(Method::POST, "/api/fal/proxy")
            .header("x-fal-target-url", value)
            .send()
            .await
            .unwrap();
        gate.assert_refused(response, 400, "invalid_target").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn missing_or_repeated_target_header_is_400() {
    let gate = TestGate::spawn().await;
    let response = gate.as_alice(Method::POST, "/api/fal/proxy").send().await.unwrap();
    gate.assert_refused(response, 400, "invalid_target").await;
    let response = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header(
            "x-fal-target-url",
            "https://queue.fal.run/fal-ai/video-prompt-generator",
        )
        .header("x-fal-target-url", "https://evil.com/x")
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 400, "malformed_request").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn methods_other_than_the_operation_s_are_405_on_the_proxy() {
    let gate = TestGate::spawn().await;
    for method in ["DELETE", "PATCH", "TRACE", "GET", "PUT"] {
        let response = gate
            .as_alice(Method::from_bytes(method.as_bytes()).unwrap(), "/api/fal/proxy")
            .header(
                "x-fal-target-url",
                "https://queue.fal.run/fal-ai/video-prompt-generator",
            )
            .header("x-http-method-override", "POST")
            .send()
            .await
            .unwrap();
        gate.assert_refused(response, 405, "method_not_allowed").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}
