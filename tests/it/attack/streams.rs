//! Streams and buffered answers held by one caller: hoarding status streams, streams that
//! outlive their cap, and clients that stop reading a stream or a large result.

use std::time::Duration;

use falgate::emulator::{Fault, FaultAction, Op};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{assert_refused, connect, request_head, slow_fal, Gate, DEADLINE};
use crate::support::VPG;

/// A `[limits]` section with `caps` and generous rates, so only the caps under test refuse.
fn limits(caps: &str) -> String {
    format!(
        r#"
[limits]
default_tier = "default"
{caps}
[limits.tiers.default]
submit = {{ burst = 100, per_minute = 6000 }}
poll = {{ burst = 1000, per_minute = 60000 }}
"#
    )
}

fn stream_url(gate: &Gate, id: &str) -> String {
    format!("{}/api/fal/queue/{VPG}/requests/{id}/status/stream", gate.url)
}

/// Opens a status stream as `sub` and returns the response (not yet read past its first event).
async fn open_stream(gate: &Gate, sub: &str, id: &str) -> reqwest::Response {
    gate.client
        .get(stream_url(gate, id))
        .bearer_auth(gate.token(sub))
        .send()
        .await
        .unwrap()
}

/// Opens a stream that must be served, and waits for its first event.
async fn held_stream(gate: &Gate, sub: &str, id: &str) -> reqwest::Response {
    let mut response = open_stream(gate, sub, id).await;
    assert_eq!(response.status(), 200, "{sub}'s stream was refused");
    assert!(
        response.chunk().await.unwrap().is_some(),
        "{sub}'s stream ended at once"
    );
    response
}

/// Retries `open` until it is served, failing past the deadline.
async fn served_eventually(gate: &Gate, sub: &str, id: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = open_stream(gate, sub, id).await;
        if response.status() == 200 {
            return response;
        }
        assert_eq!(response.status(), 429, "{sub}'s stream");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sub}'s stream slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One caller holds at most `streams_per_caller` streams, the replica at most `max_streams`;
/// past either, 429 `concurrency_limited`; a closed stream frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_hoard_streams() {
    let gate = Gate::start(&limits("streams_per_caller = 3\nmax_streams = 4"), slow_fal()).await;
    let alice_job = gate.submit("alice").await;
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(held_stream(&gate, "alice", &alice_job).await);
    }
    let fourth = open_stream(&gate, "alice", &alice_job).await;
    assert_refused(fourth, 429, "concurrency_limited").await;

    // Another caller is served: a stream of bob's own, the replica's fourth.
    let bob_job = gate.submit("bob").await;
    let _bob = held_stream(&gate, "bob", &bob_job).await;
    // The replica is at max_streams: carol, with none of her own, waits for a slot.
    let carol_job = gate.submit("carol").await;
    let refused = open_stream(&gate, "carol", &carol_job).await;
    assert_refused(refused, 429, "concurrency_limited").await;

    drop(alice.pop());
    let mut carol = served_eventually(&gate, "carol", &carol_job).await;
    assert!(carol.chunk().await.unwrap().is_some());
    gate.assert_memory_bounded("stream hoarding").await;
}

/// A stream whose job never ends is ended cleanly by the gate at `max_stream_lifetime_ms` (the
/// fal client then polls again). The client has no total timeout, and only a clean end before
/// the deadline passes: an error (a reset, the watchdog's cut) fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lifetime_is_capped() {
    let gate = Gate::start("[upstream]\nmax_stream_lifetime_ms = 1000\n", slow_fal()).await;
    let job = gate.submit("alice").await;
    let untimed = reqwest::Client::new();
    let mut stream = untimed
        .get(stream_url(&gate, &job))
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("a stream of a job that never ends is still open after {DEADLINE:?}"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(err)) => panic!("the stream ended in an error, not cleanly: {err}"),
        }
    }
    gate.submit("bob").await;
}

/// A client that opens a status stream and stops reading is disconnected after the write
/// timeout, and its stream slot is released (the caller may hold only one). fal's stream here
/// is one 8 MB answer, so the kernel's send buffer (autotuned to ~3 MB on loopback) fills at
/// once; a stream of small events takes tens of seconds to fill it before any write blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_disconnected() {
    let gate = Gate::start(
        &format!(
            "{}[connections]\nwrite_timeout_ms = 1000\n",
            limits("streams_per_caller = 1")
        ),
        slow_fal(),
    )
    .await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::StatusStream),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "logs": "l".repeat(8 * 1024 * 1024) }),
            headers: Vec::new(),
        },
        times: Some(1),
    });
    let job = gate.submit("alice").await;
    let mut stuck = connect(gate.addr, Some(4096)).await;
    let path = format!("/api/fal/queue/{VPG}/requests/{job}/status/stream");
    let head = request_head("GET", &path, Some(&gate.token("alice")), "");
    stuck.write_all(head.as_bytes()).await.unwrap();
    let client = stuck.local_addr().unwrap();
    gate.wait_blocked_on(client, "a stream nobody reads").await;
    gate.submit("bob").await;
    gate.wait_released(client, "a stream nobody reads").await;
    let _again = served_eventually(&gate, "alice", &job).await;
    gate.assert_memory_bounded("a stream nobody reads").await;
    drop(stuck);
}

/// A client that stops reading an 8 MB result is disconnected after the write timeout; while it
/// holds the caller's one relay slot, a second result for that caller is refused with 429;
/// afterwards the slot is free and memory settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_result_is_disconnected() {
    let gate = Gate::start(
        &format!(
            "{}[connections]\nwrite_timeout_ms = 1000\n",
            limits("relays_per_caller = 1")
        ),
        slow_fal(),
    )
    .await;
    let big = "v".repeat(8 * 1024 * 1024);
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "prompt": big }),
            headers: Vec::new(),
        },
        times: None,
    });
    let job = gate.submit("alice").await;
    let path = format!("/api/fal/queue/{VPG}/requests/{job}");
    let mut stuck = connect(gate.addr, Some(4096)).await;
    let head = request_head("GET", &path, Some(&gate.token("alice")), "");
    stuck.write_all(head.as_bytes()).await.unwrap();
    let client = stuck.local_addr().unwrap();
    gate.wait_blocked_on(client, "a result nobody reads").await;

    let result = |sub: &str| {
        gate.client
            .get(format!("{}{path}", gate.url))
            .bearer_auth(gate.token(sub))
            .send()
    };
    assert_refused(result("alice").await.unwrap(), 429, "concurrency_limited").await;
    gate.submit("bob").await;
    gate.wait_released(client, "a result nobody reads").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let answer = loop {
        let response = result("alice").await.unwrap();
        if response.status() == 200 {
            break response.bytes().await.unwrap();
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's relay slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(answer.len() > 8 * 1024 * 1024, "{} bytes", answer.len());
    drop(answer);
    gate.assert_memory_bounded("a result nobody reads").await;
    drop(stuck);
}

/// Twelve callers whose clients each stop reading an 8 MB result: the answers held for them
/// stay within `upstream.buffer_budget_bytes` (16 MiB here; past it they are streamed through),
/// and every connection is dropped after the write timeout. Without the budget all twelve are
/// held (~100 MB); with it the gate grows by the budget plus one answer being read (~35-50 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_nobody_reads_stay_within_the_buffer_budget() {
    const CLIENTS: usize = 12;
    let gate = Gate::start(
        // A write timeout long enough that all twelve are held at once.
        "[upstream]\nbuffer_budget_bytes = 16777216\n[connections]\nwrite_timeout_ms = 8000\n",
        slow_fal(),
    )
    .await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "prompt": "v".repeat(8 * 1024 * 1024) }),
            headers: Vec::new(),
        },
        times: None,
    });
    let before = gate.memory();
    let mut stuck = Vec::new();
    for i in 0..CLIENTS {
        let caller = format!("reader-{i}");
        let job = gate.submit(&caller).await;
        let mut stream = connect(gate.addr, Some(4096)).await;
        let path = format!("/api/fal/queue/{VPG}/requests/{job}");
        let head = request_head("GET", &path, Some(&gate.token(&caller)), "");
        stream.write_all(head.as_bytes()).await.unwrap();
        stuck.push(stream);
    }
    for stream in &stuck {
        gate.wait_blocked_on(stream.local_addr().unwrap(), "a result nobody reads")
            .await;
    }
    let grown_mb = gate.memory().peak_kb.saturating_sub(before.rss_kb) / 1024;
    assert!(
        grown_mb < 64,
        "{CLIENTS} unread 8 MB results grew the gate by {grown_mb} MB over a 16 MiB buffer budget"
    );
    gate.submit("bob").await;
    for stream in &stuck {
        gate.wait_released(stream.local_addr().unwrap(), "a result nobody reads")
            .await;
    }
    gate.assert_memory_bounded("results nobody reads").await;
}
