//! `fal.stream` (issue 12 item 12): `POST fal.run/{endpoint}/stream` through both route families
//! is relayed event by event, under the sync-run policy, the stream caps, the submit rate and the
//! idle timeout. The emulator holds a stream open after its first partial until the test
//! releases it, so "arrived before the end" needs no timing.

use std::time::{Duration, Instant};

use falgate::emulator::{Fault, FaultAction, Op};
use reqwest::Method;
use serde_json::json;

use crate::support::{TestGate, VPG};

/// The REST route (`proxy == false`) or the proxy route of a streaming run of `endpoint`.
fn stream_run(gate: &TestGate, sub: &str, endpoint: &str, proxy: bool) -> reqwest::RequestBuilder {
    let request = match proxy {
        false => gate.client.post(format!("{}/api/fal/run/{endpoint}/stream", gate.url)),
        true => gate
            .client
            .post(format!("{}/api/fal/proxy", gate.url))
            .header("x-fal-target-url", format!("https://fal.run/{endpoint}/stream")),
    };
    request
        .bearer_auth(gate.token(sub))
        .header("accept", "text/event-stream")
        .json(&json!({"input_concept": "a lighthouse in a storm", "prompt_length": "Short"}))
}

/// Holds every streaming run after its first event until `key` is released.
fn hold_after_first_event(gate: &TestGate, key: &str) {
    gate.emulator.add_fault(Fault {
        op: Some(Op::RunStream),
        path_contains: None,
        action: FaultAction::Hold {
            after_events: 1,
            key: key.to_owned(),
        },
        times: None,
    });
}

/// Reads until one whole event (`\n\n`) arrived, returning what was read.
async fn first_event(response: &mut reqwest::Response) -> String {
    let mut read = String::new();
    while !read.contains("\n\n") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended before its first event");
        read.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    read
}

/// Reads the rest of the stream; `Err` when it ended with an error instead of cleanly.
async fn rest(response: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut read = String::new();
    while let Some(chunk) = response.chunk().await? {
        read.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    Ok(read)
}

/// Reads the rest of a stream that must end in an error of the gate's own making: within 10 s
/// (well below the client's 20 s total timeout, so that timeout can never supply the error),
/// and not a client-side timeout.
async fn rest_ends_in_error(response: &mut reqwest::Response, what: &str) {
    let ended = tokio::time::timeout(Duration::from_secs(10), rest(response))
        .await
        .unwrap_or_else(|_| panic!("{what}: the stream was still open after 10 s"));
    let err = ended.expect_err(what);
    assert!(!err.is_timeout(), "{what}: the client's own timeout ended it: {err}");
}

fn runs_fal_saw(gate: &TestGate) -> usize {
    gate.fal_saw().iter().filter(|r| r.path.ends_with("/stream")).count()
}

#[tokio::test]
async fn a_streaming_run_reaches_the_caller_event_by_event_on_both_route_families() {
    let gate = TestGate::spawn().await;
    for proxy in [false, true] {
        let key = format!("first-partial-{proxy}");
        hold_after_first_event(&gate, &key);
        let mut response = stream_run(&gate, "alice", VPG, proxy).send().await.unwrap();
        assert_eq!(response.status(), 200, "proxy: {proxy}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        assert!(response.headers().contains_key("x-fal-request-id"));
        // fal holds the run open after this event: it can only be here if it was relayed at once.
        let first = first_event(&mut response).await;
        assert!(first.starts_with("data: {\"prompt\":"), "{first}");
        gate.emulator.release(&key);
        let rest = rest(&mut response).await.expect("a finished run ends cleanly");
        let last = rest.trim_end().rsplit("\n\n").next().unwrap();
        assert_eq!(last, r#"data: {"prompt":"Simple video of a lighthouse in a storm."}"#);
        gate.emulator.clear_faults();
    }
    let saw = gate.fal_saw();
    assert_eq!(saw.len(), 2);
    for request in &saw {
        assert_eq!(request.path, format!("/fal.run/{VPG}/stream"));
        assert!(request.headers.contains(&("accept".into(), "text/event-stream".into())));
    }
}

#[tokio::test]
async fn a_streaming_run_follows_the_sync_run_policy_and_its_schema() {
    let gate = TestGate::spawn().await;
    for proxy in [false, true] {
        // `fal-ai/echo` has `sync_run = false`: stream it through the queue instead.
        let refused = stream_run(&gate, "alice", "fal-ai/echo", proxy).send().await.unwrap();
        gate.assert_refused(refused, 403, "sync_run_not_allowed").await;
        let refused = stream_run(&gate, "alice", "fal-ai/not-configured", proxy)
            .send()
            .await
            .unwrap();
        gate.assert_refused(refused, 403, "endpoint_not_allowed").await;
        let invalid = stream_run(&gate, "alice", VPG, proxy)
            .json(&json!({"style": "Noir"}))
            .send()
            .await
            .unwrap();
        let body = gate.assert_refused(invalid, 422, "validation_failed").await;
        assert_eq!(body["detail"][0]["loc"], json!(["body", "input_concept"]));
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn streaming_runs_hold_stream_slots_and_a_finished_one_frees_its_slot() {
    let gate = TestGate::builder()
        .config("[limits]\nstreams_per_caller = 1\n")
        .spawn()
        .await;
    hold_after_first_event(&gate, "slot");
    let mut open = stream_run(&gate, "alice", VPG, false).send().await.unwrap();
    assert_eq!(open.status(), 200);
    first_event(&mut open).await;
    for proxy in [false, true] {
        let refused = stream_run(&gate, "alice", VPG, proxy).send().await.unwrap();
        assert_eq!(
            refused.headers()["ratelimit-policy"],
            "\"streams\";q=1;qu=\"concurrent-requests\""
        );
        gate.assert_refused(refused, 429, "concurrency_limited").await;
    }
    assert_eq!(runs_fal_saw(&gate), 1, "a refused streaming run reached fal");
    gate.emulator.release("slot");
    rest(&mut open).await.unwrap();
    // The slot is freed as the gate drops the finished body (polled for, not slept on).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = stream_run(&gate, "alice", VPG, true).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the finished run's slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_streaming_run_spends_the_submit_rate_like_a_sync_run() {
    let gate = TestGate::builder()
        .config(
            "[limits]\ndefault_tier = \"default\"\n[limits.tiers.default]\nsubmit = { burst = 1, per_minute = 1 }\n",
        )
        .spawn()
        .await;
    let mut first = stream_run(&gate, "alice", VPG, false).send().await.unwrap();
    assert_eq!(first.status(), 200);
    rest(&mut first).await.unwrap();
    for proxy in [false, true] {
        let refused = stream_run(&gate, "alice", VPG, proxy).send().await.unwrap();
        gate.assert_refused(refused, 429, "rate_limited").await;
    }
    let sync = gate
        .as_alice(Method::POST, &format!("/api/fal/run/{VPG}"))
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(sync, 429, "rate_limited").await;
    assert_eq!(gate.fal_saw().len(), 1);
}

#[tokio::test]
async fn a_streaming_run_fal_goes_silent_on_ends_in_an_error_not_a_clean_end() {
    // The base config's idle timeout is 1.5 s; the hold is never released.
    let gate = TestGate::spawn().await;
    hold_after_first_event(&gate, "never");
    for proxy in [false, true] {
        let mut response = stream_run(&gate, "alice", VPG, proxy).send().await.unwrap();
        assert_eq!(response.status(), 200);
        first_event(&mut response).await;
        rest_ends_in_error(&mut response, &format!("a silent run looked finished (proxy: {proxy})")).await;
    }
}

#[tokio::test]
async fn a_streaming_run_at_the_stream_lifetime_ends_in_an_error_not_a_clean_end() {
    let gate = TestGate::builder()
        .env("FALGATE_UPSTREAM__MAX_STREAM_LIFETIME_MS", "300")
        .env("FALGATE_UPSTREAM__IDLE_TIMEOUT_MS", "20000")
        .spawn()
        .await;
    hold_after_first_event(&gate, "never");
    let mut response = stream_run(&gate, "alice", VPG, true).send().await.unwrap();
    assert_eq!(response.status(), 200);
    first_event(&mut response).await;
    rest_ends_in_error(&mut response, "a run cut at its lifetime looked finished").await;
}
