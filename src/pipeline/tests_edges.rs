//! Pipeline edges found by mutation testing (TESTING.md, round 2): a run whose caller goes away
//! frees its slot at once, and a relayed status stream that shows the end tells the owner's
//! events. Driven through [`handle`] against the fal emulator on `127.0.0.1:0`.

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::json;

use super::tests::{caller, fixture, Fixture};
use super::*;
use crate::emulator::{Fault, FaultAction};
use crate::fal::{EndpointId, FalRequestId};

const ECHO: &str = "fal-ai/echo";
/// A sync-run endpoint (the base config's).
const VPG: &str = "fal-ai/video-prompt-generator";

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn submitted(fx: &Fixture, who: &str) -> Result<String, &'static str> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let call = Call {
        op: Op::Submit {
            endpoint: EndpointId::parse(ECHO).unwrap(),
            webhook: None,
        },
    };
    let body = Body::from(json!({"n": 1}).to_string());
    let response = handle(&fx.gate, caller(who, fx.tier), call, &headers, body)
        .await
        .map_err(|err| err.code())?;
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    Ok(answer["request_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_run_whose_caller_went_away_frees_its_slot_at_once() {
    let fx = fixture(0, "max_inflight_jobs = 1").await;
    fx.fal.add_fault(Fault {
        op: Some(crate::emulator::Op::Run),
        path_contains: None,
        action: FaultAction::Stall { ms: 60_000 },
        times: Some(1),
    });
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let call = Call {
        op: Op::Run {
            endpoint: EndpointId::parse(VPG).unwrap(),
        },
    };
    let body = Body::from(json!({"input_concept": "a lighthouse"}).to_string());
    let mut run = Box::pin(handle(&fx.gate, caller("alice", fx.tier), call, &headers, body));
    tokio::select! {
        answer = &mut run => panic!("fal answered a stalled run: {:?}", answer.map(drop)),
        () = until("fal saw the run", || !fx.fal.requests().is_empty()) => {}
    }
    assert_eq!(
        submitted(&fx, "alice").await,
        Err("concurrency_limited"),
        "the run holds the slot"
    );
    // The caller goes away: its request's future is dropped while fal still runs the job.
    drop(run);
    submitted(&fx, "alice")
        .await
        .expect("the slot was freed when the caller went away");
}

#[tokio::test]
async fn a_status_stream_that_shows_the_end_tells_the_owners_events() {
    let fx = fixture(0, "").await;
    let id = submitted(&fx, "alice").await.unwrap();
    let alice = caller("alice", fx.tier);
    let tag = crate::redis::tag_of(&alice.principal());
    let call = Call {
        op: Op::StatusStream {
            app: EndpointId::parse(ECHO).unwrap().app(),
            id: FalRequestId::parse(&id).unwrap(),
            logs: false,
        },
    };
    let response = handle(&fx.gate, alice, call, &HeaderMap::new(), Body::empty())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("\"COMPLETED\""),
        "the stream is relayed as fal sent it: {text}"
    );
    let events = fx.gate.events.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let history = events.since(&tag, crate::events::EventId::ZERO).await.unwrap();
        let kinds: Vec<_> = history.iter().map(|e| e.body.kind.as_str()).collect();
        if kinds == ["submitted", "finished"] {
            assert_eq!(history[1].body.request_id, id);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no finished event: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stand-in fal on `127.0.0.1:0`: a submit to `fal-ai/echo` answered with request `ID`, and
/// that request's status stream answered 500 with an event-stream body that says `COMPLETED`.
async fn fal_erring_in_a_stream(id: &'static str) -> String {
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route(
            "/fal-ai/echo",
            post(move || async move { axum::Json(json!({"request_id": id, "status": "IN_QUEUE"})) }),
        )
        .route(
            "/fal-ai/echo/requests/{id}/status/stream",
            get(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [("content-type", "text/event-stream")],
                    "data: {\"status\": \"COMPLETED\"}\n\n",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Only a status stream fal answered 2xx is read for the job's end: an error answer is relayed
/// as it is, and whatever it says tells no one.
#[tokio::test]
async fn a_status_stream_fal_answered_with_an_error_tells_no_one() {
    const ID: &str = "00000000-0000-4000-8000-000000000042";
    let queue = fal_erring_in_a_stream(ID).await;
    let fx = super::tests::fixture_with_queue(0, "", Some(&queue)).await;
    assert_eq!(submitted(&fx, "alice").await.as_deref(), Ok(ID));
    let alice = caller("alice", fx.tier);
    let tag = crate::redis::tag_of(&alice.principal());
    let call = Call {
        op: Op::StatusStream {
            app: EndpointId::parse(ECHO).unwrap().app(),
            id: FalRequestId::parse(ID).unwrap(),
            logs: false,
        },
    };
    let response = handle(&fx.gate, alice, call, &HeaderMap::new(), Body::empty())
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    assert!(
        String::from_utf8_lossy(&bytes).contains("COMPLETED"),
        "relayed as fal sent it"
    );
    // A watcher would have told the events from a task of this (current-thread) runtime.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let history = fx.gate.events.since(&tag, crate::events::EventId::ZERO).await.unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.body.kind.as_str()).collect();
    assert_eq!(kinds, ["submitted"]);
}

/// On Redis, a call refused for its input gives its early admission back before the refusal is
/// answered (`give_back`): the caller's next call, sent at once, finds the one submit its rate
/// allows. Left to the admission's drop guard, the give-back would be a task spawned as the
/// refusal is answered, reaching Redis after that next call's admission.
#[tokio::test]
async fn on_redis_an_input_refused_gives_its_early_admission_back_before_answering() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let mut fx = fixture(
        0,
        &format!(
            "[limits.tiers.slow]\nsubmit = {{ burst = 1, per_minute = 1 }}\n\
             [redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
        ),
    )
    .await;
    fx.tier = "slow";
    assert_eq!(fx.gate.limiter.store_mode(), "single", "the limits are in Redis");
    for _ in 0..3 {
        let refused = fx.submit_body("alice", json!("not an object")).await;
        assert_eq!(refused.unwrap_err(), "validation_failed");
    }
    fx.submitted("alice").await;
    assert_eq!(
        fx.submit("alice").await.unwrap_err(),
        "rate_limited",
        "the rate is one submit"
    );
}

/// A submit fal accepted with falgate's hook is recorded for the webhook receiver with whose
/// limits it spent and what: the caller's tag and the day's credits it took, which a delivery
/// frees and, for a job fal failed on its side, refunds (`webhooks::apply`).
#[tokio::test]
async fn a_hooked_submit_is_recorded_with_the_callers_tag_and_its_spend() {
    let fx = super::tests::fixture_with(
        0,
        "daily_credits = 50\n[webhooks]\nreceive = true\nfal_user_id = \"emulator-user\"\n",
        None,
        &[("FALGATE_PUBLIC_URL", "https://gate.example")],
    )
    .await;
    let today = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        i64::try_from(now.as_secs() / 86_400).unwrap()
    };
    let before = today();
    let id = submitted(&fx, "alice").await.unwrap();
    let after = today();
    let job = fx
        .gate
        .webhooks
        .job(&FalRequestId::parse(&id).unwrap())
        .await
        .expect("the submit is recorded for the receiver");
    let alice = caller("alice", fx.tier);
    assert_eq!(job.tag, crate::redis::tag_of(&alice.principal()));
    assert_eq!(job.app, "fal-ai/echo");
    let spend = job.spend.expect("the tier counts credits: the spend is recorded");
    assert_eq!(spend.credits, 1);
    assert!((before..=after).contains(&spend.day), "{spend:?} on day {before}");
}
