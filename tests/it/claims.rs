//! Claims of README and ARCHITECTURE that had no test (issue 14): refunds, the 424's kept spend
//! and key, `idempotency_in_flight`, the response-size cap, `/metrics` on the admin listener
//! only, long streams without a total timeout, and what a poll answered 404 spends.

use std::time::Duration;

use falgate::emulator::{Fault, FaultAction, Op};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{TestGate, VPG};

/// Quota of two paid calls a day, rates out of the way.
const TWO_A_DAY: &str = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
submit = { burst = 100, per_minute = 6000 }
poll = { burst = 100, per_minute = 6000 }
daily_requests = 2
"#;

fn fault(gate: &TestGate, op: Op, action: FaultAction, times: u32) {
    gate.emulator.add_fault(Fault {
        op: Some(op),
        path_contains: None,
        action,
        times: Some(times),
    });
}

async fn submit(gate: &TestGate, key: Option<&str>) -> reqwest::Response {
    let mut request = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .json(&json!({"input_concept": "x"}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

fn submits_fal_saw(gate: &TestGate) -> usize {
    gate.fal_saw().iter().filter(|r| r.method == "POST").count()
}

/// A paid call fal refused (its own 4xx/5xx, relayed) is refunded: the day quota still allows
/// two calls after three refusals.
#[tokio::test]
async fn a_paid_call_fal_rejects_is_refunded() {
    let gate = TestGate::builder().config(TWO_A_DAY).spawn().await;
    let body = json!({"detail": [{"loc": ["body", "input_concept"], "msg": "nope", "type": "value_error"}]});
    fault(
        &gate,
        Op::Submit,
        FaultAction::Status {
            status: 422,
            body,
            headers: Vec::new(),
        },
        3,
    );
    for _ in 0..3 {
        let response = submit(&gate, None).await;
        assert_eq!(response.status(), 422);
        assert!(
            response.headers().get("x-falgate-error").is_none(),
            "fal's answer, relayed"
        );
    }
    assert_eq!(submits_fal_saw(&gate), 3);
    for _ in 0..2 {
        assert_eq!(submit(&gate, None).await.status(), 200, "a refused call was charged");
    }
    let over = submit(&gate, None).await;
    gate.assert_refused(over, 403, "quota_exceeded").await;
}

/// A submit whose outcome is unknown (424) keeps its spend and its idempotency key: a retry with
/// the key is 409 `idempotency_in_flight` (never a second job), and the quota counts it.
#[tokio::test]
async fn a_424_keeps_its_spend_and_its_idempotency_key() {
    let gate = TestGate::builder().config(TWO_A_DAY).spawn().await;
    fault(&gate, Op::Submit, FaultAction::Drop, 1);
    let unknown = submit(&gate, Some("k-1")).await;
    gate.assert_refused(unknown, 424, "submit_outcome_unknown").await;
    let retry = submit(&gate, Some("k-1")).await;
    gate.assert_refused(retry, 409, "idempotency_in_flight").await;
    assert_eq!(submits_fal_saw(&gate), 1, "the retry reached fal");
    // The 424 spent one of two; the 409 spent nothing.
    assert_eq!(submit(&gate, None).await.status(), 200);
    let over = submit(&gate, None).await;
    gate.assert_refused(over, 403, "quota_exceeded").await;
    assert_eq!(submits_fal_saw(&gate), 2);
}

/// A second submit with the key of one still running is 409 and never reaches fal; once the
/// first is answered, the key replays its answer.
#[tokio::test]
async fn a_submit_with_the_key_of_one_still_running_is_409() {
    let gate = TestGate::spawn().await;
    fault(&gate, Op::Submit, FaultAction::Stall { ms: 1_000 }, 1);
    let first = tokio::spawn({
        let request = gate
            .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("idempotency-key", "k-run")
            .json(&json!({"input_concept": "x"}));
        async move { request.send().await.unwrap() }
    });
    // The first is claimed once fal has it (the emulator records before it stalls).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while submits_fal_saw(&gate) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first submit never reached fal"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = submit(&gate, Some("k-run")).await;
    gate.assert_refused(second, 409, "idempotency_in_flight").await;
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let replay: Value = submit(&gate, Some("k-run")).await.json().await.unwrap();
    assert_eq!(replay["request_id"], first["request_id"]);
    assert_eq!(submits_fal_saw(&gate), 1);
}

/// A control-plane answer over `upstream.max_response_bytes` is 502 `upstream_bad_response`.
#[tokio::test]
async fn a_status_answer_over_max_response_bytes_is_502() {
    let gate = TestGate::builder()
        .env("FALGATE_UPSTREAM__MAX_RESPONSE_BYTES", "2048")
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let path = format!("/api/fal/queue/{VPG}/requests/{id}/status");
    assert_eq!(gate.get_as_alice(&path).await.status(), 200, "a small answer passes");
    let padding = "x".repeat(4_096);
    fault(
        &gate,
        Op::Status,
        FaultAction::Status {
            status: 200,
            body: json!({"status": "IN_QUEUE", "padding": padding}),
            headers: Vec::new(),
        },
        1,
    );
    let response = gate.get_as_alice(&path).await;
    gate.assert_refused(response, 502, "upstream_bad_response").await;
}

/// `/metrics` is served on the admin listener only, never on the public one.
#[tokio::test]
async fn metrics_are_on_the_admin_listener_only() {
    let gate = TestGate::spawn().await;
    let admin = gate
        .client
        .get(format!("{}/metrics", gate.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.unwrap().contains("falgate_"), "no falgate series");
    let public = gate.client.get(format!("{}/metrics", gate.url)).send().await.unwrap();
    gate.assert_refused(public, 404, "route_not_found").await;
    let authed = gate.get_as_alice("/metrics").await;
    gate.assert_refused(authed, 404, "route_not_found").await;
}

/// No total timeout wraps a stream: a status stream open far longer than the first-byte and idle
/// timeouts (1.5 s each) runs to COMPLETED, because events keep arriving.
#[tokio::test]
async fn a_long_status_stream_has_no_total_timeout() {
    let gate = TestGate::builder().job_ms(2_000, 2_000).spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "a long one"})).await;
    let started = tokio::time::Instant::now();
    let response = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status/stream"))
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream was cut")));
    }
    assert!(text.contains("COMPLETED"), "ended before completion: {text}");
    assert!(started.elapsed() > Duration::from_millis(3_000), "the job was not long");
}

/// The idle timeout does abort a stream that goes quiet: with an idle limit (40 ms) below the
/// emulator's event interval (50 ms), the stream ends in an error, not a clean end.
#[tokio::test]
async fn a_stream_quieter_than_the_idle_timeout_is_aborted() {
    let gate = TestGate::builder()
        .job_ms(2_000, 1_000)
        .env("FALGATE_UPSTREAM__IDLE_TIMEOUT_MS", "40")
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let started = tokio::time::Instant::now();
    let response = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status/stream"))
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the quiet stream ended cleanly: {text}");
    assert!(!text.contains("COMPLETED"), "the stream ran to the end");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "aborted late: {:?}",
        started.elapsed()
    );
}

/// README: a poll answered 404 (an id the caller does not own) has spent its poll rate; the
/// ownership check runs after admission, so probing ids costs rate like any poll.
#[tokio::test]
async fn a_poll_answered_404_spends_the_poll_rate() {
    let limits = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
poll = { burst = 2, per_minute = 1 }
"#;
    let gate = TestGate::builder().config(limits).spawn().await;
    for n in 1..=2 {
        let path = format!("/api/fal/queue/{VPG}/requests/00000000-0000-4000-8000-00000000000{n}/status");
        let response = gate.get_as_alice(&path).await;
        gate.assert_refused(response, 404, "request_not_found").await;
    }
    let path = format!("/api/fal/queue/{VPG}/requests/00000000-0000-4000-8000-000000000009/status");
    let response = gate.get_as_alice(&path).await;
    gate.assert_refused(response, 429, "rate_limited").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

/// `NO_PROXY` sends a listed host direct: the egress proxy gets no connection, while a host not
/// listed goes through it (the positive control).
#[tokio::test]
async fn no_proxy_hosts_bypass_the_egress_proxy() {
    use futures_util::FutureExt;
    // Direct, port 1 refuses at once (502); the silent proxy lets the tunnel time out (504).
    let cases = [
        ("localhost", false, 502, "upstream_unreachable"),
        ("other.example", true, 504, "upstream_timeout"),
    ];
    for (no_proxy, through_proxy, status, code) in cases {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = TestGate::builder()
            .queue_url("https://localhost:1")
            .env("HTTPS_PROXY", &format!("http://{}", proxy.local_addr().unwrap()))
            .env("NO_PROXY", no_proxy)
            .spawn()
            .await;
        let response = gate
            .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
            .await;
        gate.assert_refused(response, status, code).await;
        // A connection the gate made is queued at the listener by now.
        let connected = proxy.accept().now_or_never().is_some();
        assert_eq!(connected, through_proxy, "NO_PROXY={no_proxy}");
    }
}

/// The gate's stores run on the clock it was built with: an ownership record expires after
/// `ownership.ttl_seconds` and a spent rate refills, both by advancing a `ManualClock`.
#[tokio::test]
async fn the_gate_runs_its_expiring_stores_on_the_injected_clock() {
    let manual = falgate::clock::ManualClock::new();
    let limits = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
submit = { burst = 1, per_minute = 1 }
poll = { burst = 100, per_minute = 6000 }
"#;
    let gate = TestGate::builder()
        .clock(&manual)
        .config(limits)
        .env("FALGATE_OWNERSHIP__TTL_SECONDS", "300")
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let status = format!("/api/fal/queue/{VPG}/requests/{id}/status");
    assert_eq!(gate.get_as_alice(&status).await.status(), 200);
    let again = submit(&gate, None).await;
    gate.assert_refused(again, 429, "rate_limited").await;
    manual.advance(Duration::from_secs(60));
    assert_eq!(
        submit(&gate, None).await.status(),
        200,
        "the rate refilled on the clock"
    );
    assert_eq!(gate.get_as_alice(&status).await.status(), 200, "owned until the ttl");
    manual.advance(Duration::from_secs(240));
    let expired = gate.get_as_alice(&status).await;
    gate.assert_refused(expired, 404, "request_not_found").await;
}
