//! Limits through the gate: rates, credit quotas, concurrency, idempotent submits, the per-IP
//! rate on failed authentication, and two replicas sharing one Redis (cut and restored).

#[path = "../../src/redis/chaos.rs"]
pub(crate) mod chaos;

use reqwest::Method;
use serde_json::json;

use crate::support::{wait_completed, wait_completed_as, TestGate, VPG};

const LIMITS: &str = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
submit = { burst = 3, per_minute = 1 }
poll = { burst = 1000, per_minute = 6000 }
max_inflight_jobs = 2
daily_credits = 7
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "openai/gpt-4o" = 5 }
[limits.unauthenticated_ip_rate]
burst = 3
per_minute = 1
"#;

fn redis_env(builder: crate::support::Builder, prefix: &str, redis: &str, on_error: &str) -> crate::support::Builder {
    builder
        .env("FALGATE_REDIS__URL", &format!("redis://{redis}"))
        .env("FALGATE_REDIS__KEY_PREFIX", prefix)
        .env("FALGATE_REDIS__TIMEOUT_MS", "200")
        .env("FALGATE_LIMITS__ON_STORE_ERROR", on_error)
}

async fn submit(gate: &TestGate, sub: &str, input: serde_json::Value) -> reqwest::Response {
    gate.client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.token(sub))
        .json(&input)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_burst_past_the_rate_is_429_with_retry_after_and_ratelimit_headers() {
    let rate_only =
        "[limits]\ndefault_tier = \"default\"\n[limits.tiers.default]\nsubmit = { burst = 3, per_minute = 1 }\n";
    let gate = TestGate::builder().config(rate_only).spawn().await;
    for _ in 0..3 {
        let ok = submit(&gate, "alice", json!({"input_concept": "x"})).await;
        assert_eq!(ok.status(), 200);
        assert!(
            ok.headers()["ratelimit"].to_str().unwrap().contains("r="),
            "{:?}",
            ok.headers()
        );
    }
    let refused = submit(&gate, "alice", json!({"input_concept": "x"})).await;
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        refused.headers()["ratelimit-policy"].to_str().unwrap().contains("q=3"),
        "{:?}",
        refused.headers()
    );
    gate.assert_refused(refused, 429, "rate_limited").await;
    assert_eq!(gate.fal_saw().len(), 3, "the refused submit reached fal");
    assert_eq!(
        submit(&gate, "bob", json!({"input_concept": "x"})).await.status(),
        200,
        "limits are per caller"
    );
}

#[tokio::test]
async fn concurrency_is_capped_and_a_completed_job_frees_its_slot() {
    let gate = TestGate::builder().config(LIMITS).spawn().await;
    let first = gate.submit("alice", json!({"input_concept": "x"})).await;
    gate.submit("alice", json!({"input_concept": "y"})).await;
    let third = submit(&gate, "alice", json!({"input_concept": "z"})).await;
    gate.assert_refused(third, 429, "concurrency_limited").await;
    wait_completed(&gate, &first).await;
    assert_eq!(
        submit(&gate, "alice", json!({"input_concept": "z"})).await.status(),
        200
    );
}

#[tokio::test]
async fn a_premium_model_spends_the_credit_quota_faster_and_then_fails_at_once_with_403() {
    let gate = TestGate::builder().config(LIMITS).spawn().await;
    let premium = submit(&gate, "dave", json!({"input_concept": "x", "model": "openai/gpt-4o"})).await;
    assert_eq!(premium.status(), 200);
    let id = premium.json::<serde_json::Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_completed_as(&gate, "dave", &id).await;
    assert_eq!(submit(&gate, "dave", json!({"input_concept": "x"})).await.status(), 200);
    let over = submit(&gate, "dave", json!({"input_concept": "x", "model": "openai/gpt-4o"})).await;
    assert!(over.headers().contains_key("retry-after"));
    gate.assert_refused(over, 403, "quota_exceeded").await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let gate = TestGate::spawn().await;
    let send = |body: serde_json::Value| {
        gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("idempotency-key", "click-1")
            .json(&body)
            .send()
    };
    let first: serde_json::Value = send(json!({"input_concept": "x"})).await.unwrap().json().await.unwrap();
    let again = send(json!({"input_concept": "x"})).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["request_id"],
        first["request_id"]
    );
    assert_eq!(gate.fal_saw().len(), 1, "the retry submitted twice");
    let other = send(json!({"input_concept": "y"})).await.unwrap();
    gate.assert_refused(other, 422, "idempotency_key_reused").await;
}

#[tokio::test]
async fn repeated_failed_authentication_from_one_ip_is_429() {
    let gate = TestGate::builder().config(LIMITS).spawn().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = gate
            .client
            .get(format!(
                "{}/api/fal/queue/{VPG}/requests/{}",
                gate.url,
                uuid::Uuid::new_v4()
            ))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_ownership_limits_and_idempotency() {
    let prefix = format!("it-{}", uuid::Uuid::new_v4());
    let a = redis_env(TestGate::builder().config(LIMITS), &prefix, "127.0.0.1:6379", "deny")
        .spawn()
        .await;
    let b = redis_env(
        TestGate::builder().config(LIMITS).share_fal(&a),
        &prefix,
        "127.0.0.1:6379",
        "deny",
    )
    .spawn()
    .await;
    let id = a.submit("alice", json!({"input_concept": "x"})).await;
    let status = b
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status"))
        .await;
    assert_eq!(status.status(), 200, "submitted on A, polled on B");
    let bob = b
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", b.url))
        .bearer_auth(b.token("bob"))
        .send()
        .await
        .unwrap();
    b.assert_refused(bob, 404, "request_not_found").await;
    // The submit burst of 3 is shared: 1 used on A, so exactly 2 more pass across A and B together.
    let attempts = (0..6).map(|i| {
        let gate = if i % 2 == 0 { &a } else { &b };
        async move {
            submit(gate, "erin", json!({"input_concept": "x"}))
                .await
                .status()
                .as_u16()
        }
    });
    let mut statuses = futures_util::future::join_all(attempts).await;
    let first = submit(&a, "frank", json!({"input_concept": "x"}))
        .await
        .status()
        .as_u16();
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
    assert_eq!(first, 200);
    let key = |gate: &TestGate, body: serde_json::Value| {
        gate.client
            .post(format!("{}/api/fal/queue/{VPG}", gate.url))
            .bearer_auth(gate.token("gina"))
            .header("idempotency-key", "k")
            .json(&body)
            .send()
    };
    let one: serde_json::Value = key(&a, json!({"input_concept": "x"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let two = key(&b, json!({"input_concept": "x"})).await.unwrap();
    assert_eq!(
        two.json::<serde_json::Value>().await.unwrap()["request_id"],
        one["request_id"]
    );
}

#[tokio::test]
async fn with_redis_cut_deny_answers_503_allow_serves_rates_unmetered_but_not_quotas_and_both_recover() {
    let proxy = chaos::ChaosProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let addr = proxy.addr.to_string();
    let deny = redis_env(
        TestGate::builder().config(LIMITS),
        &format!("it-{}", uuid::Uuid::new_v4()),
        &addr,
        "deny",
    )
    .spawn()
    .await;
    let allow = redis_env(
        TestGate::builder().config(LIMITS),
        &format!("it-{}", uuid::Uuid::new_v4()),
        &addr,
        "allow",
    )
    .spawn()
    .await;
    assert_eq!(submit(&deny, "u", json!({"input_concept": "x"})).await.status(), 200);
    let before: serde_json::Value = submit(&allow, "u", json!({"input_concept": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let id = before["request_id"].as_str().unwrap().to_owned();
    let fal_saw = allow.fal_saw().len();
    proxy.cut();
    let refused = submit(&deny, "u", json!({"input_concept": "x"})).await;
    deny.assert_refused(refused, 503, "dependency_unavailable").await;
    assert_eq!(
        deny.client
            .get(format!("{}/readyz", deny.url))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    // Issue 25: money-like limits (this tier's day credits and jobs cap) fail closed even under
    // `allow`, never counted in one replica's memory; a rate-only call (a status poll) passes.
    let refused = submit(&allow, "u", json!({"input_concept": "x"})).await;
    allow.assert_refused(refused, 503, "dependency_unavailable").await;
    assert_eq!(allow.fal_saw().len(), fal_saw, "a refused submit reached fal");
    let status = allow
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", allow.url))
        .bearer_auth(allow.token("u"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200, "allow lets a rate-only call through");
    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if submit(&deny, "v", json!({"input_concept": "x"})).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "deny mode never recovered after Redis came back");
}

#[tokio::test]
async fn a_finished_sync_run_frees_its_concurrency_slot() {
    let one_slot = "[limits]\ndefault_tier = \"default\"\n[limits.tiers.default]\nmax_inflight_jobs = 1\n";
    let gate = TestGate::builder().config(one_slot).spawn().await;
    for _ in 0..3 {
        let run = gate
            .post_as_alice(&format!("/api/fal/run/{VPG}"), &json!({"input_concept": "x"}))
            .await;
        assert_eq!(run.status(), 200, "a finished run still holds the only slot");
    }
}
