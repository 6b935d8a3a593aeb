//! Policy holes of issue 12 (items 1, 5, 7, 8, 9), each through both route families (the proxy
//! route with `x-fal-target-url` and the REST routes): a tier never reaches a more specific
//! entry through its parent, an idempotency key is scoped to the call it was sent with, limits
//! keys must name configured endpoints and price by the longest key, a tier table inherits the
//! default tier's limits, and an IdP's JWKS needs an audience (and https off loopback).

use std::process::Command;

use reqwest::Response;
use serde_json::{json, Value};

use crate::support::{OutputWithin, TestGate, FAL_KEY, SECRET, VPG};

/// The two route families.
const ROUTES: [Route; 2] = [Route::Rest, Route::Proxy];

#[derive(Clone, Copy, Debug)]
enum Route {
    Rest,
    Proxy,
}

/// A queue submit (`run`: a sync run) of `body` to `endpoint` with `token`, through `route`.
fn call(gate: &TestGate, route: Route, run: bool, endpoint: &str, token: &str) -> reqwest::RequestBuilder {
    let request = match (route, run) {
        (Route::Rest, false) => gate.client.post(format!("{}/api/fal/queue/{endpoint}", gate.url)),
        (Route::Rest, true) => gate.client.post(format!("{}/api/fal/run/{endpoint}", gate.url)),
        (Route::Proxy, false) => gate
            .client
            .post(format!("{}/api/fal/proxy", gate.url))
            .header("x-fal-target-url", format!("https://queue.fal.run/{endpoint}")),
        (Route::Proxy, true) => gate
            .client
            .post(format!("{}/api/fal/proxy", gate.url))
            .header("x-fal-target-url", format!("https://fal.run/{endpoint}")),
    };
    request.bearer_auth(token)
}

async fn submit(gate: &TestGate, route: Route, endpoint: &str, token: &str, body: &Value) -> Response {
    call(gate, route, false, endpoint, token)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn submits_fal_saw(gate: &TestGate) -> usize {
    gate.fal_saw().iter().filter(|r| r.method == "POST").count()
}

// ---- item 1: the most specific entry is chosen first, then the tier is checked on it ----

const PARENT_AND_PRO: &str = r#"
[endpoints."acme/echo"]
sync_run = true
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
[endpoints."acme/echo/pro"]
sync_run = true
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
[tiers.basic]
endpoints = ["acme/echo"]
[tiers.pro]
"#;

#[tokio::test]
async fn a_tier_allowed_only_the_parent_never_reaches_a_configured_sub_entry() {
    let gate = TestGate::builder().config(PARENT_AND_PRO).spawn().await;
    let basic = gate.tier_token("bea", "basic");
    for route in ROUTES {
        for run in [false, true] {
            let refused = call(&gate, route, run, "acme/echo/pro", &basic)
                .json(&json!({"x": 1}))
                .send()
                .await
                .unwrap();
            let body = gate.assert_refused(refused, 403, "endpoint_not_allowed").await;
            assert!(body["message"].as_str().unwrap().contains("acme/echo/pro"), "{body}");
            let deeper = call(&gate, route, run, "acme/echo/pro/v2", &basic)
                .json(&json!({"x": 1}))
                .send()
                .await
                .unwrap();
            gate.assert_refused(deeper, 403, "endpoint_not_allowed").await;
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;

    // Controls: an unconfigured sub path still goes through the parent; the pro tier reaches
    // the pro entry.
    let pro = gate.tier_token("pat", "pro");
    for route in ROUTES {
        let through_parent = submit(&gate, route, "acme/echo/other", &basic, &json!({"x": 1})).await;
        assert_eq!(through_parent.status(), 200, "{route:?}");
        let pro_entry = submit(&gate, route, "acme/echo/pro", &pro, &json!({"x": 1})).await;
        assert_eq!(pro_entry.status(), 200, "{route:?}");
    }
    assert_eq!(submits_fal_saw(&gate), 4);
}

// ---- item 5: an idempotency key is scoped to method, endpoint and query ----

#[tokio::test]
async fn an_idempotency_key_sent_to_another_endpoint_or_query_is_not_replayed() {
    let gate = TestGate::builder()
        .config("[webhooks]\nallowed_hosts = [\"hooks.example.com\"]\n")
        .spawn()
        .await;
    let token = gate.token("alice");
    let body = json!({"input_concept": "a lighthouse"});
    for route in ROUTES {
        let key = format!("click-{route:?}");
        let send = |endpoint: String| {
            call(&gate, route, false, &endpoint, &token)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
        };
        let first = send(VPG.to_owned()).await.unwrap();
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        let before = submits_fal_saw(&gate);

        // The same key and body on another endpoint is another submit, not VPG's answer.
        let other = send("fal-ai/echo".to_owned()).await.unwrap();
        assert_eq!(other.status(), 200, "{route:?}");
        assert!(other.headers().get("idempotent-replayed").is_none(), "{route:?}");
        let other: Value = other.json().await.unwrap();
        assert_ne!(other["request_id"], first["request_id"], "{route:?}");
        assert_eq!(submits_fal_saw(&gate), before + 1, "fal-ai/echo never reached fal");
        let echo = gate.fal_saw().last().unwrap().path.clone();
        assert!(echo.contains("fal-ai/echo"), "{echo}");

        // Another query (a webhook) is another scope too.
        let hooked = send(format!("{VPG}?fal_webhook=https%3A%2F%2Fhooks.example.com%2Fdone"))
            .await
            .unwrap();
        assert_eq!(hooked.status(), 200, "{route:?}");
        assert!(hooked.headers().get("idempotent-replayed").is_none(), "{route:?}");
        assert_eq!(submits_fal_saw(&gate), before + 2);

        // The retry of the first call is still replayed, and fal sees nothing.
        let again = send(VPG.to_owned()).await.unwrap();
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap()["request_id"], first["request_id"]);
        assert_eq!(submits_fal_saw(&gate), before + 2, "the retry reached fal");
    }
}

// ---- item 7: limits keys name configured endpoints; the longest key prices a call ----

#[tokio::test]
async fn a_sub_path_is_priced_and_rated_by_its_longest_configured_key() {
    let limits = r#"
[limits]
[limits.tiers.default]
daily_credits = 6
[limits.credits.endpoints."fal-ai/echo"]
cost = 1
[limits.credits.endpoints."fal-ai/echo/pro"]
cost = 5
[limits.endpoint_rates."fal-ai/echo/fast"]
burst = 1
per_minute = 1
"#;
    let gate = TestGate::builder().config(limits).spawn().await;
    for (n, route) in ROUTES.into_iter().enumerate() {
        // 5 credits for the pro path (a sub path of the entry `fal-ai/echo`): one credit left,
        // so the next pro call is over the day's credits, while the 1-credit parent still passes.
        let token = gate.token(&format!("spender-{n}"));
        let pro = submit(&gate, route, "fal-ai/echo/pro/v2", &token, &json!({"x": 1})).await;
        assert_eq!(pro.status(), 200, "{route:?}");
        let before = submits_fal_saw(&gate);
        let over = submit(&gate, route, "fal-ai/echo/pro", &token, &json!({"x": 1})).await;
        gate.assert_refused(over, 403, "quota_exceeded").await;
        assert_eq!(submits_fal_saw(&gate), before, "a refused call reached fal");
        let parent = submit(&gate, route, "fal-ai/echo", &token, &json!({"x": 1})).await;
        assert_eq!(parent.status(), 200, "{route:?}");
    }
    // The global rate of `fal-ai/echo/fast` holds for its sub paths, all callers together.
    let first = submit(
        &gate,
        Route::Rest,
        "fal-ai/echo/fast",
        &gate.token("a"),
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(first.status(), 200);
    let before = submits_fal_saw(&gate);
    for (route, endpoint) in [(Route::Proxy, "fal-ai/echo/fast"), (Route::Rest, "fal-ai/echo/fast/x")] {
        let refused = submit(&gate, route, endpoint, &gate.token("b"), &json!({"x": 1})).await;
        gate.assert_refused(refused, 429, "rate_limited").await;
    }
    assert_eq!(submits_fal_saw(&gate), before, "a refused call reached fal");
}

/// `falgate check-config` on `text` (written to a temp file): exit code and stderr.
fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("falgate-policy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("falgate.toml");
    let root = env!("CARGO_MANIFEST_DIR");
    let text =
        format!("[endpoints.\"fal-ai/echo\"]\nschema = \"{root}/tests/fixtures/schemas/any-object.json\"\n{text}");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_falgate"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env_clear()
        .env("FALGATE_AUTH__HS256_SECRET", SECRET)
        .env("FAL_KEY", FAL_KEY)
        .output_within()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_limits_key_naming_no_configured_endpoint_exits_64_naming_it() {
    for (text, named) in [
        (
            "[limits.credits.endpoints.\"fal-ai/ecko\"]\ncost = 5\n",
            "limits.credits.endpoints.\"fal-ai/ecko\"",
        ),
        (
            "[limits.endpoint_rates.\"fal-ai/echoes\"]\nburst = 1\nper_minute = 1\n",
            "limits.endpoint_rates.\"fal-ai/echoes\"",
        ),
    ] {
        let (code, stderr) = check_config(&format!("[limits]\n{text}"));
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    // An entry and a sub path of one are fine.
    let fine = "[limits]\n[limits.credits.endpoints.\"fal-ai/echo/pro\"]\ncost = 5\n\
                [limits.endpoint_rates.\"fal-ai/echo\"]\nburst = 1\nper_minute = 1\n";
    let (code, stderr) = check_config(fine);
    assert_eq!(code, Some(0), "{stderr}");
}

// ---- item 8: a tier table inherits the default tier's limits ----

const INHERITED: &str = r#"
[limits]
[limits.tiers.default]
submit = { burst = 2, per_minute = 1 }
[limits.tiers.pro]
max_inflight_jobs = 100
[limits.tiers.bare]
[limits.tiers.staff]
submit = "unlimited"
"#;

#[tokio::test]
async fn a_tier_table_without_rates_inherits_the_default_tiers_and_unlimited_is_explicit() {
    let gate = TestGate::builder().config(INHERITED).spawn().await;
    for tier in ["pro", "bare"] {
        for route in ROUTES {
            let token = gate.tier_token(&format!("{tier}-{route:?}"), tier);
            for _ in 0..2 {
                let ok = submit(&gate, route, VPG, &token, &json!({"input_concept": "x"})).await;
                assert_eq!(ok.status(), 200, "{tier} {route:?}");
                let state = ok.headers()["ratelimit"].to_str().unwrap().to_owned();
                assert!(state.contains("\"submit\""), "{state}");
            }
            let before = submits_fal_saw(&gate);
            let over = submit(&gate, route, VPG, &token, &json!({"input_concept": "x"})).await;
            gate.assert_refused(over, 429, "rate_limited").await;
            assert_eq!(submits_fal_saw(&gate), before, "a refused call reached fal");
        }
    }
    // Written "unlimited": no submit rate at all.
    for route in ROUTES {
        let token = gate.tier_token(&format!("staff-{route:?}"), "staff");
        for _ in 0..5 {
            let ok = submit(&gate, route, VPG, &token, &json!({"input_concept": "x"})).await;
            assert_eq!(ok.status(), 200, "{route:?}");
        }
    }
}

// ---- item 9: a JWKS issuer needs an audience (or an explicit opt-out) and https ----

#[test]
fn a_jwks_issuer_without_an_audience_or_off_loopback_over_http_exits_64() {
    let issuer = |rest: &str| format!("[auth.issuers.idp]\nissuer = \"https://idp.example\"\n{rest}");
    let refused = [
        (
            issuer("jwks_url = \"https://idp.example/jwks.json\"\n"),
            "auth.issuers.idp.audience",
        ),
        (
            "[auth]\njwks_url = \"https://idp.example/jwks.json\"\n".to_owned(),
            "auth.audience",
        ),
        (
            issuer("audience = \"falgate\"\njwks_url = \"http://idp.example/jwks.json\"\n"),
            "auth.issuers.idp.jwks_url",
        ),
        (
            issuer("audience = \"falgate\"\njwks_url = \"http://10.0.0.7/jwks.json\"\n"),
            "auth.issuers.idp.jwks_url",
        ),
        (
            issuer("audience = \"falgate\"\nany_audience = true\njwks_url = \"https://idp.example/j\"\n"),
            "auth.issuers.idp.any_audience",
        ),
    ];
    for (text, named) in refused {
        let (code, stderr) = check_config(&text);
        assert_eq!(code, Some(64), "{text}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    let accepted = [
        issuer("audience = \"falgate\"\njwks_url = \"https://idp.example/jwks.json\"\n"),
        issuer("any_audience = true\njwks_url = \"https://idp.example/jwks.json\"\n"),
        issuer("audience = \"falgate\"\njwks_url = \"http://127.0.0.1:9/jwks.json\"\n"),
        issuer("audience = \"falgate\"\njwks_url = \"http://[::1]:9/jwks.json\"\n"),
        issuer("audience = \"falgate\"\njwks_url = \"http://localhost:9/jwks.json\"\n"),
        // Keys of the operator's own (a secret, files) need no audience.
        issuer("hs_secret_env = \"FALGATE_AUTH__HS256_SECRET\"\nalgorithms = [\"HS256\"]\n"),
    ];
    for text in accepted {
        let (code, stderr) = check_config(&text);
        assert_eq!(code, Some(0), "{text}: {stderr}");
    }
}
