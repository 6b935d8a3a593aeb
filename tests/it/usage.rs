//! `GET /api/fal/usage`: what is left of each limit, read from the store the limiter admits with
//! (in process, and Redis shared by two replicas), spending only the poll rate and reaching no
//! fal.

use crate::limits::chaos;

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Builder, TestGate, VPG};

const LIMITS: &str = r#"
[cors]
allowed_origins = ["https://app.example.com"]
[limits]
default_tier = "default"
streams_per_caller = 3
[limits.tiers.default]
submit = { burst = 3, per_minute = 1 }
poll = { burst = 100, per_minute = 600 }
max_inflight_jobs = 2
daily_requests = 10
daily_credits = 7
[limits.tiers.pro]
submit = { burst = 50, per_minute = 60 }
daily_credits = "unlimited"
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "openai/gpt-4o" = 5 }
"#;

fn redis(builder: Builder, prefix: &str, redis: &str) -> Builder {
    builder
        .env("FALGATE_REDIS__URL", &format!("redis://{redis}"))
        .env("FALGATE_REDIS__KEY_PREFIX", prefix)
        .env("FALGATE_REDIS__TIMEOUT_MS", "200")
        .env("FALGATE_LIMITS__ON_STORE_ERROR", "deny")
}

async fn usage(gate: &TestGate, token: &str) -> reqwest::Response {
    gate.client
        .get(format!("{}/api/fal/usage", gate.url))
        .bearer_auth(token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap()
}

/// The usage answer as `name → (limit, remaining)`, after checking the answer's shape.
async fn limits_of(gate: &TestGate, sub: &str) -> (String, Vec<(String, u64, u64, u64)>) {
    let response = usage(gate, &gate.token(sub)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let body: Value = response.json().await.unwrap();
    let limits = body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|limit| {
            (
                limit["name"].as_str().unwrap().to_owned(),
                limit["limit"].as_u64().unwrap(),
                limit["remaining"].as_u64().unwrap(),
                limit["reset_seconds"].as_u64().unwrap(),
            )
        })
        .collect();
    (body["tier"].as_str().unwrap().to_owned(), limits)
}

/// Every limit but the poll rate, which reading usage spends.
fn but_poll(limits: &[(String, u64, u64, u64)]) -> Vec<(String, u64, u64, u64)> {
    limits.iter().filter(|limit| limit.0 != "poll").cloned().collect()
}

fn remaining(limits: &[(String, u64, u64, u64)], name: &str) -> u64 {
    limits
        .iter()
        .find(|limit| limit.0 == name)
        .unwrap_or_else(|| panic!("no {name} in {limits:?}"))
        .2
}

async fn submit(gate: &TestGate, sub: &str, input: Value) -> u16 {
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.token(sub))
        .json(&input)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn usage_in_process_shows_each_limit_and_what_calls_spent_without_consuming() {
    let gate = TestGate::builder().config(LIMITS).job_ms(5_000, 5_000).spawn().await;
    let (tier, fresh) = limits_of(&gate, "alice").await;
    assert_eq!(tier, "default");
    let names: Vec<&str> = fresh.iter().map(|limit| limit.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "submit",
            "poll",
            "daily-requests",
            "daily-credits",
            "inflight",
            "streams",
            "relays"
        ]
    );
    assert_eq!(fresh[0], ("submit".to_owned(), 3, 3, 0));
    assert_eq!(remaining(&fresh, "daily-credits"), 7);
    assert_eq!(remaining(&fresh, "streams"), 3);
    // Reading usage again and again spends only the poll rate and reaches no fal.
    for _ in 0..5 {
        let again = limits_of(&gate, "alice").await.1;
        assert_eq!(but_poll(&again), but_poll(&fresh));
        assert!(remaining(&again, "poll") <= remaining(&fresh, "poll"));
    }
    assert!(gate.fal_saw().is_empty(), "fal saw {:?}", gate.fal_saw());

    assert_eq!(
        submit(&gate, "alice", json!({"input_concept": "x", "model": "openai/gpt-4o"})).await,
        200
    );
    let (_, spent) = limits_of(&gate, "alice").await;
    assert_eq!(remaining(&spent, "submit"), 2);
    assert!(spent[0].3 >= 1, "the submit rate refills later: {spent:?}");
    assert_eq!(remaining(&spent, "daily-requests"), 9);
    assert_eq!(remaining(&spent, "daily-credits"), 2, "the call cost 5 credits");
    assert!(spent.iter().find(|l| l.0 == "daily-credits").unwrap().3 > 0);
    assert_eq!(remaining(&spent, "inflight"), 1);
    assert_eq!(
        but_poll(&limits_of(&gate, "bob").await.1),
        but_poll(&fresh),
        "usage is per caller"
    );

    // What usage says is left is exactly what the next calls meet: 2 credits, so the 5-credit
    // call is refused and two 1-credit calls pass (inflight allows one more, so one of them).
    assert_eq!(
        submit(&gate, "alice", json!({"input_concept": "x", "model": "openai/gpt-4o"})).await,
        403
    );
    assert_eq!(submit(&gate, "alice", json!({"input_concept": "x"})).await, 200);
    let (_, after) = limits_of(&gate, "alice").await;
    assert_eq!(
        (
            remaining(&after, "daily-credits"),
            remaining(&after, "inflight"),
            remaining(&after, "submit")
        ),
        (1, 0, 1)
    );

    // An open status stream holds one of the caller's stream slots.
    let id = gate.submit("carol", json!({"input_concept": "x"})).await;
    let stream = gate
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status/stream", gate.url))
        .bearer_auth(gate.token("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(remaining(&limits_of(&gate, "carol").await.1, "streams"), 2);
    drop(stream);
    let mut freed = false;
    for _ in 0..50 {
        if remaining(&limits_of(&gate, "carol").await.1, "streams") == 3 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the closed stream's slot was never shown free");

    // Another tier has its own limits: what it sets, what it inherits from the default tier
    // (daily requests), and nothing for what it says is unlimited (daily credits).
    let pro = gate.tier_token("dave", "pro");
    let body: Value = usage(&gate, &pro).await.json().await.unwrap();
    assert_eq!(body["tier"], "pro");
    assert_eq!(
        body["limits"][0],
        json!({"name": "submit", "limit": 50, "window_seconds": 50, "remaining": 50, "reset_seconds": 0})
    );
    assert!(body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["name"] != "daily-credits"));
    assert!(body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "daily-requests" && l["limit"] == 10));
}

#[tokio::test]
async fn usage_needs_a_caller_and_only_answers_get() {
    let gate = TestGate::builder().config(LIMITS).spawn().await;
    let anonymous = gate
        .client
        .get(format!("{}/api/fal/usage", gate.url))
        .send()
        .await
        .unwrap();
    gate.assert_refused(anonymous, 401, "unauthenticated").await;
    let bad = usage(&gate, "not-a-token").await;
    gate.assert_refused(bad, 401, "unauthenticated").await;
    let post = gate
        .client
        .post(format!("{}/api/fal/usage", gate.url))
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    gate.assert_refused(post, 405, "method_not_allowed").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn usage_on_redis_is_shared_by_replicas_and_consumes_nothing() {
    let prefix = format!("it-{}", uuid::Uuid::new_v4());
    let a = redis(TestGate::builder().config(LIMITS), &prefix, "127.0.0.1:6379")
        .job_ms(5_000, 5_000)
        .spawn()
        .await;
    let b = redis(
        TestGate::builder().config(LIMITS).share_fal(&a),
        &prefix,
        "127.0.0.1:6379",
    )
    .spawn()
    .await;
    let (_, fresh) = limits_of(&b, "alice").await;
    assert_eq!(remaining(&fresh, "submit"), 3);
    for _ in 0..5 {
        assert_eq!(
            but_poll(&limits_of(&a, "alice").await.1),
            but_poll(&fresh),
            "reading usage consumed"
        );
    }
    assert!(a.fal_saw().is_empty());
    assert_eq!(
        submit(&a, "alice", json!({"input_concept": "x", "model": "openai/gpt-4o"})).await,
        200
    );
    let (_, on_b) = limits_of(&b, "alice").await;
    assert_eq!(
        (
            remaining(&on_b, "submit"),
            remaining(&on_b, "daily-requests"),
            remaining(&on_b, "daily-credits"),
            remaining(&on_b, "inflight")
        ),
        (2, 9, 2, 1),
        "submitted on A, read on B: {on_b:?}"
    );
    // Exactly what usage says remains of the submit burst passes, across both replicas.
    assert_eq!(submit(&b, "alice", json!({"input_concept": "x"})).await, 200);
    assert_eq!(remaining(&limits_of(&a, "alice").await.1, "submit"), 1);
    assert_eq!(remaining(&limits_of(&a, "alice").await.1, "inflight"), 0);
    assert_eq!(remaining(&limits_of(&b, "bob").await.1, "submit"), 3, "per caller");
}

#[tokio::test]
async fn usage_with_redis_down_and_deny_is_503_then_recovers() {
    let proxy = chaos::ChaosProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let gate = redis(
        TestGate::builder().config(LIMITS),
        &format!("it-{}", uuid::Uuid::new_v4()),
        &proxy.addr.to_string(),
    )
    .spawn()
    .await;
    assert_eq!(usage(&gate, &gate.token("alice")).await.status(), 200);
    proxy.cut();
    let refused = usage(&gate, &gate.token("alice")).await;
    gate.assert_refused(refused, 503, "dependency_unavailable").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if usage(&gate, &gate.token("alice")).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "usage never answered again after Redis came back");
}

/// Issue 20: `/api/fal/usage` (a store script per call) and the playground's endpoint list (built
/// per call) are rated: each spends the caller's poll rate, so a flood is 429 `rate_limited`
/// and another caller is still answered.
#[tokio::test]
async fn usage_and_the_playground_endpoint_list_spend_the_poll_rate() {
    let gate = TestGate::builder()
        .config(
            "[playground]\nenabled = true\n[limits]\n[limits.tiers.default]\n\
             poll = { burst = 2, per_minute = 1 }\n",
        )
        .spawn()
        .await;
    let token = gate.token("mallory");
    let get = |path: &'static str, token: String| {
        let request = gate.client.get(format!("{}{path}", gate.url)).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(get("/api/fal/usage", token.clone()).await.status(), 200);
    assert_eq!(get("/playground/api/endpoints", token.clone()).await.status(), 200);
    for path in ["/api/fal/usage", "/playground/api/endpoints"] {
        gate.assert_refused(get(path, token.clone()).await, 429, "rate_limited")
            .await;
    }
    assert_eq!(get("/api/fal/usage", gate.token("bob")).await.status(), 200);
    assert_eq!(get("/playground/api/endpoints", gate.token("bob")).await.status(), 200);
    assert!(gate.fal_saw().is_empty());
}
