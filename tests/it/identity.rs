//! Who may do what, end to end: request ownership on every verb and route form, tiers, the
//! token cookie, and CORS (SECURITY-CASES groups C and I).

use reqwest::Method;
use serde_json::json;

use crate::support::{wait_completed, TestGate, VPG};

const TIERS: &str = r#"
[tiers.free]
endpoints = ["fal-ai/video-prompt-generator"]
operations = ["submit", "status", "stream", "result", "cancel"]
max_queue_priority = "low"
[tiers.free.options."fal-ai/video-prompt-generator"]
model = ["google/gemini-flash-1.5", "meta-llama/llama-3.2-1b-instruct"]
[tiers.pro]
"#;

fn proxy_target(id: &str, suffix: &str) -> String {
    format!("https://queue.fal.run/{VPG}/requests/{id}{suffix}")
}

#[tokio::test]
async fn another_user_gets_404_on_every_verb_and_route_form_and_the_owner_gets_200() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    wait_completed(&gate, &id).await;
    gate.emulator.clear_requests();
    let bob = gate.token("bob");
    let verbs = [
        (Method::GET, "/status"),
        (Method::GET, "/status/stream"),
        (Method::GET, ""),
        (Method::PUT, "/cancel"),
    ];
    for (method, suffix) in &verbs {
        let rest = gate
            .client
            .request(
                method.clone(),
                format!("{}/api/fal/queue/{VPG}/requests/{id}{suffix}", gate.url),
            )
            .bearer_auth(&bob);
        gate.assert_refused(rest.send().await.unwrap(), 404, "request_not_found")
            .await;
        let proxy = gate
            .client
            .request(method.clone(), format!("{}/api/fal/proxy", gate.url))
            .bearer_auth(&bob)
            .header("x-fal-target-url", proxy_target(&id, suffix));
        gate.assert_refused(proxy.send().await.unwrap(), 404, "request_not_found")
            .await;
    }
    assert!(gate.fal_saw().is_empty(), "bob's calls reached fal");
    for (method, suffix) in &verbs[..3] {
        let response = gate
            .as_alice(method.clone(), "/api/fal/proxy")
            .header("x-fal-target-url", proxy_target(&id, suffix))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "alice {method} {suffix}");
    }
}

#[tokio::test]
async fn unknown_and_foreign_ids_answer_the_same_404_and_uppercase_ids_are_the_same_request() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let strip = |mut body: serde_json::Value| {
        body.as_object_mut().unwrap().remove("request_id");
        body
    };
    let foreign = gate
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", gate.url))
        .bearer_auth(gate.token("bob"))
        .send()
        .await
        .unwrap();
    let foreign = strip(gate.assert_refused(foreign, 404, "request_not_found").await);
    let unknown = gate
        .as_alice(
            Method::GET,
            &format!("/api/fal/queue/{VPG}/requests/{}/status", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    let unknown = strip(gate.assert_refused(unknown, 404, "request_not_found").await);
    assert_eq!(foreign, unknown);
    let upper = gate
        .as_alice(
            Method::GET,
            &format!("/api/fal/queue/{VPG}/requests/{}/status", id.to_uppercase()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(upper.status(), 200);
    let forwarded = gate.fal_saw().last().unwrap().path.clone();
    assert_eq!(
        forwarded,
        format!("/{VPG}/requests/{id}/status"),
        "forwarded the canonical id"
    );
    for odd in [format!("{{{id}}}"), format!("urn:uuid:{id}"), format!("{id}%20")] {
        let response = gate
            .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{odd}/status"))
            .await;
        gate.assert_refused(response, 400, "malformed_request").await;
    }
}

#[tokio::test]
async fn a_free_user_gets_403_naming_the_field_for_a_premium_model_and_nothing_reaches_fal() {
    let gate = TestGate::builder().config(TIERS).spawn().await;
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.tier_token("f", "free"))
        .json(&json!({"input_concept": "x", "model": "openai/gpt-4o"}))
        .send()
        .await
        .unwrap();
    let body = gate.assert_refused(response, 403, "option_not_allowed").await;
    assert!(body["message"].as_str().unwrap().contains("`model`"), "{body}");
    gate.assert_nothing_reached_fal_and_still_serving().await;
    let pro = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.tier_token("p", "pro"))
        .json(&json!({"input_concept": "x", "model": "openai/gpt-4o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(pro.status(), 200);
}

#[tokio::test]
async fn tiers_limit_operations_cap_priority_and_refuse_unknown_tiers() {
    let gate = TestGate::builder().config(TIERS).spawn().await;
    let run = gate
        .client
        .post(format!("{}/api/fal/run/{VPG}", gate.url))
        .bearer_auth(gate.tier_token("f", "free"))
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(run, 403, "endpoint_not_allowed").await;
    let gold = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.tier_token("g", "gold"))
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(gold, 403, "tier_not_allowed").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
    let submit = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.tier_token("f", "free"))
        .header("x-fal-queue-priority", "normal")
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 200);
    let seen = &gate.fal_saw()[0];
    assert!(
        seen.headers.contains(&("x-fal-queue-priority".into(), "low".into())),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn a_browser_with_a_cookie_session_works_and_the_cookie_never_reaches_fal() {
    let gate = TestGate::builder()
        .env("FALGATE_AUTH__COOKIE", "falgate_token")
        .spawn()
        .await;
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .header("cookie", format!("theme=dark; falgate_token={}", gate.token("alice")))
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!gate.fal_saw()[0].headers.iter().any(|(k, _)| k == "cookie"));
    let lowercase = gate
        .client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{}/status",
            gate.url,
            uuid::Uuid::new_v4()
        ))
        .header("authorization", format!("bearer {}", gate.token("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lowercase.status(),
        404,
        "lowercase scheme authenticated (then unknown id)"
    );
}

const CORS: &str = "[cors]\nallowed_origins = [\"https://app.example.com\"]\nallow_credentials = true\n";

#[tokio::test]
async fn only_the_exact_allowed_origin_gets_cors_headers_and_vary_is_always_set() {
    let gate = TestGate::builder().config(CORS).spawn().await;
    let ok = gate
        .as_alice(Method::GET, "/healthz")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(ok.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-fal-request-id"));
    for origin in [
        "https://app.example.com.evil.com",
        "https://evilapp.example.com",
        "https://app.example.com:8443",
        "http://app.example.com",
        "https://app.example.com/",
        "null",
    ] {
        let response = gate
            .as_alice(Method::GET, "/healthz")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert!(
            !response.headers().contains_key("access-control-allow-origin"),
            "{origin}"
        );
        assert!(
            !response.headers().contains_key("access-control-allow-credentials"),
            "{origin}"
        );
        assert!(
            response
                .headers()
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap().contains("origin")),
            "{origin}"
        );
    }
    let two = gate
        .as_alice(Method::GET, "/healthz")
        .header("origin", "https://app.example.com")
        .header("origin", "https://evil.com")
        .send()
        .await
        .unwrap();
    assert!(!two.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn preflights_are_answered_before_auth_and_never_reach_fal() {
    let gate = TestGate::builder().config(CORS).spawn().await;
    let preflight = |origin: &'static str| {
        gate.client
            .request(Method::OPTIONS, format!("{}/api/fal/proxy", gate.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-fal-target-url, authorization, content-type",
            )
    };
    let ok = preflight("https://app.example.com").send().await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(ok.headers()["access-control-allow-methods"], "GET, POST, PUT");
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in ["x-fal-target-url", "authorization", "content-type"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    let denied = preflight("https://evil.com").send().await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
    let refused = gate
        .client
        .post(format!("{}/api/fal/proxy", gate.url))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "falgate's own 401 carries CORS"
    );
    gate.assert_refused(refused, 401, "unauthenticated").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}
