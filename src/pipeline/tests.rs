//! The pipeline's bookkeeping driven straight through [`handle`], against the fal emulator on
//! `127.0.0.1:0` (mutation testing measures the unit tests only, so these pin in the lib what
//! `tests/it` also checks over HTTP): which answer of fal holds, frees or refunds a caller's job
//! slot and spend, the ownership check before anything reaches fal, the idempotency key, and the
//! pure mappings (operation class, relay slot, key syntax).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::config::{Config, FalCredentials};
use crate::emulator::{Emulator, EmulatorConfig, Fault, FaultAction, RecordedRequest};
use crate::fal::{AppId, EndpointId, FalRequestId};
use crate::limits::{OpClass, SlotKind};

const ECHO: &str = "fal-ai/echo";
/// A sync-run endpoint.
const VPG: &str = "fal-ai/video-prompt-generator";

const BASE: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[auth]
hs256_secret = "pipeline-tests-secret-0123456789abcdef"
[upstream]
connect_timeout_ms = 500
first_byte_timeout_ms = 2000
idle_timeout_ms = 2000
[endpoints."fal-ai/video-prompt-generator"]
sync_run = true
schema = "config/schemas/video-prompt-generator.json"
[endpoints."fal-ai/echo"]
sync_run = false
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
max_body_bytes = 64
[limits]
default_tier = "default"
[limits.tiers.default]
submit = { burst = 100, per_minute = 6000 }
poll = { burst = 100, per_minute = 6000 }
cancel = { burst = 100, per_minute = 6000 }
"#;

pub(super) struct Fixture {
    pub(super) gate: Gate,
    /// The tier of every caller.
    pub(super) tier: &'static str,
    pub(super) fal: Emulator,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A gate whose fal is an emulator finishing jobs after `job_ms`, with `tier` appended to the
/// default tier's table.
pub(super) async fn fixture(job_ms: u64, tier: &str) -> Fixture {
    fixture_with_queue(job_ms, tier, None).await
}

/// [`fixture`] with fal's queue host at `queue_url` when given (e.g. a closed port).
pub(super) async fn fixture_with_queue(job_ms: u64, tier: &str, queue_url: Option<&str>) -> Fixture {
    fixture_with(job_ms, tier, queue_url, &[]).await
}

/// [`fixture_with_queue`] with more `FALGATE_*` variables (e.g. `FALGATE_PUBLIC_URL`).
pub(super) async fn fixture_with(job_ms: u64, tier: &str, queue_url: Option<&str>, more: &[(&str, &str)]) -> Fixture {
    let fal = Emulator::new(EmulatorConfig {
        queue_ms: job_ms,
        progress_ms: 0,
        log_lines: 0,
        stream_interval_ms: 10,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::emulator::serve(listener, fal.clone(), async move {
        stopped.await.ok();
    }));
    let vars: HashMap<String, String> = [
        (
            "FALGATE_UPSTREAM__QUEUE_URL",
            queue_url.map_or_else(|| url.clone(), str::to_owned),
        ),
        ("FALGATE_UPSTREAM__RUN_URL", format!("{url}/fal.run")),
        ("FALGATE_UPSTREAM__STORAGE_URL", format!("{url}/rest.fal.ai")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .chain(
        more.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    )
    .collect();
    let config = Config::from_toml(&format!("{BASE}{tier}\n"), &vars).unwrap();
    let gate = Gate::new(config, &FalCredentials::new("fk-pipeline-test".into())).unwrap();
    Fixture {
        gate,
        tier: "default",
        fal,
        _stop: stop,
    }
}

pub(super) fn caller(subject: &str, tier: &str) -> Caller {
    Caller {
        issuer: "test".into(),
        subject: subject.into(),
        tier: tier.into(),
        scopes: Vec::new().into(),
    }
}

fn submit_to(endpoint: &str) -> Call {
    Call {
        op: Op::Submit {
            endpoint: EndpointId::parse(endpoint).unwrap(),
            webhook: None,
        },
    }
}

fn on_request(op: fn(AppId, FalRequestId) -> Op, id: &str) -> Call {
    Call {
        op: op(EndpointId::parse(ECHO).unwrap().app(), FalRequestId::parse(id).unwrap()),
    }
}

fn status(id: &str) -> Call {
    on_request(|app, id| Op::Status { app, id, logs: false }, id)
}

fn result(id: &str) -> Call {
    on_request(|app, id| Op::Result { app, id }, id)
}

fn cancel(id: &str) -> Call {
    on_request(|app, id| Op::Cancel { app, id }, id)
}

fn run(endpoint: &str) -> Call {
    Call {
        op: Op::Run {
            endpoint: EndpointId::parse(endpoint).unwrap(),
        },
    }
}

fn run_stream(endpoint: &str) -> Call {
    Call {
        op: Op::RunStream {
            endpoint: EndpointId::parse(endpoint).unwrap(),
        },
    }
}

/// A valid input of the video prompt generator.
fn vpg_input() -> Option<Value> {
    Some(json!({"input_concept": "a lighthouse"}))
}

/// An answer's status, headers and JSON body, or the code of the gate's refusal.
type Answered = Result<(u16, HeaderMap, Value), &'static str>;

impl Fixture {
    pub(super) async fn call(&self, who: &str, call: Call, headers: &HeaderMap, body: Option<Value>) -> Answered {
        let mut headers = headers.clone();
        let body = match body {
            Some(json) => {
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        match handle(&self.gate, caller(who, self.tier), call, &headers, body).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Ok((parts.status.as_u16(), parts.headers, json))
            }
            Err(err) => Err(err.code()),
        }
    }

    pub(super) async fn submit(&self, who: &str) -> Answered {
        self.submit_body(who, json!({"n": 1})).await
    }

    /// A submit to `fal-ai/echo` as `who` with `body`.
    pub(super) async fn submit_body(&self, who: &str, body: Value) -> Answered {
        self.call(who, submit_to(ECHO), &HeaderMap::new(), Some(body)).await
    }

    /// Submits as `who` and returns the request id fal gave.
    pub(super) async fn submitted(&self, who: &str) -> String {
        let (status, _, body) = self.submit(who).await.expect("admitted");
        assert_eq!(status, 200, "{body}");
        body["request_id"].as_str().expect("a request id").to_owned()
    }

    fn fal_saw(&self, method: &str) -> Vec<RecordedRequest> {
        self.fal.requests().into_iter().filter(|r| r.method == method).collect()
    }
}

fn fault(fx: &Fixture, op: crate::emulator::Op, action: FaultAction) {
    fx.fal.add_fault(Fault {
        op: Some(op),
        path_contains: None,
        action,
        times: Some(1),
    });
}

/// fal answers the next `op` with `status` (a JSON `detail`) instead of handling it.
fn fal_refuses(fx: &Fixture, op: crate::emulator::Op, status: u16) {
    let body = json!({"detail": "refused by the test"});
    let headers = Vec::new();
    fault(fx, op, FaultAction::Status { status, body, headers });
}

const ONE_JOB: &str = "max_inflight_jobs = 1";

#[tokio::test]
async fn a_submit_holds_its_slot_until_a_status_answer_says_completed() {
    let fx = fixture(0, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    assert_eq!(fx.submit("alice").await.unwrap_err(), "concurrency_limited");
    let (code, _, body) = fx.call("alice", status(&id), &HeaderMap::new(), None).await.unwrap();
    assert_eq!((code, body["status"].as_str()), (200, Some("COMPLETED")));
    fx.submitted("alice").await;
    assert_eq!(fx.fal_saw("POST").len(), 2, "the refused submit never reached fal");
}

#[tokio::test]
async fn a_status_answer_of_a_job_still_queued_keeps_the_slot() {
    let fx = fixture(60_000, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    let (code, _, body) = fx.call("alice", status(&id), &HeaderMap::new(), None).await.unwrap();
    assert_eq!((code, body["status"].as_str()), (200, Some("IN_QUEUE")));
    assert_eq!(fx.submit("alice").await.unwrap_err(), "concurrency_limited");
}

#[tokio::test]
async fn a_result_served_ends_the_job_and_one_not_ready_does_not() {
    let fx = fixture(60_000, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    let (code, ..) = fx.call("alice", result(&id), &HeaderMap::new(), None).await.unwrap();
    assert!(code >= 400, "a queued job has no result yet: {code}");
    assert_eq!(fx.submit("alice").await.unwrap_err(), "concurrency_limited");

    let fx = fixture(0, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    let (code, ..) = fx.call("alice", result(&id), &HeaderMap::new(), None).await.unwrap();
    assert_eq!(code, 200);
    fx.submitted("alice").await;
}

#[tokio::test]
async fn a_cancel_fal_accepts_keeps_the_slot_and_one_already_completed_frees_it() {
    let fx = fixture(60_000, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    let (code, ..) = fx.call("alice", cancel(&id), &HeaderMap::new(), None).await.unwrap();
    assert_eq!(code, 202);
    assert_eq!(fx.submit("alice").await.unwrap_err(), "concurrency_limited");

    let fx = fixture(0, ONE_JOB).await;
    let id = fx.submitted("alice").await;
    let (code, _, body) = fx.call("alice", cancel(&id), &HeaderMap::new(), None).await.unwrap();
    assert_eq!((code, body["status"].as_str()), (400, Some("ALREADY_COMPLETED")));
    fx.submitted("alice").await;
}

#[tokio::test]
async fn another_callers_request_is_not_found_and_fal_sees_nothing() {
    let fx = fixture(0, "").await;
    let id = fx.submitted("alice").await;
    for call in [status(&id), result(&id), cancel(&id)] {
        assert_eq!(
            fx.call("bob", call, &HeaderMap::new(), None).await.unwrap_err(),
            "request_not_found"
        );
    }
    assert_eq!(fx.fal.requests().len(), 1, "fal saw only the submit");
    assert!(fx.call("alice", status(&id), &HeaderMap::new(), None).await.is_ok());
}

#[tokio::test]
async fn a_submit_fal_refuses_is_refunded_its_slot_and_its_spend() {
    let fx = fixture(0, "max_inflight_jobs = 1\ndaily_requests = 1").await;
    fal_refuses(&fx, crate::emulator::Op::Submit, 500);
    let (code, ..) = fx.submit("alice").await.unwrap();
    assert_eq!(code, 500, "fal's refusal is relayed");
    fx.submitted("alice").await;
    assert_eq!(fx.submit("alice").await.unwrap_err(), "quota_exceeded");
}

#[tokio::test]
async fn a_sync_run_frees_its_slot_when_done_and_keeps_its_spend() {
    let fx = fixture(0, "max_inflight_jobs = 1\ndaily_requests = 2").await;
    for _ in 0..2 {
        let (code, _, body) = fx
            .call("alice", run(VPG), &HeaderMap::new(), vpg_input())
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(
        fx.call("alice", run(VPG), &HeaderMap::new(), vpg_input())
            .await
            .unwrap_err(),
        "quota_exceeded"
    );
}

#[tokio::test]
async fn a_streamed_run_frees_its_slot_once_fal_answered_and_keeps_its_spend() {
    let fx = fixture(0, "max_inflight_jobs = 1\ndaily_requests = 2").await;
    for _ in 0..2 {
        let (code, headers, _) = fx
            .call("alice", run_stream(VPG), &HeaderMap::new(), vpg_input())
            .await
            .unwrap();
        assert_eq!(code, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
    }
    assert_eq!(
        fx.call("alice", run_stream(VPG), &HeaderMap::new(), vpg_input())
            .await
            .unwrap_err(),
        "quota_exceeded"
    );
}

#[tokio::test]
async fn a_sync_run_fal_refuses_is_refunded() {
    let fx = fixture(0, "daily_requests = 1").await;
    fal_refuses(&fx, crate::emulator::Op::Run, 503);
    let (code, ..) = fx
        .call("alice", run(VPG), &HeaderMap::new(), vpg_input())
        .await
        .unwrap();
    assert_eq!(code, 503);
    let (code, ..) = fx
        .call("alice", run(VPG), &HeaderMap::new(), vpg_input())
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn the_answer_carries_the_callers_ratelimit_headers() {
    let fx = fixture(0, "").await;
    let (_, headers, _) = fx.submit("alice").await.unwrap();
    assert!(headers.contains_key("ratelimit-policy"), "{headers:?}");
    assert!(headers.contains_key("ratelimit"), "{headers:?}");
}

#[tokio::test]
async fn a_body_over_the_endpoints_own_cap_is_refused_before_fal() {
    let fx = fixture(0, "").await;
    let big = json!({"text": "x".repeat(80)});
    let refused = fx.call("alice", submit_to(ECHO), &HeaderMap::new(), Some(big)).await;
    assert_eq!(refused.unwrap_err(), "body_too_large");
    assert!(fx.fal.requests().is_empty());
    fx.submitted("alice").await;
}

fn with_key(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    headers
}

#[tokio::test]
async fn an_idempotent_retry_is_replayed_within_its_endpoint_only() {
    let fx = fixture(0, "").await;
    let key = with_key("click-1");
    let (code, first_headers, first) = fx
        .call("alice", submit_to(ECHO), &key, Some(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(!first_headers.contains_key("idempotent-replayed"));
    let (code, headers, again) = fx
        .call("alice", submit_to(ECHO), &key, Some(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!((code, &again), (200, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(fx.fal_saw("POST").len(), 1);

    let reused = fx.call("alice", submit_to(ECHO), &key, Some(json!({"n": 2}))).await;
    assert_eq!(reused.unwrap_err(), "idempotency_key_reused");

    let elsewhere = json!({"input_concept": "a lighthouse"});
    let (code, headers, _) = fx.call("alice", submit_to(VPG), &key, Some(elsewhere)).await.unwrap();
    assert_eq!(code, 200);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(fx.fal_saw("POST").len(), 2, "another endpoint is another key");

    let (_, headers, _) = fx
        .call("bob", submit_to(ECHO), &key, Some(json!({"n": 1})))
        .await
        .unwrap();
    assert!(
        !headers.contains_key("idempotent-replayed"),
        "another caller is another key"
    );
}

#[tokio::test]
async fn the_retry_of_an_answered_submit_is_replayed_even_over_the_rate() {
    let mut fx = fixture(0, "[limits.tiers.slow]\nsubmit = { burst = 1, per_minute = 1 }").await;
    fx.tier = "slow";
    let key = with_key("click-1");
    let body = || Some(json!({"n": 1}));
    let (code, ..) = fx.call("alice", submit_to(ECHO), &key, body()).await.unwrap();
    assert_eq!(code, 200);
    let (_, headers, _) = fx.call("alice", submit_to(ECHO), &key, body()).await.unwrap();
    assert_eq!(headers["idempotent-replayed"], "true");
    let other = fx.call("alice", submit_to(ECHO), &with_key("click-2"), body()).await;
    assert_eq!(other.unwrap_err(), "rate_limited");
    assert_eq!(fx.fal_saw("POST").len(), 1);
}

#[tokio::test]
async fn a_key_fal_did_not_take_is_freed_for_the_retry() {
    let fx = fixture(0, "").await;
    fal_refuses(&fx, crate::emulator::Op::Submit, 500);
    let key = with_key("click-1");
    let (code, ..) = fx
        .call("alice", submit_to(ECHO), &key, Some(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(code, 500);
    let (code, headers, _) = fx
        .call("alice", submit_to(ECHO), &key, Some(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(fx.fal_saw("POST").len(), 2);
}

#[test]
fn an_idempotency_key_is_one_printable_value_of_at_most_255_bytes() {
    assert_eq!(idempotency::key(&HeaderMap::new()).unwrap(), None);
    let longest = "k".repeat(255);
    assert_eq!(idempotency::key(&with_key(&longest)).unwrap(), Some(longest));
    for bad in ["k".repeat(256), String::new(), "a b".into(), "a\tb".into()] {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(&bad).unwrap());
        let err = idempotency::key(&headers).unwrap_err();
        assert_eq!(err.code(), "malformed_request", "{bad:?}");
    }
    let mut twice = with_key("a");
    twice.append("idempotency-key", HeaderValue::from_static("a"));
    assert!(idempotency::key(&twice).is_err());
}

#[test]
fn a_key_is_scoped_to_the_method_and_the_call_as_forwarded() {
    let echo = idempotency::scoped(&submit_to(ECHO), "k");
    assert_eq!(echo, "POST /fal-ai/echo\nk");
    assert_ne!(echo, idempotency::scoped(&submit_to(VPG), "k"));
}

#[test]
fn a_replayed_answer_keeps_its_status_and_says_it_is_a_replay() {
    let replayed = idempotency::replay(201, bytes::Bytes::from_static(b"{}"));
    assert_eq!(replayed.status().as_u16(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.headers()["content-type"], "application/json");
    assert_eq!(idempotency::replay(1000, bytes::Bytes::new()).status().as_u16(), 200);
}

#[test]
fn each_operation_has_its_rate_class_and_relay_slot() {
    let endpoint = || EndpointId::parse(ECHO).unwrap();
    let app = || EndpointId::parse(ECHO).unwrap().app();
    let id = || FalRequestId::parse("0f4e6a52-0b77-4c7e-9a55-5d0f7f1c2a11").unwrap();
    let cases = [
        (
            Op::Submit {
                endpoint: endpoint(),
                webhook: None,
            },
            OpClass::Submit,
            None,
        ),
        (Op::Run { endpoint: endpoint() }, OpClass::Submit, Some(SlotKind::Relay)),
        (
            Op::RunStream { endpoint: endpoint() },
            OpClass::Submit,
            Some(SlotKind::Stream),
        ),
        (
            Op::Status {
                app: app(),
                id: id(),
                logs: false,
            },
            OpClass::Poll,
            None,
        ),
        (
            Op::StatusStream {
                app: app(),
                id: id(),
                logs: false,
            },
            OpClass::Poll,
            Some(SlotKind::Stream),
        ),
        (
            Op::Result { app: app(), id: id() },
            OpClass::Poll,
            Some(SlotKind::Relay),
        ),
        (Op::Cancel { app: app(), id: id() }, OpClass::Cancel, None),
        (Op::StorageInitiate { multipart: false }, OpClass::Upload, None),
        (Op::ClientToken { realtime: false }, OpClass::Token, None),
    ];
    for (op, op_class, slot) in cases {
        let call = Call { op };
        assert_eq!(call.facts().class, op_class, "{call:?}");
        assert_eq!(call.facts().slot, slot, "{call:?}");
    }
}

#[tokio::test]
async fn a_submit_whose_outcome_is_unknown_keeps_its_slot_and_its_spend() {
    let fx = fixture(0, "max_inflight_jobs = 1\ndaily_requests = 2").await;
    fault(&fx, crate::emulator::Op::Submit, FaultAction::Drop);
    assert_eq!(fx.submit("alice").await.unwrap_err(), "submit_outcome_unknown");
    assert_eq!(fx.submit("alice").await.unwrap_err(), "concurrency_limited");
}

#[tokio::test]
async fn a_submit_that_never_left_is_refunded_its_slot_and_its_spend() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let fx = fixture_with_queue(0, "max_inflight_jobs = 1\ndaily_requests = 1", Some(&nowhere)).await;
    for _ in 0..3 {
        assert_eq!(fx.submit("alice").await.unwrap_err(), "upstream_unreachable");
    }
}

#[tokio::test]
async fn a_paid_call_still_waiting_for_fal_when_the_drain_gives_up_is_424() {
    let fx = fixture(0, "").await;
    fx.gate.lifecycle.abandon();
    assert_eq!(fx.submit("alice").await.unwrap_err(), "submit_outcome_unknown");
    let refused = fx.call("alice", run(VPG), &HeaderMap::new(), vpg_input()).await;
    assert_eq!(refused.unwrap_err(), "submit_outcome_unknown");
}

#[tokio::test]
async fn a_streamed_run_fal_refuses_is_refunded() {
    let fx = fixture(0, "daily_requests = 1").await;
    fal_refuses(&fx, crate::emulator::Op::RunStream, 503);
    let (code, ..) = fx
        .call("alice", run_stream(VPG), &HeaderMap::new(), vpg_input())
        .await
        .unwrap();
    assert_eq!(code, 503);
    let (code, ..) = fx
        .call("alice", run_stream(VPG), &HeaderMap::new(), vpg_input())
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_call_is_charged_its_endpoints_price() {
    let fx = fixture(
        0,
        "daily_credits = 5\n[limits.credits.endpoints.\"fal-ai/echo\"]\ncost = 3",
    )
    .await;
    fx.submitted("alice").await;
    assert_eq!(fx.submit("alice").await.unwrap_err(), "quota_exceeded");
}

#[tokio::test]
async fn a_client_token_is_charged_the_client_token_price() {
    let tokens = r#"daily_credits = 5
token = { burst = 100, per_minute = 6000 }
[limits.credits]
client_token_cost = 3
[endpoints."fal-ai/realtime-app"]
client_tokens = true
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
"#;
    let fx = fixture(0, tokens).await;
    let body = || Some(json!({"allowed_apps": ["realtime-app"], "token_expiration": 60}));
    let token = || Call {
        op: Op::ClientToken { realtime: false },
    };
    let headers = HeaderMap::new();
    let mint = || fx.call("alice", token(), &headers, body());
    let (code, _, token) = mint().await.unwrap();
    assert_eq!(code, 200, "{token}");
    assert_eq!(mint().await.unwrap_err(), "quota_exceeded");
}

#[tokio::test]
async fn the_configured_json_shape_bounds_apply_to_the_body() {
    let fx = fixture(0, "[request]\nmax_json_object_keys = 2").await;
    let three = json!({"a": 1, "b": 2, "c": 3});
    let refused = fx.call("alice", submit_to(ECHO), &HeaderMap::new(), Some(three)).await;
    assert_eq!(refused.unwrap_err(), "json_too_large");
    assert!(fx.fal.requests().is_empty());
    let (code, ..) = fx
        .call(
            "alice",
            submit_to(ECHO),
            &HeaderMap::new(),
            Some(json!({"a": 1, "b": 2})),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_body_cap_raised_over_ten_mib_is_the_cap_the_schema_reader_uses() {
    let big = r#"[request]
max_body_bytes = 12582912
max_json_string_bytes = 12582912
[endpoints."fal-ai/big"]
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
"#;
    let fx = fixture(0, big).await;
    let eleven_mib = json!({"data": "x".repeat(11 * 1024 * 1024)});
    let answered = fx
        .call("alice", submit_to("fal-ai/big"), &HeaderMap::new(), Some(eleven_mib))
        .await;
    assert!(answered.is_ok(), "{answered:?}");
}

#[tokio::test]
async fn a_caller_over_a_rate_is_refused_before_the_body_is_read() {
    let mut fx = fixture(0, "[limits.tiers.slow]\nsubmit = { burst = 1, per_minute = 1 }").await;
    fx.tier = "slow";
    fx.submitted("alice").await;
    // Not an object: reading it would answer 422; the precheck answers first.
    let refused = fx.submit_body("alice", json!("not an object")).await;
    assert_eq!(refused.unwrap_err(), "rate_limited");
}

#[tokio::test]
async fn a_key_whose_submit_outcome_is_unknown_stays_pending_so_a_retry_cannot_submit_twice() {
    let fx = fixture(0, "").await;
    fault(&fx, crate::emulator::Op::Submit, FaultAction::Drop);
    let key = with_key("click-1");
    let first = fx.call("alice", submit_to(ECHO), &key, Some(json!({"n": 1}))).await;
    assert_eq!(first.unwrap_err(), "submit_outcome_unknown");
    let retry = fx.call("alice", submit_to(ECHO), &key, Some(json!({"n": 1}))).await;
    assert_eq!(retry.unwrap_err(), "idempotency_in_flight");
    assert_eq!(fx.fal_saw("POST").len(), 1);
}
