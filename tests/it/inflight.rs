//! Jobs in flight (issue 12 item 6), through both route families: a concurrency slot is freed
//! only by an end learned from fal — a poll that sees `COMPLETED`, or the reconciler asking fal
//! about jobs nobody polls — never by a cancel fal merely accepted; in process and with Redis.

use std::time::Duration;

use falgate::emulator::{FaultAction, Op};
use reqwest::Method;
use serde_json::json;

use crate::support::{TestGate, VPG};

/// One job in flight per caller; the reconciler off unless a test turns it on.
const ONE_JOB: &str = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
max_inflight_jobs = 1
"#;

/// The reconciler asks about every job in flight every 20 ms.
const RECONCILE_QUICKLY: [(&str, &str); 2] = [
    ("FALGATE_LIMITS__RECONCILE_INTERVAL_MS", "20"),
    ("FALGATE_LIMITS__RECONCILE_IDLE_MS", "0"),
];

/// `method` on `rest` under the video prompt generator's queue path as `sub`, through the REST
/// route or (`proxy`) the proxy route.
async fn call(gate: &TestGate, sub: &str, proxy: bool, method: Method, rest: &str) -> reqwest::Response {
    let request = match proxy {
        false => gate
            .client
            .request(method.clone(), format!("{}/api/fal/queue/{VPG}{rest}", gate.url)),
        true => gate
            .client
            .request(method.clone(), format!("{}/api/fal/proxy", gate.url))
            .header("x-fal-target-url", format!("https://queue.fal.run/{VPG}{rest}")),
    };
    let request = match method {
        Method::POST => request.json(&json!({"input_concept": "a lighthouse"})),
        _ => request,
    };
    request.bearer_auth(gate.token(sub)).send().await.unwrap()
}

async fn submit(gate: &TestGate, proxy: bool) -> reqwest::Response {
    call(gate, "alice", proxy, Method::POST, "").await
}

async fn submitted(gate: &TestGate, proxy: bool) -> String {
    let response = submit(gate, proxy).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["request_id"].as_str().unwrap().to_owned()
}

fn submits_fal_saw(gate: &TestGate) -> usize {
    gate.fal_saw().iter().filter(|r| r.method == "POST").count()
}

/// Status calls fal saw for `id` (from falgate's reconciler when no client polls).
fn status_calls_fal_saw(gate: &TestGate, id: &str) -> usize {
    let path = format!("/{VPG}/requests/{id}/status");
    gate.fal_saw()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

/// Submits until one is admitted (bounded), returning its request id; every refusal before is
/// falgate's own 429 for want of a slot.
async fn submit_until_admitted(gate: &TestGate, proxy: bool) -> String {
    for _ in 0..200 {
        let response = submit(gate, proxy).await;
        if response.status() == 200 {
            let body: serde_json::Value = response.json().await.unwrap();
            return body["request_id"].as_str().unwrap().to_owned();
        }
        gate.assert_refused(response, 429, "concurrency_limited").await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the slot was never freed");
}

#[tokio::test]
async fn a_cancel_fal_accepted_keeps_the_slot_while_the_job_still_runs() {
    for proxy in [false, true] {
        // Jobs run a minute: fal takes the cancel of a running job as a request, and the app
        // may go on for a while (the fault answers 202 and leaves the job running).
        let gate = TestGate::builder().config(ONE_JOB).job_ms(0, 60_000).spawn().await;
        gate.fault(
            Op::Cancel,
            FaultAction::Status {
                status: 202,
                body: json!({"status": "CANCELLATION_REQUESTED"}),
                headers: Vec::new(),
            },
        );
        let id = submitted(&gate, proxy).await;
        let cancel = call(&gate, "alice", proxy, Method::PUT, &format!("/requests/{id}/cancel")).await;
        assert_eq!(cancel.status(), 202);
        let again = submit(&gate, proxy).await;
        gate.assert_refused(again, 429, "concurrency_limited").await;
        assert_eq!(
            submits_fal_saw(&gate),
            1,
            "the refused submit reached fal (proxy: {proxy})"
        );
        let status: serde_json::Value = call(&gate, "alice", proxy, Method::GET, &format!("/requests/{id}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(status["status"], "IN_PROGRESS", "the job still runs in fal");
        // fal now really cancels it: the cancel itself frees nothing, the status that shows
        // the end (COMPLETED, request_cancelled) does.
        gate.emulator.clear_faults();
        let cancel = call(&gate, "alice", proxy, Method::PUT, &format!("/requests/{id}/cancel")).await;
        assert_eq!(cancel.status(), 202);
        gate.assert_refused(submit(&gate, proxy).await, 429, "concurrency_limited")
            .await;
        let status: serde_json::Value = call(&gate, "alice", proxy, Method::GET, &format!("/requests/{id}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(status["status"], "COMPLETED");
        assert_eq!(submit(&gate, proxy).await.status(), 200, "proxy: {proxy}");
    }
}

#[tokio::test]
async fn a_cancel_fal_answers_already_completed_frees_the_slot() {
    let gate = TestGate::builder().config(ONE_JOB).job_ms(0, 60_000).spawn().await;
    let id = submitted(&gate, false).await;
    gate.fault(
        Op::Cancel,
        FaultAction::Status {
            status: 400,
            body: json!({"status": "ALREADY_COMPLETED"}),
            headers: Vec::new(),
        },
    );
    let cancel = call(&gate, "alice", true, Method::PUT, &format!("/requests/{id}/cancel")).await;
    assert_eq!(cancel.status(), 400);
    assert_eq!(submit(&gate, true).await.status(), 200);
}

/// A job that ends in fal while nobody polls it frees its slot after a reconcile pass.
async fn an_unpolled_job_that_ended_frees_its_slot(gate: TestGate) {
    // Each job ends in fal about 60 ms after its submit; nobody polls it.
    let mut id = submitted(&gate, false).await;
    for proxy in [false, true] {
        let next = submit_until_admitted(&gate, proxy).await;
        assert!(status_calls_fal_saw(&gate, &id) >= 1, "freed without asking fal");
        id = next;
    }
    assert_eq!(submits_fal_saw(&gate), 3, "a refused submit reached fal");
}

#[tokio::test]
async fn in_process_a_job_that_ends_unpolled_frees_its_slot_after_a_reconcile_pass() {
    let mut builder = TestGate::builder().config(ONE_JOB).job_ms(20, 40);
    for (name, value) in RECONCILE_QUICKLY {
        builder = builder.env(name, value);
    }
    an_unpolled_job_that_ended_frees_its_slot(builder.spawn().await).await;
}

#[tokio::test]
async fn with_redis_a_job_that_ends_unpolled_frees_its_slot_after_a_reconcile_pass() {
    let prefix = format!("it-reconcile-{}", uuid::Uuid::new_v4());
    let mut builder = TestGate::builder()
        .config(ONE_JOB)
        .job_ms(20, 40)
        .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
        .env("FALGATE_REDIS__KEY_PREFIX", &prefix);
    for (name, value) in RECONCILE_QUICKLY {
        builder = builder.env(name, value);
    }
    an_unpolled_job_that_ended_frees_its_slot(builder.spawn().await).await;
}

#[tokio::test]
async fn the_reconciler_keeps_the_slot_of_a_job_still_running() {
    let mut builder = TestGate::builder().config(ONE_JOB).job_ms(0, 60_000);
    for (name, value) in RECONCILE_QUICKLY {
        builder = builder.env(name, value);
    }
    let gate = builder.spawn().await;
    let id = submitted(&gate, false).await;
    for _ in 0..200 {
        if status_calls_fal_saw(&gate, &id) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(status_calls_fal_saw(&gate, &id) >= 3, "the reconciler never asked fal");
    gate.assert_refused(submit(&gate, true).await, 429, "concurrency_limited")
        .await;
    assert_eq!(submits_fal_saw(&gate), 1);
}
