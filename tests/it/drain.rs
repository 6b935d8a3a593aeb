//! SIGTERM / SIGINT on a real `falgate serve` process: `/readyz` answers 503 at once while calls
//! are still served for the drain delay, a call in flight finishes, the process exits 0; a
//! second signal exits at once.

use std::time::Duration;

use falgate::emulator::{FaultAction, Op};
use serde_json::json;

use crate::support::{Process, TestGate, VPG};

/// Polls `url` until it answers `status` (bounded); the answer's JSON body.
async fn wait_for_status(client: &reqwest::Client, url: &str, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status() == status {
                return response.json().await.unwrap();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until fal has seen `count` submits.
async fn wait_for_submits(gate: &TestGate, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.fal_saw().iter().filter(|r| r.method == "POST").count() < count {
        assert!(tokio::time::Instant::now() < deadline, "fal never saw the submit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts alice's submit through `process` and waits until fal holds it (stalled by a fault).
async fn submit_in_flight(
    gate: &TestGate,
    process: &Process,
    client: &reqwest::Client,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let submit = client
        .post(format!("{}/api/fal/queue/{VPG}", process.url))
        .bearer_auth(gate.token("alice"))
        .json(&json!({ "input_concept": "a lighthouse" }))
        .send();
    let in_flight = tokio::spawn(submit);
    wait_for_submits(gate, 1).await;
    in_flight
}

#[tokio::test]
async fn sigterm_drains_readyz_turns_503_calls_in_flight_finish_and_the_process_exits_0() {
    let gate = TestGate::spawn().await;
    // fal takes 2.5 s to answer the submit: it is in flight when the signal arrives.
    gate.fault(Op::Submit, FaultAction::Stall { ms: 2500 });
    let mut process = Process::serve(
        &gate.fal_url,
        &[
            ("FALGATE_DRAIN__DELAY_MS", "1500"),
            ("FALGATE_DRAIN__TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    let client = crate::support::client();
    wait_for_status(&client, &format!("{}/readyz", process.url), 200).await;
    let in_flight = submit_in_flight(&gate, &process, &client).await;

    process.signal("TERM");
    let ready = wait_for_status(&client, &format!("{}/readyz", process.url), 503).await;
    assert_eq!(ready["status"], "draining");
    // Still within the delay: a new call is served, not refused.
    let health = client.get(format!("{}/healthz", process.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The balancer is asked to drop its kept-alive connection after this answer.
    assert_eq!(health.headers()["connection"], "close");

    let answer = in_flight.await.unwrap().expect("the call in flight was answered");
    assert_eq!(answer.status(), 200, "the call in flight did not finish");
    assert!(answer.json::<serde_json::Value>().await.unwrap()["request_id"].is_string());
    assert_eq!(process.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_without_waiting_for_calls_in_flight() {
    let gate = TestGate::spawn().await;
    gate.fault(Op::Submit, FaultAction::Stall { ms: 60_000 });
    let mut process = Process::serve(
        &gate.fal_url,
        &[
            ("FALGATE_DRAIN__DELAY_MS", "60000"),
            ("FALGATE_DRAIN__TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let client = crate::support::client();
    let _in_flight = submit_in_flight(&gate, &process, &client).await;
    process.signal("INT");
    wait_for_status(&client, &format!("{}/readyz", process.url), 503).await;
    process.signal("INT");
    assert_eq!(process.exit_code().await, Some(130));
}

/// A submit still waiting for fal when the drain timeout nears is answered 424
/// `submit_outcome_unknown` (the client does not retry it) instead of having its connection cut
/// (which the client or the balancer would retry: a second paid job).
#[tokio::test]
async fn a_submit_still_waiting_at_the_drain_timeout_is_answered_424_not_cut() {
    let gate = TestGate::spawn().await;
    gate.fault(Op::Submit, FaultAction::Stall { ms: 60_000 });
    let mut process = Process::serve(
        &gate.fal_url,
        &[
            ("FALGATE_DRAIN__DELAY_MS", "100"),
            ("FALGATE_DRAIN__TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    let client = crate::support::client();
    let in_flight = submit_in_flight(&gate, &process, &client).await;
    process.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("answered")
        .unwrap()
        .expect("answered, not cut");
    assert_eq!(answer.status(), 424);
    assert_eq!(answer.headers()["x-falgate-error"], "submit_outcome_unknown");
    assert_eq!(process.exit_code().await, Some(0));
}
