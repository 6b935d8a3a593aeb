//! Admission under hoarding and floods (issue 10 items 2 and 4), through both route families:
//! a caller over a limit is refused before its body is read, a client over the failed-auth rate
//! before its token is verified; one caller cannot hold more status streams or buffered relays
//! than its cap, a closed stream frees its slot, and with Redis the cap holds across replicas.

use std::time::{Duration, Instant};

use falgate::emulator::{Fault, FaultAction, Op};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{wait_completed, wait_completed_as, Builder, TestGate, VPG};

/// Jobs that stay queued for a minute, so their status streams stay open.
const LONG_JOB_MS: (u64, u64) = (60_000, 1_000);

fn stream_path(id: &str) -> String {
    format!("/api/fal/queue/{VPG}/requests/{id}/status/stream")
}

fn target(rest: &str) -> String {
    format!("https://queue.fal.run/{VPG}{rest}")
}

/// Opens `sub`'s status stream of `id` through the REST route (`proxy`: the proxy route).
async fn open_stream(gate: &TestGate, sub: &str, id: &str, proxy: bool) -> reqwest::Response {
    let request = match proxy {
        false => gate.client.get(format!("{}{}", gate.url, stream_path(id))),
        true => gate
            .client
            .get(format!("{}/api/fal/proxy", gate.url))
            .header("x-fal-target-url", target(&format!("/requests/{id}/status/stream"))),
    };
    request
        .bearer_auth(gate.token(sub))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

/// An open stream that has delivered its first event (so fal's side is open too).
async fn opened(gate: &TestGate, sub: &str, id: &str, proxy: bool) -> reqwest::Response {
    let mut response = open_stream(gate, sub, id, proxy).await;
    assert_eq!(
        response.status(),
        200,
        "stream {} for {sub}",
        if proxy { "(proxy)" } else { "" }
    );
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    response
}

fn streams_fal_saw(gate: &TestGate) -> usize {
    gate.fal_saw()
        .iter()
        .filter(|r| r.path.ends_with("/status/stream"))
        .count()
}

/// Opens streams until one is admitted (a slot was freed), polling until `deadline`.
async fn until_admitted(gate: &TestGate, sub: &str, id: &str, proxy: bool) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = open_stream(gate, sub, id, proxy).await;
        if response.status() == 200 {
            return response;
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the closed stream's slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_stream_cap(gate: &TestGate, refused: reqwest::Response, cap: u32) {
    assert!(refused.headers().contains_key("retry-after"), "{:?}", refused.headers());
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        format!("\"streams\";q={cap};qu=\"concurrent-requests\"").as_str()
    );
    let body = gate.assert_refused(refused, 429, "concurrency_limited").await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&format!("{cap} status streams")), "{message}");
}

#[tokio::test]
async fn one_caller_cannot_hoard_status_streams_and_a_closed_stream_frees_its_slot() {
    let gate = TestGate::builder()
        .config("[limits]\nstreams_per_caller = 2\n")
        .job_ms(LONG_JOB_MS.0, LONG_JOB_MS.1)
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let rest = opened(&gate, "alice", &id, false).await;
    let _proxied = opened(&gate, "alice", &id, true).await;
    for proxy in [false, true] {
        let refused = open_stream(&gate, "alice", &id, proxy).await;
        assert_stream_cap(&gate, refused, 2).await;
    }
    assert_eq!(streams_fal_saw(&gate), 2, "a refused stream reached fal");
    let bobs = gate.submit("bob", json!({"input_concept": "y"})).await;
    let _bob = opened(&gate, "bob", &bobs, true).await;
    // The client goes away: its slot is freed when the gate notices.
    drop(rest);
    let _again = until_admitted(&gate, "alice", &id, false).await;
    assert_stream_cap(&gate, open_stream(&gate, "alice", &id, true).await, 2).await;
}

#[tokio::test]
async fn a_stream_that_ends_frees_its_slot_and_one_at_its_lifetime_ends_cleanly() {
    let gate = TestGate::builder()
        .config("[limits]\nstreams_per_caller = 1\n")
        .env("FALGATE_UPSTREAM__MAX_STREAM_LIFETIME_MS", "300")
        .job_ms(LONG_JOB_MS.0, LONG_JOB_MS.1)
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    for proxy in [false, true] {
        // The previous stream's slot is freed as its body ends (polled for, not slept on).
        let mut stream = until_admitted(&gate, "alice", &id, proxy).await;
        assert_stream_cap(&gate, open_stream(&gate, "alice", &id, !proxy).await, 1).await;
        let mut events = String::new();
        // A clean end (no error) long before the job completes: the lifetime cut it.
        while let Some(chunk) = stream.chunk().await.expect("the stream ended with an error") {
            events.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(
            events.starts_with("data: ") && !events.contains("COMPLETED"),
            "{events}"
        );
    }
    until_admitted(&gate, "alice", &id, false).await;
}

#[tokio::test]
async fn buffered_relays_are_capped_per_caller_and_freed_once_relayed() {
    let gate = TestGate::builder()
        .config("[limits]\nrelays_per_caller = 1\n")
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    wait_completed(&gate, &id).await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Stall { ms: 1_000 },
        times: Some(1),
    });
    let slow = {
        let request = gate.as_alice(Method::GET, &format!("/api/fal/queue/{VPG}/requests/{id}"));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let results_fal_saw = || gate.fal_saw().iter().filter(|r| r.path.ends_with(&id)).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while results_fal_saw() == 0 {
        assert!(Instant::now() < deadline, "the first result never reached fal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = gate
        .as_alice(Method::GET, "/api/fal/proxy")
        .header("x-fal-target-url", target(&format!("/requests/{id}")))
        .send()
        .await
        .unwrap();
    let body = gate.assert_refused(refused, 429, "concurrency_limited").await;
    assert!(body["message"].as_str().unwrap().contains("1 results"), "{body}");
    assert_eq!(results_fal_saw(), 1, "the refused relay reached fal");
    let bob = gate.submit("bob", json!({"input_concept": "y"})).await;
    wait_completed_as(&gate, "bob", &bob).await;
    let bobs = gate
        .client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{bob}", gate.url))
        .bearer_auth(gate.token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(bobs.status(), 200, "another caller is still served");
    let first = slow.await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.json::<serde_json::Value>().await.is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = gate.get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}")).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(Instant::now() < deadline, "the relayed answer's slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a submit's request head announcing `length` body bytes, then no body at all, and
/// returns the status line and headers falgate answers with (it must not wait for the body).
async fn head_only_submit(gate: &TestGate, path: &str, extra: &str, length: usize) -> String {
    let addr = gate.url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n",
        gate.token("alice")
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "falgate closed without answering");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("falgate waited for a body it should not read");
    String::from_utf8_lossy(&answer).to_lowercase()
}

/// A submit through the REST route and one through the proxy route, each with `body`.
async fn submits(gate: &TestGate, body: &'static str) -> [reqwest::Response; 2] {
    let rest = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let proxy = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header("x-fal-target-url", target(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    [rest, proxy]
}

#[tokio::test]
async fn a_rate_limited_caller_is_refused_before_its_body_is_read_or_validated() {
    let gate = TestGate::builder()
        .config("[limits]\n[limits.tiers.default]\nsubmit = { burst = 1, per_minute = 1 }\n")
        .spawn()
        .await;
    gate.submit("alice", json!({"input_concept": "x"})).await;
    gate.emulator.clear_requests();
    // Over the body cap (413 if read), invalid JSON (400), failing the schema (422): all 429.
    let head = head_only_submit(&gate, &format!("/api/fal/queue/{VPG}"), "", 9_000_000).await;
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("x-falgate-error: rate_limited"), "{head}");
    let proxied = head_only_submit(
        &gate,
        "/api/fal/proxy",
        &format!("x-fal-target-url: {}\r\n", target("")),
        9_000_000,
    )
    .await;
    assert!(proxied.starts_with("http/1.1 429"), "{proxied}");
    for body in ["{\"input_concept\": ", "{\"no_such_field\": 1}"] {
        for refused in submits(&gate, body).await {
            gate.assert_refused(refused, 429, "rate_limited").await;
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
    let bob = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.token("bob"))
        .json(&json!({"no_such_field": 1}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(bob, 422, "validation_failed").await;
}

#[tokio::test]
async fn quota_and_concurrency_refuse_before_the_body_at_the_cheapest_price() {
    let limits = r#"
[limits]
[limits.tiers.default]
max_inflight_jobs = 1
daily_credits = 6
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 2
field = "model"
values = { "openai/gpt-4o" = 5 }
"#;
    let gate = TestGate::builder()
        .config(limits)
        .job_ms(LONG_JOB_MS.0, LONG_JOB_MS.1)
        .spawn()
        .await;
    gate.submit("alice", json!({"input_concept": "x"})).await;
    gate.emulator.clear_requests();
    // One job in flight: the next submit is refused whatever its body.
    for refused in submits(&gate, "{\"input_concept\": ").await {
        gate.assert_refused(refused, 429, "concurrency_limited").await;
    }
    // One credit left, and the cheapest call costs 2: refused before the body, too.
    let gate_b = TestGate::builder()
        .config(&limits.replace("max_inflight_jobs = 1", "max_inflight_jobs = 5"))
        .job_ms(LONG_JOB_MS.0, LONG_JOB_MS.1)
        .spawn()
        .await;
    gate_b
        .submit("alice", json!({"input_concept": "x", "model": "openai/gpt-4o"}))
        .await;
    gate_b.emulator.clear_requests();
    for refused in submits(&gate_b, "{\"no_such_field\": 1}").await {
        gate_b.assert_refused(refused, 403, "quota_exceeded").await;
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
    gate_b.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn the_precheck_charges_nothing_and_admission_charges_the_real_price() {
    let limits = r#"
[limits]
[limits.tiers.default]
daily_credits = 6
[limits.credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "openai/gpt-4o" = 5 }
"#;
    let gate = TestGate::builder().config(limits).spawn().await;
    // Refused inputs pass the precheck and are refused by validation: nothing is spent.
    for _ in 0..10 {
        for refused in submits(&gate, "{\"no_such_field\": 1}").await {
            gate.assert_refused(refused, 422, "validation_failed").await;
        }
    }
    gate.submit("alice", json!({"input_concept": "x", "model": "openai/gpt-4o"}))
        .await;
    // 1 credit left: a premium call passes the precheck (cheapest price 1) and admission refuses it.
    let premium = gate
        .post_as_alice(
            &format!("/api/fal/queue/{VPG}"),
            &json!({"input_concept": "x", "model": "openai/gpt-4o"}),
        )
        .await;
    gate.assert_refused(premium, 403, "quota_exceeded").await;
    gate.submit("alice", json!({"input_concept": "x"})).await;
    assert_eq!(gate.fal_saw().len(), 2);
}

fn unauthenticated(builder: Builder) -> Builder {
    builder.config("[limits]\n[limits.unauthenticated_ip_rate]\nburst = 2\nper_minute = 1\n")
}

async fn status_with_token(gate: &TestGate, token: &str) -> u16 {
    gate.client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{}",
            gate.url,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A well-formed HS256 token whose `kid` names no key of the gate: refused by the per-IP bucket
/// before any verification.
fn unknown_key_token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","kid":"no-such-key"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":4102444800}"#);
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(b"forged"))
}

/// Issue 20: behind a proxy every client shares one address. Strangers that spend the failed-
/// authentication rate (no token, garbage) do not lock out a user whose fresh token is well
/// formed and names a known key: it is verified and served. A forged token of that shape is
/// verified too, fails, and still spends the rate; garbage stays refused by the bucket.
#[tokio::test]
async fn strangers_over_the_failed_auth_rate_do_not_lock_out_a_fresh_valid_token() {
    let gate = unauthenticated(TestGate::builder()).spawn().await;
    let mut tokenless = Vec::new();
    for _ in 0..3 {
        let response = gate
            .client
            .get(format!(
                "{}/api/fal/queue/{VPG}/requests/{}",
                gate.url,
                uuid::Uuid::new_v4()
            ))
            .send()
            .await
            .unwrap();
        tokenless.push(response.status().as_u16());
    }
    assert_eq!(tokenless, [401, 401, 429]);
    let refused = gate
        .client
        .get(format!("{}/api/fal/usage", gate.url))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    gate.assert_refused(refused, 429, "rate_limited").await;
    assert!(gate.fal_saw().is_empty());
    // A user who never called before, with a fresh valid token, is served.
    gate.submit("newcomer", json!({"input_concept": "a lighthouse"})).await;
    // A forged token naming the known (HS256) key is verified, fails, and is refused (the
    // failure spent on an IP already over the rate: 429).
    let forged = falgate::auth::mint_hs256(
        b"not-the-gates-secret-not-the-gates-secret",
        "newcomer",
        None,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_eq!(status_with_token(&gate, &forged).await, 429);
    assert_eq!(gate.fal_saw().len(), 1, "only the newcomer's submit reached fal");
}

#[tokio::test]
async fn a_client_over_the_failed_auth_rate_is_refused_before_its_token_is_verified() {
    let gate = unauthenticated(TestGate::builder()).spawn().await;
    // Valid tokens never spend the failed-authentication rate.
    let tokens: Vec<String> = (0..5).map(|n| gate.token(&format!("user-{n}"))).collect();
    let mut valid = Vec::new();
    for token in &tokens {
        valid.push(status_with_token(&gate, token).await);
    }
    assert_eq!(valid, [404; 5]);
    let bad: Vec<u16> = futures_util::stream::iter(0..3)
        .then(|_| status_with_token(&gate, "not-a-token"))
        .collect()
        .await;
    assert_eq!(bad, [401, 401, 429]);
    // A token seen before is answered from the cache, never refused for the IP's failures...
    assert_eq!(status_with_token(&gate, &tokens[0]).await, 404);
    // ...but a token naming no key the gate holds is not verified at all while the IP is over.
    let refused = gate
        .client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{}",
            gate.url,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(unknown_key_token())
        .send()
        .await
        .unwrap();
    gate.assert_refused(refused, 429, "rate_limited").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

mod redis {
    use super::*;

    fn on_redis(builder: Builder, prefix: &str) -> Builder {
        builder
            .env("FALGATE_REDIS__URL", "redis://127.0.0.1:6379")
            .env("FALGATE_REDIS__KEY_PREFIX", prefix)
            .env("FALGATE_REDIS__TIMEOUT_MS", "500")
    }

    #[tokio::test]
    async fn the_per_caller_stream_cap_holds_across_two_replicas() {
        let prefix = format!("it-{}", uuid::Uuid::new_v4());
        let config = "[limits]\nstreams_per_caller = 2\n";
        let a = on_redis(TestGate::builder().config(config), &prefix)
            .job_ms(LONG_JOB_MS.0, LONG_JOB_MS.1)
            .spawn()
            .await;
        let b = on_redis(TestGate::builder().config(config).share_fal(&a), &prefix)
            .spawn()
            .await;
        let id = a.submit("alice", json!({"input_concept": "x"})).await;
        let on_a = opened(&a, "alice", &id, false).await;
        let _on_b = opened(&b, "alice", &id, true).await;
        assert_stream_cap(&a, open_stream(&a, "alice", &id, true).await, 2).await;
        assert_stream_cap(&b, open_stream(&b, "alice", &id, false).await, 2).await;
        assert_eq!(streams_fal_saw(&a), 2, "a refused stream reached fal");
        let bobs = b.submit("bob", json!({"input_concept": "y"})).await;
        let _bob = opened(&a, "bob", &bobs, false).await;
        // Closed on A, freed for B.
        drop(on_a);
        let _again = until_admitted(&b, "alice", &id, false).await;
        assert_stream_cap(&a, open_stream(&a, "alice", &id, false).await, 2).await;
    }

    #[tokio::test]
    async fn a_caller_rate_limited_on_one_replica_is_refused_before_the_body_on_the_other() {
        let prefix = format!("it-{}", uuid::Uuid::new_v4());
        let config = "[limits]\n[limits.tiers.default]\nsubmit = { burst = 1, per_minute = 1 }\n\
                      [limits.unauthenticated_ip_rate]\nburst = 1\nper_minute = 1\n";
        let a = on_redis(TestGate::builder().config(config), &prefix).spawn().await;
        let b = on_redis(TestGate::builder().config(config).share_fal(&a), &prefix)
            .spawn()
            .await;
        a.submit("alice", json!({"input_concept": "x"})).await;
        a.emulator.clear_requests();
        let head = head_only_submit(&b, &format!("/api/fal/queue/{VPG}"), "", 9_000_000).await;
        assert!(head.starts_with("http/1.1 429"), "{head}");
        for refused in submits(&b, "{\"no_such_field\": 1}").await {
            b.assert_refused(refused, 429, "rate_limited").await;
        }
        // The failed-authentication rate is shared too, and checked before verifying.
        assert_eq!(status_with_token(&a, "not-a-token").await, 401);
        let fresh = unknown_key_token();
        let refused = b
            .client
            .get(format!(
                "{}/api/fal/queue/{VPG}/requests/{}",
                b.url,
                uuid::Uuid::new_v4()
            ))
            .bearer_auth(fresh)
            .send()
            .await
            .unwrap();
        b.assert_refused(refused, 429, "rate_limited").await;
        b.assert_nothing_reached_fal_and_still_serving().await;
    }

    /// A body that never arrives, on Redis, after its early admission: 408, and the call keeps
    /// its place in the rate spent (as `spend_rate` charges it in process) and nothing else.
    #[tokio::test]
    async fn on_redis_a_body_that_times_out_keeps_its_rate_spent_and_nothing_else() {
        let prefix = format!("it-{}", uuid::Uuid::new_v4());
        let config = "[limits]\n[limits.tiers.default]\nsubmit = { burst = 5, per_minute = 1 }\n\
                      daily_requests = 5\nmax_inflight_jobs = 5\n";
        let gate = on_redis(TestGate::builder().config(config), &prefix)
            .env("FALGATE_REQUEST__BODY_TIMEOUT_MS", "300")
            .spawn()
            .await;
        let head = head_only_submit(&gate, &format!("/api/fal/queue/{VPG}"), "", 100).await;
        assert!(head.starts_with("http/1.1 408"), "{head}");
        let usage: serde_json::Value = gate
            .client
            .get(format!("{}/api/fal/usage", gate.url))
            .bearer_auth(gate.token("alice"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let left = |name: &str| {
            usage["limits"]
                .as_array()
                .unwrap()
                .iter()
                .find(|limit| limit["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {usage}"))["remaining"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(left("submit"), 4, "the timed-out body's place in the rate is spent");
        assert_eq!((left("daily-requests"), left("inflight")), (5, 5), "{usage}");
        gate.assert_nothing_reached_fal_and_still_serving().await;
    }

    /// On Redis a fixed-price submit is admitted at the precheck (`limits::early`, one round
    /// trip); refused inputs and replays give that admission back, so they consume nothing.
    #[tokio::test]
    async fn on_redis_refused_inputs_and_replays_give_back_their_early_admission() {
        let prefix = format!("it-{}", uuid::Uuid::new_v4());
        let config = "[limits]\n[limits.tiers.default]\nsubmit = { burst = 2, per_minute = 1 }\n\
                      daily_requests = 2\nmax_inflight_jobs = 2\n";
        let gate = on_redis(TestGate::builder().config(config), &prefix).spawn().await;
        for _ in 0..5 {
            for refused in submits(&gate, "{\"no_such_field\": 1}").await {
                gate.assert_refused(refused, 422, "validation_failed").await;
            }
        }
        gate.assert_nothing_reached_fal_and_still_serving().await;
        let send = |body: &'static str| {
            gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
                .header("idempotency-key", "click-1")
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        assert_eq!(send(r#"{"input_concept": "x"}"#).await.unwrap().status(), 200);
        for _ in 0..3 {
            let again = send(r#"{"input_concept": "x"}"#).await.unwrap();
            assert_eq!(again.headers()["idempotent-replayed"], "true");
        }
        // One request, one job, one place in the rate spent: the second submit still fits.
        gate.submit("alice", json!({"input_concept": "y"})).await;
        let third = gate
            .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "z"}))
            .await;
        // The day's 2 requests are spent (so are the rate's burst of 2 and the 2 jobs).
        gate.assert_refused(third, 403, "quota_exceeded").await;
        assert_eq!(gate.fal_saw().len(), 2);
    }
}

#[tokio::test]
async fn a_retry_of_an_answered_idempotent_submit_is_replayed_though_the_caller_is_over_its_limit() {
    let gate = TestGate::builder()
        .config("[limits]\n[limits.tiers.default]\nsubmit = { burst = 1, per_minute = 1 }\ndaily_requests = 1\n")
        .spawn()
        .await;
    let send = |key: &'static str, body: &'static str| {
        gate.as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send("click-1", r#"{"input_concept": "x"}"#).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send("click-1", r#"{"input_concept": "x"}"#).await.unwrap();
    assert_eq!(again.status(), 200, "the paid job's retry lost its answer");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["request_id"],
        first["request_id"]
    );
    let other = send("click-1", r#"{"input_concept": "y"}"#).await.unwrap();
    gate.assert_refused(other, 422, "idempotency_key_reused").await;
    // An unknown key buys no body read.
    let fresh = send("click-2", r#"{"no_such_field": 1}"#).await.unwrap();
    gate.assert_refused(fresh, 403, "quota_exceeded").await;
    assert_eq!(gate.fal_saw().len(), 1);
}
