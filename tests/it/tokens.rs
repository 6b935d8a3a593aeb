//! Temporary fal tokens (`fal.realtime`, client-mode streams) minted through the proxy:
//! `POST https://rest.fal.ai/tokens/` under policy (the endpoint opts in, the tier may mint),
//! the expiration capped, each token a paid call (rate, day requests, credits) in process and
//! on Redis, the checked body re-serialised and sent with the server's key.

use falgate::emulator::{FaultAction, Op};
use serde_json::{json, Value};

use crate::support::{Builder, TestGate, FAL_KEY};

const TOKENS: &str = r#"
[endpoints."fal-ai/realtime-app"]
client_tokens = true
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
[tiers.default]
[tiers.nope]
operations = ["submit", "status", "stream", "result", "cancel"]
[tiers.other]
endpoints = ["fal-ai/echo"]
[limits]
default_tier = "default"
client_token_max_seconds = 60
[limits.tiers.default]
token = { burst = 5, per_minute = 1 }
daily_credits = 5
[limits.credits]
client_token_cost = 2
"#;

const TARGET: &str = "https://rest.fal.ai/tokens/";

async fn mint(gate: &TestGate, token: &str, body: &str) -> reqwest::Response {
    gate.client
        .post(format!("{}/api/fal/proxy", gate.url))
        .bearer_auth(token)
        .header("x-fal-target-url", TARGET)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

const CLIENT_BODY: &str = r#"{"allowed_apps": ["realtime-app"], "token_expiration": 120}"#;

async fn remaining(gate: &TestGate, sub: &str, name: &str) -> u64 {
    let usage: Value = gate
        .client
        .get(format!("{}/api/fal/usage", gate.url))
        .bearer_auth(gate.token(sub))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limit = usage["limits"].as_array().unwrap().iter().find(|l| l["name"] == name);
    limit.unwrap_or_else(|| panic!("no {name} in {usage}"))["remaining"]
        .as_u64()
        .unwrap()
}

/// Mints one token as `sub` and checks fal issued it for `realtime-app`, capped to 60 s.
async fn mint_ok(gate: &TestGate, sub: &str) -> String {
    let response = mint(gate, &gate.token(sub), CLIENT_BODY).await;
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.unwrap();
    let token = token.as_str().expect("the token is a JSON string").to_owned();
    let issued = gate.emulator.issued_token(&token).expect("fal issued it");
    assert_eq!(issued.allowed_apps, ["realtime-app"]);
    assert_eq!(issued.expiration.as_secs(), 60, "the expiration is capped");
    token
}

#[tokio::test]
async fn a_token_is_minted_with_the_server_key_and_the_checked_body_and_paid_for() {
    let gate = TestGate::builder().config(TOKENS).spawn().await;
    assert_eq!(remaining(&gate, "alice", "daily-credits").await, 5);
    mint_ok(&gate, "alice").await;
    let saw = gate.fal_saw();
    assert_eq!(saw.len(), 1);
    assert_eq!(
        (saw[0].method.as_str(), saw[0].path.as_str()),
        ("POST", "/rest.fal.ai/tokens/")
    );
    assert_eq!(
        saw[0].body,
        r#"{"allowed_apps":["realtime-app"],"token_expiration":60}"#
    );
    let header = |name: &str| saw[0].headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(header("authorization"), Some(format!("Key {FAL_KEY}")));
    assert_eq!(
        remaining(&gate, "alice", "daily-credits").await,
        3,
        "a token costs 2 credits"
    );
    assert_eq!(remaining(&gate, "alice", "token").await, 4);
    // No expiration asked: the cap; a shorter one is kept.
    let short = mint(
        &gate,
        &gate.token("bob"),
        r#"{"allowed_apps":["realtime-app"],"token_expiration":7}"#,
    )
    .await;
    let short: Value = short.json().await.unwrap();
    assert_eq!(
        gate.emulator
            .issued_token(short.as_str().unwrap())
            .unwrap()
            .expiration
            .as_secs(),
        7
    );

    mint_ok(&gate, "alice").await;
    let over = mint(&gate, &gate.token("alice"), CLIENT_BODY).await;
    gate.assert_refused(over, 403, "quota_exceeded").await;
    assert_eq!(gate.fal_saw().len(), 3, "the refused token reached fal");
}

#[tokio::test]
async fn tokens_are_refused_outside_policy_and_fal_sees_nothing() {
    let gate = TestGate::builder().config(TOKENS).spawn().await;
    let alice = gate.token("alice");
    let cases: [(String, &str, u16, &str); 9] = [
        (
            alice.clone(),
            r#"{"allowed_apps":["echo"],"token_expiration":120}"#,
            403,
            "endpoint_not_allowed",
        ),
        (
            alice.clone(),
            r#"{"allowed_apps":["nowhere"],"token_expiration":120}"#,
            403,
            "endpoint_not_allowed",
        ),
        (
            alice.clone(),
            r#"{"allowed_apps":["realtime-app","echo"]}"#,
            403,
            "endpoint_not_allowed",
        ),
        (gate.tier_token("n", "nope"), CLIENT_BODY, 403, "endpoint_not_allowed"),
        (gate.tier_token("o", "other"), CLIENT_BODY, 403, "endpoint_not_allowed"),
        (
            alice.clone(),
            r#"{"allowed_apps":["realtime-app"],"token_expiration":120,"x":1}"#,
            422,
            "validation_failed",
        ),
        (
            alice.clone(),
            r#"{"allowed_apps":["realtime-app"],"token_expiration":"120"}"#,
            422,
            "validation_failed",
        ),
        (
            alice.clone(),
            r#"{"allowed_apps":["../realtime-app"]}"#,
            422,
            "validation_failed",
        ),
        (alice.clone(), r#"{"allowed_apps":[]}"#, 422, "validation_failed"),
    ];
    for (token, body, status, code) in cases {
        let refused = mint(&gate, &token, body).await;
        gate.assert_refused(refused, status, code).await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
    assert_eq!(remaining(&gate, "alice", "daily-credits").await, 5, "refusals consumed");
}

#[tokio::test]
async fn a_token_fal_refused_is_refunded() {
    let gate = TestGate::builder().config(TOKENS).spawn().await;
    gate.fault(
        Op::Token,
        FaultAction::Status {
            status: 500,
            body: json!({"detail": "boom"}),
            headers: Vec::new(),
        },
    );
    let failed = mint(&gate, &gate.token("alice"), CLIENT_BODY).await;
    assert_eq!(failed.status(), 500, "fal's error is relayed");
    assert_eq!(gate.fal_saw().len(), 1);
    assert_eq!(remaining(&gate, "alice", "daily-credits").await, 5);
}

fn redis(builder: Builder, prefix: &str) -> Builder {
    builder
        .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
        .env("FALGATE_REDIS__KEY_PREFIX", prefix)
        .env("FALGATE_LIMITS__ON_STORE_ERROR", "deny")
}

#[tokio::test]
async fn on_redis_the_tokens_of_two_replicas_share_one_quota() {
    let prefix = format!("it-{}", uuid::Uuid::new_v4());
    let a = redis(TestGate::builder().config(TOKENS), &prefix).spawn().await;
    let b = redis(TestGate::builder().config(TOKENS).share_fal(&a), &prefix)
        .spawn()
        .await;
    mint_ok(&a, "alice").await;
    assert_eq!(
        remaining(&b, "alice", "daily-credits").await,
        3,
        "minted on A, read on B"
    );
    mint_ok(&b, "alice").await;
    let over = mint(&a, &a.token("alice"), CLIENT_BODY).await;
    a.assert_refused(over, 403, "quota_exceeded").await;
    assert_eq!(a.fal_saw().len(), 2, "the refused token reached fal");
    assert_eq!(remaining(&a, "alice", "token").await, 3);
}

/// fal's current realtime token route, `POST rest.fal.ai/tokens/realtime` (issue 24 item 7): the
/// same operation, policy and price as `/tokens/`, its lifetime named `duration`.
#[tokio::test]
async fn a_realtime_token_is_minted_through_tokens_realtime_under_the_same_rules() {
    let gate = TestGate::builder().config(TOKENS).spawn().await;
    let mint_realtime = |token: String, body: &'static str| {
        gate.client
            .post(format!("{}/api/fal/proxy", gate.url))
            .bearer_auth(token)
            .header("x-fal-target-url", "https://rest.fal.ai/tokens/realtime")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = mint_realtime(
        gate.token("alice"),
        r#"{"allowed_apps":["realtime-app"],"duration":120}"#,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    let issued = gate
        .emulator
        .issued_token(answer["token"].as_str().expect("{token}"))
        .expect("fal issued it");
    assert_eq!(issued.allowed_apps, ["realtime-app"]);
    assert_eq!(issued.expiration.as_secs(), 60, "the duration is capped");
    let saw = gate.fal_saw();
    assert_eq!(
        (saw[0].path.as_str(), saw[0].body.as_str()),
        (
            "/rest.fal.ai/tokens/realtime",
            r#"{"allowed_apps":["realtime-app"],"duration":60}"#
        )
    );
    assert_eq!(
        remaining(&gate, "alice", "daily-credits").await,
        3,
        "a token costs 2 credits"
    );
    // The same policy: an app the caller may not mint for reaches nothing.
    let refused = mint_realtime(gate.token("bob"), r#"{"allowed_apps":["echo"],"duration":60}"#)
        .await
        .unwrap();
    gate.assert_refused(refused, 403, "endpoint_not_allowed").await;
    let both = mint_realtime(
        gate.token("bob"),
        r#"{"allowed_apps":["realtime-app"],"duration":60,"token_expiration":60}"#,
    )
    .await
    .unwrap();
    gate.assert_refused(both, 422, "validation_failed").await;
    assert_eq!(gate.fal_saw().len(), 1, "a refused token reached fal");
}
