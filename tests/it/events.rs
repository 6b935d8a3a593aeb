//! `GET /api/fal/requests` and `GET /api/fal/events` on real servers: only ever the caller's
//! own requests and events, across replicas on one Redis, resumed by `Last-Event-ID`, bounded
//! by the stream caps.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{wait_completed, TestGate, VPG};

/// One server-sent event.
#[derive(Debug, Clone)]
struct Frame {
    id: String,
    event: String,
    data: Value,
}

/// An open event stream, read frame by frame.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    /// Opens the stream as `sub` (optionally resuming after `last`) and waits for its `: ok`.
    async fn open(gate: &TestGate, sub: &str, last: Option<&str>) -> Self {
        let mut request = gate
            .client
            .get(format!("{}/api/fal/events", gate.url))
            .bearer_auth(gate.token(sub));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut events = Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        };
        assert_eq!(events.next_block().await, ": ok", "the stream opens subscribed");
        events
    }

    /// The next block (up to a blank line), bounded.
    async fn next_block(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block = self.buffer[..end].to_owned();
                    self.buffer.drain(..end + 2);
                    return block;
                }
                let chunk = self.body.next().await.expect("the stream is open").unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("a block within 10 s")
    }

    /// The next event, keepalive comments skipped.
    async fn next(&mut self) -> Frame {
        loop {
            let block = self.next_block().await;
            if block.starts_with(':') {
                continue;
            }
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                    .unwrap_or_default()
                    .to_owned()
            };
            return Frame {
                id: field("id"),
                event: field("event"),
                data: serde_json::from_str(&field("data")).unwrap(),
            };
        }
    }
}

async fn list(gate: &TestGate, sub: &str, query: &str) -> reqwest::Response {
    gate.client
        .get(format!("{}/api/fal/requests{query}", gate.url))
        .bearer_auth(gate.token(sub))
        .send()
        .await
        .unwrap()
}

async fn listed(gate: &TestGate, sub: &str, query: &str) -> Value {
    let response = list(gate, sub, query).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn submit_echo(gate: &TestGate, sub: &str) -> String {
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/fal-ai/echo", gate.url))
        .bearer_auth(gate.token(sub))
        .json(&json!({"anything": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_listing_shows_only_the_callers_own_requests_newest_first_with_links() {
    let gate = TestGate::spawn().await;
    let first = gate.submit("alice", json!({"input_concept": "one"})).await;
    let echo = submit_echo(&gate, "alice").await;
    let third = gate.submit("alice", json!({"input_concept": "three"})).await;
    let bobs = gate.submit("bob", json!({"input_concept": "bob's"})).await;
    let page = listed(&gate, "alice", "").await;
    assert_eq!(ids(&page), [third.clone(), echo.clone(), first.clone()]);
    assert_eq!(page["next_cursor"], Value::Null);
    let newest = &page["requests"][0];
    assert_eq!(newest["endpoint"], VPG);
    assert_eq!(newest["status"], "IN_QUEUE");
    assert_eq!(newest["completed_at"], Value::Null);
    assert!(newest["submitted_at"].as_str().unwrap().ends_with('Z'));
    let request = format!("{}/api/fal/queue/{VPG}/requests/{third}", gate.url);
    assert_eq!(newest["response_url"], request.as_str());
    assert_eq!(newest["status_url"], format!("{request}/status").as_str());
    // Bob sees his own only; carol, who submitted nothing, sees none.
    assert_eq!(ids(&listed(&gate, "bob", "").await), [bobs]);
    assert!(ids(&listed(&gate, "carol", "").await).is_empty());
    // Once alice polled her first to its end, the listing says so.
    wait_completed(&gate, &first).await;
    let page = listed(&gate, "alice", "").await;
    let ended = &page["requests"][2];
    assert_eq!(
        (ended["request_id"].as_str(), ended["status"].as_str()),
        (Some(&*first), Some("COMPLETED"))
    );
    assert_eq!(ended["outcome"], "ok");
    assert!(ended["completed_at"].is_string());
}

#[tokio::test]
async fn the_listing_pages_by_limit_and_cursor_and_filters_by_endpoint() {
    let gate = TestGate::spawn().await;
    let mut submitted = Vec::new();
    for n in 0..3 {
        submitted.push(gate.submit("alice", json!({"input_concept": format!("n{n}")})).await);
    }
    let echo = submit_echo(&gate, "alice").await;
    let first = listed(&gate, "alice", "?limit=2").await;
    assert_eq!(ids(&first), [echo.clone(), submitted[2].clone()]);
    let cursor = first["next_cursor"].as_str().expect("more to come").to_owned();
    let second = listed(&gate, "alice", &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), [submitted[1].clone(), submitted[0].clone()]);
    assert_eq!(second["next_cursor"], Value::Null);
    let only_echo = listed(&gate, "alice", "?endpoint=fal-ai/echo").await;
    assert_eq!(ids(&only_echo), [echo]);
    let only_vpg = listed(&gate, "alice", &format!("?endpoint={VPG}&limit=100")).await;
    assert_eq!(ids(&only_vpg).len(), 3);
    // Another caller's cursor is just a position: it shows bob nothing of alice's.
    assert!(ids(&listed(&gate, "bob", &format!("?cursor={cursor}")).await).is_empty());
}

#[tokio::test]
async fn bad_listing_parameters_are_refused_with_the_contracts_json_and_reach_nothing() {
    let gate = TestGate::spawn().await;
    for query in [
        "?limit=0",
        "?limit=101",
        "?limit=ten",
        "?limit=1&limit=2",
        "?endpoint=../etc",
        "?cursor=not-a-cursor",
        "?page=2",
    ] {
        let response = list(&gate, "alice", query).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.headers()["x-falgate-error"], "malformed_request", "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "malformed_request", "{query}");
    }
    let anonymous = gate
        .client
        .get(format!("{}/api/fal/requests", gate.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn the_owner_sees_submitted_then_finished_and_another_caller_never_does() {
    let gate = TestGate::spawn().await;
    let mut alice = Events::open(&gate, "alice", None).await;
    let mut bob = Events::open(&gate, "bob", None).await;
    let id = gate.submit("alice", json!({"input_concept": "a lighthouse"})).await;
    let submitted = alice.next().await;
    assert_eq!(submitted.event, "submitted");
    assert_eq!(submitted.data["request_id"], id.as_str());
    assert_eq!(submitted.data["endpoint"], VPG);
    assert_eq!(submitted.data["status"], "IN_QUEUE");
    let request = format!("{}/api/fal/queue/{VPG}/requests/{id}", gate.url);
    assert_eq!(submitted.data["response_url"], request.as_str());
    assert_eq!(submitted.data["status_url"], format!("{request}/status").as_str());
    wait_completed(&gate, &id).await;
    let finished = alice.next().await;
    assert_eq!(
        (finished.event.as_str(), &finished.data["request_id"]),
        ("finished", &json!(id))
    );
    assert_eq!(finished.data["status"], "COMPLETED");
    assert_eq!(finished.data["outcome"], "ok");
    // Polling it again is no news: the next event alice sees is her next submit's.
    wait_completed(&gate, &id).await;
    let next = gate.submit("alice", json!({"input_concept": "again"})).await;
    assert_eq!(alice.next().await.data["request_id"], next.as_str());
    // Bob's stream saw none of it: its first event is his own submit.
    let his = gate.submit("bob", json!({"input_concept": "bob's"})).await;
    let first = bob.next().await;
    assert_eq!(
        (first.event.as_str(), &first.data["request_id"]),
        ("submitted", &json!(his))
    );
}

#[tokio::test]
async fn last_event_id_resumes_from_the_callers_history() {
    let gate = TestGate::spawn().await;
    let mut alice = Events::open(&gate, "alice", None).await;
    let id = gate.submit("alice", json!({"input_concept": "a lighthouse"})).await;
    let submitted = alice.next().await;
    wait_completed(&gate, &id).await;
    let finished = alice.next().await;
    drop(alice);
    let mut resumed = Events::open(&gate, "alice", Some(&submitted.id)).await;
    let again = resumed.next().await;
    assert_eq!(
        (again.id.as_str(), again.event.as_str()),
        (finished.id.as_str(), "finished")
    );
    // Bob resuming from alice's ids gets nothing of hers: his own submit comes first.
    let mut bob = Events::open(&gate, "bob", Some("0-0")).await;
    let his = gate.submit("bob", json!({"input_concept": "bob's"})).await;
    assert_eq!(bob.next().await.data["request_id"], his.as_str());
    let malformed = gate
        .as_alice(Method::GET, "/api/fal/events")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.headers()["x-falgate-error"], "malformed_request");
}

#[tokio::test]
async fn an_event_published_on_one_gate_reaches_a_stream_on_another_through_redis() {
    let prefix = format!("it-events-{}", uuid::Uuid::new_v4());
    let on_redis = |builder: crate::support::Builder| {
        builder
            .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
            .env("FALGATE_REDIS__KEY_PREFIX", &prefix)
            .env("FALGATE_EVENTS__FEED_POLL_MS", "50")
            // Keepalives (which also re-read the history) far apart: the feed must wake B.
            .env("FALGATE_UPSTREAM__IDLE_TIMEOUT_MS", "120000")
    };
    let a = on_redis(TestGate::builder()).spawn().await;
    let b = on_redis(TestGate::builder().share_fal(&a)).spawn().await;
    let mut on_b = Events::open(&b, "alice", None).await;
    let mut bob_on_b = Events::open(&b, "bob", None).await;
    let id = a.submit("alice", json!({"input_concept": "a lighthouse"})).await;
    let submitted = on_b.next().await;
    assert_eq!(
        (submitted.event.as_str(), &submitted.data["request_id"]),
        ("submitted", &json!(id))
    );
    // Links are the stream's own gate's.
    assert!(submitted.data["status_url"].as_str().unwrap().starts_with(&b.url));
    wait_completed(&a, &id).await;
    assert_eq!(on_b.next().await.event, "finished");
    // B lists what A recorded, for alice only.
    assert_eq!(ids(&listed(&b, "alice", "").await), [id]);
    assert!(ids(&listed(&b, "bob", "").await).is_empty());
    let his = a.submit("bob", json!({"input_concept": "bob's"})).await;
    assert_eq!(bob_on_b.next().await.data["request_id"], his.as_str());
}

#[tokio::test]
async fn the_event_stream_takes_one_of_the_callers_stream_slots_and_ends_at_its_lifetime() {
    let gate = TestGate::builder()
        .config("[limits]\nstreams_per_caller = 1\n")
        .env("FALGATE_UPSTREAM__MAX_STREAM_LIFETIME_MS", "300")
        .spawn()
        .await;
    let mut held = Events::open(&gate, "alice", None).await;
    let refused = gate.get_as_alice("/api/fal/events").await;
    gate.assert_refused(refused, 429, "concurrency_limited").await;
    // Bob has a slot of his own.
    let _bob = Events::open(&gate, "bob", None).await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
    // At its lifetime the stream ends cleanly (the client reconnects with Last-Event-ID)...
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = held.body.next().await {
            chunk.expect("a clean end, not an error");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its lifetime");
    // ...and its slot is free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = gate.get_as_alice("/api/fal/events").await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the ended stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_status_stream_that_shows_the_end_sends_the_finished_event() {
    let gate = TestGate::spawn().await;
    let mut alice = Events::open(&gate, "alice", None).await;
    let id = gate
        .submit("alice", json!({"input_concept": "streamed to its end"}))
        .await;
    assert_eq!(alice.next().await.event, "submitted");
    let stream = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status/stream"))
        .await;
    assert_eq!(stream.status(), 200);
    let relayed = String::from_utf8(stream.bytes().await.unwrap().to_vec()).unwrap();
    assert!(relayed.contains("COMPLETED"), "{relayed}");
    let finished = alice.next().await;
    assert_eq!(
        (finished.event.as_str(), &finished.data["request_id"]),
        ("finished", &json!(id))
    );
    assert_eq!(finished.data["outcome"], "ok");
    let polls = gate
        .fal_saw()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/status"))
        .count();
    assert_eq!(polls, 0, "the end came from the stream, not a poll");
}

/// fal's verified webhook delivery (the emulator signs and delivers when a job ends) is how the
/// owner's stream and listing learn the end, without any poll; never another caller's stream.
#[tokio::test]
async fn a_verified_webhook_delivery_sends_the_finished_event_without_any_poll() {
    let gate = TestGate::builder()
        .own_public_url()
        .config("[webhooks]\nreceive = true\nfal_user_id = \"emulator-user\"\n[limits]\nreconcile_interval_ms = 0\n")
        .spawn()
        .await;
    let mut alice = Events::open(&gate, "alice", None).await;
    let mut bob = Events::open(&gate, "bob", None).await;
    let id = gate
        .submit("alice", json!({"input_concept": "told by fal's webhook"}))
        .await;
    assert_eq!(alice.next().await.event, "submitted");
    let finished = alice.next().await;
    assert_eq!(
        (finished.event.as_str(), &finished.data["request_id"]),
        ("finished", &json!(id))
    );
    assert_eq!(finished.data["outcome"], "ok");
    let polls = gate
        .fal_saw()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/requests/"))
        .count();
    assert_eq!(polls, 0, "the end came from the webhook, not a poll");
    let listed = listed(&gate, "alice", "").await;
    assert_eq!(listed["requests"][0]["status"], "COMPLETED");
    let his = gate.submit("bob", json!({"input_concept": "bob's"})).await;
    assert_eq!(bob.next().await.data["request_id"], his.as_str());
}

/// Issue 24's two-replica case: fal's webhook reaches gate A (the submit's hook), the owner's
/// stream is on gate B; B learns of the end through the one Redis, without any poll, and
/// another caller's stream on B never sees it.
#[tokio::test]
async fn a_webhook_received_by_one_gate_reaches_the_owners_stream_on_another() {
    let prefix = format!("it-events-hook-{}", uuid::Uuid::new_v4());
    let on_redis = |builder: crate::support::Builder| {
        builder
            .own_public_url()
            .config(
                "[webhooks]\nreceive = true\nfal_user_id = \"emulator-user\"\n[limits]\nreconcile_interval_ms = 0\n",
            )
            .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
            .env("FALGATE_REDIS__KEY_PREFIX", &prefix)
            .env("FALGATE_EVENTS__FEED_POLL_MS", "50")
            // Keepalives (which also re-read the history) far apart: the feed must wake B.
            .env("FALGATE_UPSTREAM__IDLE_TIMEOUT_MS", "120000")
    };
    let a = on_redis(TestGate::builder()).spawn().await;
    let b = on_redis(TestGate::builder().share_fal(&a)).spawn().await;
    let mut alice_on_b = Events::open(&b, "alice", None).await;
    let mut bob_on_b = Events::open(&b, "bob", None).await;
    let id = a.submit("alice", json!({"input_concept": "told to A by fal"})).await;
    assert_eq!(alice_on_b.next().await.event, "submitted");
    let finished = alice_on_b.next().await;
    assert_eq!(
        (
            finished.event.as_str(),
            &finished.data["request_id"],
            &finished.data["outcome"]
        ),
        ("finished", &json!(id), &json!("ok"))
    );
    let polls = a
        .fal_saw()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/requests/"))
        .count();
    assert_eq!(polls, 0, "the end came from the webhook, not a poll");
    // Bob's stream on B carries his own submission first: nothing of alice's came before it.
    let his = a.submit("bob", json!({"input_concept": "bob's"})).await;
    let first = bob_on_b.next().await;
    assert_eq!(
        (first.event.as_str(), &first.data["request_id"]),
        ("submitted", &json!(his))
    );
}
