//! The operations table (`fal::OpFacts`, issue 20 item 1) against the real gate: for every
//! operation × route family (REST `/api/fal/queue|run/...`, proxy `/api/fal/proxy` with
//! `x-fal-target-url`) × HTTP version (HTTP/1.1, h2c prior knowledge), its price and quota
//! (usage before and after), its class rate and endpoint rate, the retention header fal saw, the
//! slot it holds while fal works, and what the drain does to it — each expectation read from the
//! table, so a new operation is covered the day it is added (`request` below does not compile
//! until it has a route); the whole table runs with in-process limits and again with limits in
//! Redis (another admission path: `limits::early`). Then the focused cases: streaming runs charged like sync runs, the
//! absent-expiration rule, token and upload calls in the drain rule, schema defaults priced, and
//! a run's reservation freed when its client goes away.

use std::time::Duration;

use falgate::clock::ManualClock;
use falgate::emulator::{Fault, FaultAction, Op as FalOp};
use falgate::fal::{Drain, OpKind, Price, Retention, Unknown};
use falgate::limits::{OpClass, SlotKind};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::{wait_completed_as, TestGate, VPG};

const PRICE: u64 = 5;
const TOKEN_PRICE: u64 = 3;
const FORCED: &str = r#"{"expiration_duration_seconds":600}"#;
const ASKED: &str = r#"{"expiration_duration_seconds":999999}"#;

const TABLE: &str = r#"
[endpoints."fal-ai/realtime-app"]
client_tokens = true
schema = "tests/fixtures/schemas/any-object.json"
unknown_fields = "allow"
[tiers.default]
[tiers.default.fal_headers]
object_lifecycle = { expiration_duration_seconds = 600 }
[limits]
default_tier = "default"
reconcile_interval_ms = 0
[limits.tiers.default]
submit = { burst = 100, per_minute = 1 }
poll = { burst = 100, per_minute = 1 }
cancel = { burst = 100, per_minute = 1 }
upload = { burst = 100, per_minute = 1 }
token = { burst = 100, per_minute = 1 }
daily_requests = 1000
daily_credits = 1000
[limits.credits]
default_cost = 1
client_token_cost = 3
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 5
[limits.endpoint_rates."fal-ai/video-prompt-generator"]
burst = 1000
per_minute = 1
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rest,
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Http1,
    H2c,
}

/// One call as a client sends it.
struct Request {
    method: Method,
    /// A path on the gate.
    path: String,
    /// `x-fal-target-url` (proxy route).
    target: Option<String>,
    body: Option<Value>,
}

fn rest(method: Method, path: String, body: Option<Value>) -> Option<Request> {
    Some(Request {
        method,
        path,
        target: None,
        body,
    })
}

fn proxy(method: Method, target: String, body: Option<Value>) -> Option<Request> {
    Some(Request {
        method,
        path: "/api/fal/proxy".to_owned(),
        target: Some(target),
        body,
    })
}

fn vpg_input() -> Value {
    json!({"input_concept": "a lighthouse", "prompt_length": "Short"})
}

/// The request for `kind` through `family` on request `id` (None: the family has no route for
/// it). No wildcard: a new operation does not compile until it is given its routes here.
fn request(kind: OpKind, family: Family, id: &str) -> Option<Request> {
    let queue = format!("https://queue.fal.run/{VPG}");
    let on_id = |tail: &str| format!("/{VPG}/requests/{id}{tail}");
    match (kind, family) {
        (OpKind::Submit, Family::Rest) => rest(Method::POST, format!("/api/fal/queue/{VPG}"), Some(vpg_input())),
        (OpKind::Submit, Family::Proxy) => proxy(Method::POST, queue, Some(vpg_input())),
        (OpKind::Status, Family::Rest) => rest(Method::GET, format!("/api/fal/queue{}", on_id("/status")), None),
        (OpKind::Status, Family::Proxy) => {
            proxy(Method::GET, format!("https://queue.fal.run{}", on_id("/status")), None)
        }
        (OpKind::StatusStream, Family::Rest) => {
            rest(Method::GET, format!("/api/fal/queue{}", on_id("/status/stream")), None)
        }
        (OpKind::StatusStream, Family::Proxy) => proxy(
            Method::GET,
            format!("https://queue.fal.run{}", on_id("/status/stream")),
            None,
        ),
        (OpKind::Result, Family::Rest) => rest(Method::GET, format!("/api/fal/queue{}", on_id("")), None),
        (OpKind::Result, Family::Proxy) => proxy(Method::GET, format!("https://queue.fal.run{}", on_id("")), None),
        (OpKind::Cancel, Family::Rest) => rest(Method::PUT, format!("/api/fal/queue{}", on_id("/cancel")), None),
        (OpKind::Cancel, Family::Proxy) => {
            proxy(Method::PUT, format!("https://queue.fal.run{}", on_id("/cancel")), None)
        }
        (OpKind::Run, Family::Rest) => rest(Method::POST, format!("/api/fal/run/{VPG}"), Some(vpg_input())),
        (OpKind::Run, Family::Proxy) => proxy(Method::POST, format!("https://fal.run/{VPG}"), Some(vpg_input())),
        (OpKind::RunStream, Family::Rest) => {
            rest(Method::POST, format!("/api/fal/run/{VPG}/stream"), Some(vpg_input()))
        }
        (OpKind::RunStream, Family::Proxy) => {
            proxy(Method::POST, format!("https://fal.run/{VPG}/stream"), Some(vpg_input()))
        }
        (OpKind::StorageInitiate, Family::Rest) | (OpKind::ClientToken, Family::Rest) => None,
        (OpKind::StorageInitiate, Family::Proxy) => proxy(
            Method::POST,
            "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3".to_owned(),
            Some(json!({"content_type": "text/plain", "file_name": "a.txt"})),
        ),
        (OpKind::ClientToken, Family::Proxy) => proxy(
            Method::POST,
            "https://rest.fal.ai/tokens/".to_owned(),
            Some(json!({"allowed_apps": ["realtime-app"], "token_expiration": 60})),
        ),
    }
}

/// The emulator's name of the operation (for faults).
fn fal_op(kind: OpKind) -> FalOp {
    match kind {
        OpKind::Submit => FalOp::Submit,
        OpKind::Status => FalOp::Status,
        OpKind::StatusStream => FalOp::StatusStream,
        OpKind::Result => FalOp::Result,
        OpKind::Cancel => FalOp::Cancel,
        OpKind::Run => FalOp::Run,
        OpKind::RunStream => FalOp::RunStream,
        OpKind::StorageInitiate => FalOp::StorageInitiate,
        OpKind::ClientToken => FalOp::Token,
    }
}

/// Whether the operation addresses an existing request (the caller submits one first).
fn on_request(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Status | OpKind::StatusStream | OpKind::Result | OpKind::Cancel
    )
}

/// The name `/api/fal/usage` and the `RateLimit` headers give the class's rate.
fn rate_name(class: OpClass) -> &'static str {
    match class {
        OpClass::Submit => "submit",
        OpClass::Poll => "poll",
        OpClass::Cancel => "cancel",
        OpClass::Upload => "upload",
        OpClass::Token => "token",
    }
}

fn client(version: Version) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    match version {
        Version::Http1 => builder.http1_only(),
        Version::H2c => builder.http2_prior_knowledge(),
    }
    .build()
    .unwrap()
}

fn send(gate: &TestGate, client: &reqwest::Client, sub: &str, request: &Request) -> reqwest::RequestBuilder {
    let mut builder = client
        .request(request.method.clone(), format!("{}{}", gate.url, request.path))
        .bearer_auth(gate.token(sub))
        .header("x-fal-object-lifecycle-preference", ASKED);
    if let Some(target) = &request.target {
        builder = builder.header("x-fal-target-url", target);
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    builder
}

/// What is left of each of `sub`'s limits, by name.
async fn usage(gate: &TestGate, sub: &str) -> std::collections::HashMap<String, u64> {
    let usage: Value = gate.get_as(sub, "/api/fal/usage").await.json().await.unwrap();
    usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["remaining"].as_u64().unwrap()))
        .collect()
}

impl TestGate {
    async fn get_as(&self, sub: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token(sub))
            .send()
            .await
            .unwrap()
    }
}

/// A request `sub` owns, completed (so a result is there and a status stream ends at once).
async fn owned_request(gate: &TestGate, sub: &str) -> String {
    let id = gate.submit(sub, vpg_input()).await;
    wait_completed_as(gate, sub, &id).await;
    id
}

/// Waits (bounded) until fal has seen `count` requests.
async fn until_fal_saw(gate: &TestGate, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.fal_saw().len() < count {
        assert!(Instant::now() < deadline, "fal never saw the call");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of `name` in fal's record of a request.
fn header<'a>(seen: &'a falgate::emulator::RecordedRequest, name: &str) -> Option<&'a str> {
    seen.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// What the table says one call of `kind` costs: (credits, day requests).
fn spend(kind: OpKind) -> (u64, u64) {
    let facts = kind.facts();
    let credits = match facts.price {
        Price::Endpoint => PRICE,
        Price::ClientToken => TOKEN_PRICE,
        Price::Free => 0,
    };
    let paid = matches!(facts.class, OpClass::Submit | OpClass::Upload | OpClass::Token);
    (credits, u64::from(paid))
}

fn spent(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> (u64, u64) {
    let used = |name: &str| before[name] - after[name];
    (used("daily-credits"), used("daily-requests"))
}

/// Served: fal's own answer, not a refusal of the gate.
async fn assert_served(response: reqwest::Response, cell: &str) {
    assert!(
        response.headers().get("x-falgate-error").is_none(),
        "{cell}: refused {:?}",
        response.headers().get("x-falgate-error")
    );
    // The whole answer arrives (a completed job's status stream ends at once).
    response.bytes().await.unwrap_or_else(|err| panic!("{cell}: {err}"));
}

/// One cell's normal call: price, rates and the retention header fal saw.
async fn ruled_call(
    gate: &TestGate,
    (client, version): (&reqwest::Client, Version),
    kind: OpKind,
    family: Family,
    cell: &str,
) {
    let facts = kind.facts();
    let sub = format!("ruled-{cell}");
    let id = match on_request(kind) {
        true => owned_request(gate, &sub).await,
        false => "00000000-0000-4000-8000-000000000000".to_owned(),
    };
    let Some(request) = request(kind, family, &id) else {
        return;
    };
    let before = usage(gate, &sub).await;
    let seen_before = gate.fal_saw().len();
    let keyed = || send(gate, client, &sub, &request).header("idempotency-key", cell);
    let response = keyed().send().await.unwrap();
    let http = match version {
        Version::Http1 => reqwest::Version::HTTP_11,
        Version::H2c => reqwest::Version::HTTP_2,
    };
    assert_eq!(response.version(), http, "{cell}");
    let policy = response
        .headers()
        .get("ratelimit-policy")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_served(response, cell).await;
    let after = usage(gate, &sub).await;
    assert_eq!(
        spent(&before, &after),
        spend(kind),
        "{cell}: credits and day requests spent"
    );
    let rate = rate_name(facts.class);
    // Reading `/api/fal/usage` spends a poll itself (it is rated): the second read shows it.
    let usage_read = u64::from(facts.class == OpClass::Poll);
    assert_eq!(before[rate] - after[rate], 1 + usage_read, "{cell}: the {rate} rate");
    assert_eq!(
        policy.contains("\"endpoint\""),
        facts.endpoint_rates,
        "{cell}: endpoint rate in {policy:?}"
    );
    // What fal saw: exactly this call, with the lifecycle header the table names forced.
    let saw = gate.fal_saw();
    assert_eq!(saw.len(), seen_before + 1, "{cell}: fal saw {saw:?}");
    let seen = saw.last().unwrap();
    assert_eq!(seen.method, facts.method.as_str(), "{cell}");
    let (preference, object) = (
        header(seen, "x-fal-object-lifecycle-preference"),
        header(seen, "x-fal-object-lifecycle"),
    );
    match facts.retention {
        Retention::Preference => assert_eq!((preference, object), (Some(FORCED), None), "{cell}"),
        Retention::Object => assert_eq!((preference, object), (None, Some(FORCED)), "{cell}"),
        // Nothing forced where fal makes no object: the caller's value passes.
        Retention::None => assert_eq!((preference, object), (Some(ASKED), None), "{cell}"),
    }
    // The same call again with the same `Idempotency-Key`: replayed, or a new call to fal.
    let again = keyed().send().await.unwrap();
    let replayed = again.headers().get("idempotent-replayed").is_some();
    assert_served(again, cell).await;
    assert_eq!(replayed, facts.idempotent, "{cell}: replayed");
    assert_eq!(gate.fal_saw().len(), seen_before + 2 - usize::from(replayed), "{cell}");
}

/// One cell's slot: while fal holds the call, the caller's stream or relay count is one down.
async fn slot_call(gate: &TestGate, client: &reqwest::Client, kind: OpKind, family: Family, cell: &str) {
    let facts = kind.facts();
    let sub = format!("slot-{cell}");
    let id = match on_request(kind) {
        true => owned_request(gate, &sub).await,
        false => "00000000-0000-4000-8000-000000000000".to_owned(),
    };
    let Some(request) = request(kind, family, &id) else {
        return;
    };
    let before = usage(gate, &sub).await;
    gate.emulator.add_fault(Fault {
        op: Some(fal_op(kind)),
        path_contains: None,
        action: FaultAction::Stall { ms: 60_000 },
        times: Some(1),
    });
    let seen = gate.fal_saw().len();
    let call = tokio::spawn(send(gate, client, &sub, &request).send());
    until_fal_saw(gate, seen + 1).await;
    let during = usage(gate, &sub).await;
    let held = |name: &str| before[name] - during[name];
    let expected = |kind: SlotKind| u64::from(facts.slot == Some(kind));
    assert_eq!(held("streams"), expected(SlotKind::Stream), "{cell}: stream slots");
    assert_eq!(held("relays"), expected(SlotKind::Relay), "{cell}: relay slots");
    call.abort();
}

/// One cell after the drain abandoned waits: 424 and the table's spend, or served.
/// `id` is a request `sub` owns, made before the drain began.
async fn drained_call(
    gate: &TestGate,
    client: &reqwest::Client,
    (kind, family): (OpKind, Family),
    cell: &str,
    id: &str,
) {
    let facts = kind.facts();
    let sub = format!("drain-{cell}");
    let Some(request) = request(kind, family, id) else {
        return;
    };
    let before = usage(gate, &sub).await;
    let response = send(gate, client, &sub, &request).send().await.unwrap();
    match facts.drain {
        Drain::AnswerUnknown => {
            gate.assert_refused(response, 424, "submit_outcome_unknown").await;
            let after = usage(gate, &sub).await;
            let expected = match facts.unknown {
                Unknown::KeepSpend => spend(kind),
                Unknown::Refund | Unknown::NotPaid => (0, 0),
            };
            assert_eq!(spent(&before, &after), expected, "{cell}: spend after a drained call");
        }
        Drain::Served | Drain::Cut => assert_served(response, cell).await,
    }
}

/// Where the limits live for a run of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    InProcess,
    /// Redis under a fresh key prefix: another admission path (`limits::early` admits the
    /// fixed-price calls with a body, tokens and uploads here, at the precheck step).
    Redis,
}

async fn table_over(version: Version) {
    table_over_on(version, Store::InProcess).await;
}

async fn table_over_on(version: Version, store: Store) {
    let builder = TestGate::builder()
        .config(TABLE)
        .clock(&ManualClock::new())
        .job_ms(10, 20)
        .env("FALGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "30000");
    let builder = match store {
        Store::InProcess => builder,
        Store::Redis => builder
            .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
            .env("FALGATE_REDIS__KEY_PREFIX", &format!("ops-{}", uuid::Uuid::new_v4())),
    };
    let gate = builder.spawn().await;
    let client = client(version);
    let cells = || {
        [Family::Rest, Family::Proxy]
            .into_iter()
            .flat_map(|family| OpKind::ALL.iter().map(move |kind| (*kind, family)))
    };
    for (kind, family) in cells() {
        let cell = format!("{kind:?}-{family:?}-{version:?}");
        ruled_call(&gate, (&client, version), kind, family, &cell).await;
        slot_call(&gate, &client, kind, family, &cell).await;
    }
    // The requests the drained calls address are made before the drain.
    let mut ids = std::collections::HashMap::new();
    for (kind, family) in cells().filter(|(kind, _)| on_request(*kind)) {
        let cell = format!("{kind:?}-{family:?}-{version:?}");
        let id = owned_request(&gate, &format!("drain-{cell}")).await;
        ids.insert(cell, id);
    }
    // As the drain timeout nears: every call still (or newly) waiting for fal is abandoned.
    gate.lifecycle.abandon();
    for (kind, family) in cells() {
        let cell = format!("{kind:?}-{family:?}-{version:?}");
        let id = ids
            .get(&cell)
            .map_or("00000000-0000-4000-8000-000000000000", String::as_str);
        drained_call(&gate, &client, (kind, family), &cell, id).await;
    }
}

#[tokio::test]
async fn every_operation_on_http1_is_priced_rated_ruled_slotted_and_drained_as_the_table_says() {
    table_over(Version::Http1).await;
}

#[tokio::test]
async fn every_operation_on_h2c_is_priced_rated_ruled_slotted_and_drained_as_the_table_says() {
    table_over(Version::H2c).await;
}

#[tokio::test]
async fn every_operation_with_limits_in_redis_on_http1_is_priced_rated_ruled_slotted_and_drained() {
    table_over_on(Version::Http1, Store::Redis).await;
}

#[tokio::test]
async fn every_operation_with_limits_in_redis_on_h2c_is_priced_rated_ruled_slotted_and_drained() {
    table_over_on(Version::H2c, Store::Redis).await;
}

const STREAM_QUOTA: &str = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
daily_credits = 12
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "openai/gpt-4o" = 5 }
"#;

/// Issue 20's measurement: streaming runs were free. With 12 credits and a 5-credit input, two
/// streaming runs (one per route family) are charged like sync runs and the third is refused
/// `403 quota_exceeded` before it reaches fal.
#[tokio::test]
async fn streaming_runs_are_charged_like_sync_runs_and_refused_past_the_quota() {
    let gate = TestGate::builder().config(STREAM_QUOTA).spawn().await;
    let input = json!({"input_concept": "a lighthouse", "model": "openai/gpt-4o"});
    let stream_run = |family: Family| {
        let request = match family {
            Family::Rest => rest(Method::POST, format!("/api/fal/run/{VPG}/stream"), Some(input.clone())),
            Family::Proxy => proxy(
                Method::POST,
                format!("https://fal.run/{VPG}/stream"),
                Some(input.clone()),
            ),
        };
        request.unwrap()
    };
    let mut left = usage(&gate, "alice").await["daily-credits"];
    assert_eq!(left, 12);
    for family in [Family::Rest, Family::Proxy] {
        let response = send(&gate, &gate.client, "alice", &stream_run(family))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{family:?}");
        response.bytes().await.unwrap();
        let now = usage(&gate, "alice").await["daily-credits"];
        assert_eq!(left - now, 5, "{family:?}: a streaming run costs what a sync run costs");
        left = now;
    }
    let streams_seen = || gate.fal_saw().iter().filter(|r| r.path.ends_with("/stream")).count();
    assert_eq!(streams_seen(), 2);
    for family in [Family::Rest, Family::Proxy] {
        let refused = send(&gate, &gate.client, "alice", &stream_run(family))
            .send()
            .await
            .unwrap();
        gate.assert_refused(refused, 403, "quota_exceeded").await;
    }
    assert_eq!(streams_seen(), 2, "a refused streaming run reached fal");
}

const CAPPED: &str = r#"
[tiers.default]
[tiers.default.fal_headers]
max_object_expiration_seconds = 3600
"#;

/// `max_object_expiration_seconds` with no lifecycle header sent: the header fal reads on the
/// operation is set to that expiration (README: "a longer (or absent) expiration is lowered
/// (set)"); operations that make no object get none.
#[tokio::test]
async fn an_absent_expiration_is_set_to_the_tiers_maximum_where_fal_reads_one() {
    let gate = TestGate::builder()
        .config(CAPPED)
        .config(
            "[endpoints.\"fal-ai/realtime-app\"]\nclient_tokens = true\n\
             schema = \"tests/fixtures/schemas/any-object.json\"\nunknown_fields = \"allow\"\n",
        )
        .job_ms(10, 20)
        .spawn()
        .await;
    let id = owned_request(&gate, "alice").await;
    let capped = Some(r#"{"expiration_duration_seconds":3600}"#);
    for kind in OpKind::ALL {
        let request = request(*kind, Family::Proxy, &id).expect("every operation has a proxy route");
        let seen = gate.fal_saw().len();
        let mut builder = gate
            .client
            .request(request.method.clone(), format!("{}{}", gate.url, request.path))
            .bearer_auth(gate.token("alice"))
            .header("x-fal-target-url", request.target.unwrap());
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        assert_served(builder.send().await.unwrap(), &format!("{kind:?}")).await;
        let saw = gate.fal_saw();
        assert_eq!(saw.len(), seen + 1);
        let last = saw.last().unwrap();
        let lifecycle = (
            header(last, "x-fal-object-lifecycle-preference"),
            header(last, "x-fal-object-lifecycle"),
        );
        let expected = match kind.facts().retention {
            Retention::Preference => (capped, None),
            Retention::Object => (None, capped),
            Retention::None => (None, None),
        };
        assert_eq!(lifecycle, expected, "{kind:?}");
    }
}

/// Sending only the lifecycle header fal ignores on an operation (`x-fal-object-lifecycle` on a
/// submit, `-preference` on an upload) does not count as sending one: the header fal reads still
/// gets the tier's maximum expiration.
#[tokio::test]
async fn the_lifecycle_header_fal_ignores_does_not_turn_off_the_absent_expiration_rule() {
    let gate = TestGate::builder().config(CAPPED).job_ms(10, 20).spawn().await;
    let id = owned_request(&gate, "alice").await;
    let capped = Some(r#"{"expiration_duration_seconds":3600}"#);
    let mut checked = 0;
    for kind in OpKind::ALL {
        let (other, read) = match kind.facts().retention {
            Retention::Preference => ("x-fal-object-lifecycle", "x-fal-object-lifecycle-preference"),
            Retention::Object => ("x-fal-object-lifecycle-preference", "x-fal-object-lifecycle"),
            Retention::None => continue,
        };
        let request = request(*kind, Family::Proxy, &id).expect("every operation has a proxy route");
        let mut builder = gate
            .client
            .request(request.method.clone(), format!("{}{}", gate.url, request.path))
            .bearer_auth(gate.token("alice"))
            .header("x-fal-target-url", request.target.unwrap())
            .header(other, "{}");
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        assert_served(builder.send().await.unwrap(), &format!("{kind:?}")).await;
        let saw = gate.fal_saw();
        assert_eq!(header(saw.last().unwrap(), read), capped, "{kind:?}: {read}");
        checked += 1;
    }
    assert!(
        checked >= 4,
        "submit, run, run stream and upload carry a lifecycle rule"
    );
}

/// A token or upload call still waiting for fal when the drain gives up is answered 424
/// `submit_outcome_unknown` at once (not left to be cut), and refunded: the token or upload URL
/// never reached anyone.
#[tokio::test]
async fn token_and_upload_calls_waiting_at_the_drain_are_answered_424_and_refunded() {
    let gate = TestGate::builder()
        .config(TABLE)
        .clock(&ManualClock::new())
        .env("FALGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "30000")
        .spawn()
        .await;
    let mut calls = Vec::new();
    for kind in [OpKind::ClientToken, OpKind::StorageInitiate] {
        gate.emulator.add_fault(Fault {
            op: Some(fal_op(kind)),
            path_contains: None,
            action: FaultAction::Stall { ms: 60_000 },
            times: Some(1),
        });
        let sub = format!("{kind:?}");
        let before = usage(&gate, &sub).await;
        let seen = gate.fal_saw().len();
        let request = request(kind, Family::Proxy, "").unwrap();
        calls.push((
            kind,
            before,
            tokio::spawn(send(&gate, &gate.client, &sub, &request).send()),
        ));
        until_fal_saw(&gate, seen + 1).await;
    }
    gate.lifecycle.abandon();
    for (kind, before, call) in calls {
        let answer = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{kind:?} was left waiting for fal past the drain"))
            .unwrap()
            .unwrap();
        gate.assert_refused(answer, 424, "submit_outcome_unknown").await;
        let after = usage(&gate, &format!("{kind:?}")).await;
        assert_eq!(spent(&before, &after), (0, 0), "{kind:?} was not refunded");
    }
}

const DEFAULTS: &str = r#"
[tiers.default]
[tiers.cheap]
[tiers.cheap.options."fal-ai/video-prompt-generator"]
model = ["openai/gpt-4o-mini"]
[limits]
default_tier = "default"
[limits.tiers.default]
daily_credits = 100
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "google/gemini-flash-1.5" = 4 }
"#;

/// The schema's `default` of an absent field is what fal runs: it is priced (the schema's
/// default `model` costs 4, not the endpoint's 1) and ruled by the tier's options (a tier
/// allowed only another model is refused), while fal still receives the caller's exact bytes.
#[tokio::test]
async fn a_schema_default_is_priced_and_ruled_but_never_forwarded() {
    let gate = TestGate::builder().config(DEFAULTS).spawn().await;
    let input = json!({"input_concept": "a lighthouse"});
    for family in [Family::Rest, Family::Proxy] {
        let before = usage(&gate, "alice").await["daily-credits"];
        let request = request(OpKind::Submit, family, "").unwrap();
        let request = Request {
            body: Some(input.clone()),
            ..request
        };
        let response = send(&gate, &gate.client, "alice", &request).send().await.unwrap();
        assert_eq!(response.status(), 200, "{family:?}");
        let after = usage(&gate, "alice").await["daily-credits"];
        assert_eq!(before - after, 4, "{family:?}: the default model's price");
        let forwarded: Value = serde_json::from_str(&gate.fal_saw().last().unwrap().body).unwrap();
        assert_eq!(
            forwarded, input,
            "{family:?}: fal got the caller's input, no defaults added"
        );

        let seen = gate.fal_saw().len();
        let refused = gate
            .client
            .post(format!("{}{}", gate.url, request.path))
            .bearer_auth(gate.tier_token("bob", "cheap"));
        let refused = match &request.target {
            Some(target) => refused.header("x-fal-target-url", target),
            None => refused,
        };
        let refused = refused.json(&input).send().await.unwrap();
        let body = gate.assert_refused(refused, 403, "option_not_allowed").await;
        assert!(body["message"].as_str().unwrap().contains("model"), "{body}");
        assert_eq!(gate.fal_saw().len(), seen, "a refused default reached fal");
    }
}

const ONE_IN_FLIGHT: &str = r#"
[limits]
default_tier = "default"
[limits.tiers.default]
max_inflight_jobs = 1
"#;

/// A sync or streaming run whose client goes away while fal works frees its in-flight
/// reservation at once (not after `inflight_ttl_seconds`): the caller's next run is admitted.
#[tokio::test]
async fn a_run_whose_client_goes_away_frees_its_in_flight_reservation_at_once() {
    let gate = TestGate::builder()
        .config(ONE_IN_FLIGHT)
        .env("FALGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "30000")
        .spawn()
        .await;
    runs_free_their_reservation_when_their_client_goes(&gate).await;
}

/// The same with the reservation held in Redis (shared by replicas).
#[tokio::test]
async fn a_run_whose_client_goes_away_frees_its_reservation_in_redis_at_once() {
    let gate = TestGate::builder()
        .config(ONE_IN_FLIGHT)
        .env("FALGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "30000")
        .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
        .env("FALGATE_REDIS__KEY_PREFIX", &format!("it-{}", uuid::Uuid::new_v4()))
        .env("FALGATE_LIMITS__ON_STORE_ERROR", "deny")
        .spawn()
        .await;
    runs_free_their_reservation_when_their_client_goes(&gate).await;
}

async fn runs_free_their_reservation_when_their_client_goes(gate: &TestGate) {
    for version in [Version::Http1, Version::H2c] {
        let client = client(version);
        for kind in [OpKind::Run, OpKind::RunStream] {
            for family in [Family::Rest, Family::Proxy] {
                let cell = format!("{kind:?}-{family:?}-{version:?}");
                let request = request(kind, family, "").unwrap();
                gate.emulator.add_fault(Fault {
                    op: Some(fal_op(kind)),
                    path_contains: None,
                    action: FaultAction::Stall { ms: 60_000 },
                    times: Some(1),
                });
                let seen = gate.fal_saw().len();
                let call = tokio::spawn(send(gate, &client, &cell, &request).send());
                until_fal_saw(gate, seen + 1).await;
                assert_eq!(
                    usage(gate, &cell).await["inflight"],
                    0,
                    "{cell}: the run holds the slot"
                );
                // The client goes away: its connection (HTTP/1) or stream (h2) is closed.
                call.abort();
                let deadline = Instant::now() + Duration::from_secs(10);
                while usage(gate, &cell).await["inflight"] != 1 {
                    assert!(Instant::now() < deadline, "{cell}: the reservation was never freed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // The freed reservation admits the next run.
                let next = send(gate, &client, &cell, &request).send().await.unwrap();
                assert_eq!(next.status(), 200, "{cell}");
                next.bytes().await.unwrap();
            }
        }
    }
}

/// The precheck refuses a caller who cannot afford the call before its body is read, at the
/// price the table gives the operation (a temporary token's cost too): a body that is not even
/// JSON is answered 403 `quota_exceeded`, not 400, and nothing reaches fal.
#[tokio::test]
async fn a_caller_who_cannot_afford_an_operation_is_refused_before_its_body_is_read() {
    let poor = TABLE.replace("daily_credits = 1000", "daily_credits = 2");
    let gate = TestGate::builder()
        .config(&poor)
        .clock(&ManualClock::new())
        .spawn()
        .await;
    for kind in OpKind::ALL.iter().filter(|kind| kind.facts().body) {
        let request = request(*kind, Family::Proxy, "").unwrap();
        let response = gate
            .client
            .request(request.method.clone(), format!("{}{}", gate.url, request.path))
            .bearer_auth(gate.token("alice"))
            .header("x-fal-target-url", request.target.clone().unwrap())
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        match spend(*kind).0 > 2 {
            true => gate.assert_refused(response, 403, "quota_exceeded").await,
            false => gate.assert_refused(response, 400, "invalid_json").await,
        };
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

/// Uploads over `@fal-ai/client`'s multipart threshold initiate with `initiate-multipart`: the
/// same operation and upload policy as `initiate` (issue 24 item 7).
#[tokio::test]
async fn a_multipart_upload_initiates_through_the_proxy_under_the_upload_policy() {
    let target = "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3";
    let body = json!({"content_type": "video/mp4", "file_name": "big.mp4"});
    let allowed = TestGate::spawn().await;
    let response = allowed.proxy_post_as_alice(target, &body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["upload_url"].as_str().unwrap().contains("/_storage/multipart/"),
        "{answer}"
    );
    let seen = allowed.fal_saw();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/rest.fal.ai/storage/upload/initiate-multipart");
    let denied = TestGate::builder()
        .env("FALGATE_STORAGE__UPLOADS", "deny")
        .spawn()
        .await;
    let refused = denied.proxy_post_as_alice(target, &body).await;
    denied.assert_refused(refused, 403, "uploads_not_allowed").await;
    // Only fal-cdn-v3, as for initiate.
    let other = "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=gcs";
    let refused = denied.proxy_post_as_alice(other, &body).await;
    assert_eq!(refused.status(), 400);
    denied.assert_nothing_reached_fal_and_still_serving().await;
}
