//! What falgate forwards is what it checked (issue 12, items 2, 3, 4, 10 and 11), through both
//! route families: the proxy route (`x-fal-target-url`) and the REST routes.
//! Refusals carry falgate's code and reach nothing at fal; forwarded values reach fal canonical.

use std::process::Stdio;
use std::time::Duration;

use falgate::emulator::{FaultAction, Op};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{Process, TestGate, VPG};

const HOOKS: &str = "[webhooks]\nallowed_hosts = [\"hooks.example.com\"]\n";
const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

/// A POST with `body` to `path_and_query` (below the queue host) on the REST route
/// (`/api/fal/queue...`) and on the proxy route, with `headers`; the two responses.
async fn post_both(
    gate: &TestGate,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> [(reqwest::Response, &'static str); 2] {
    let mut rest = gate.as_alice(Method::POST, &format!("/api/fal/queue{path_and_query}"));
    let mut proxy = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header("x-fal-target-url", format!("https://queue.fal.run{path_and_query}"));
    for (name, value) in headers {
        rest = rest.header(*name, *value);
        proxy = proxy.header(*name, *value);
    }
    [
        (rest.json(body).send().await.unwrap(), "malformed_request"),
        (proxy.json(body).send().await.unwrap(), "invalid_target"),
    ]
}

fn webhook_query(hook: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("fal_webhook", hook)
        .finish()
}

/// The `fal_webhook` value fal received in each request it saw.
fn webhooks_fal_saw(gate: &TestGate) -> Vec<String> {
    gate.fal_saw()
        .iter()
        .map(|seen| {
            let query = seen.query.as_deref().unwrap_or_default();
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            assert_eq!(pairs.len(), 1, "{query}");
            assert_eq!(pairs[0].0, "fal_webhook");
            pairs[0].1.clone()
        })
        .collect()
}

#[tokio::test]
async fn a_webhook_two_parsers_could_read_differently_is_400_on_both_routes() {
    let gate = TestGate::builder().config(HOOKS).spawn().await;
    for hook in [
        "https://hooks.example.com\\@evil.example/h",
        "https://hooks%2Eexample.com/h",
        "https://hooks.example.com%2F@evil.example/h",
        "https://hooks.example.com\t/h",
        "https://hooks.example.com/h#x",
    ] {
        let path = format!("/{VPG}?{}", webhook_query(hook));
        for (response, code) in post_both(&gate, &path, &[], &json!({"input_concept": "x"})).await {
            gate.assert_refused(response, 400, code).await;
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn fal_receives_the_webhook_in_the_canonical_form_that_was_checked() {
    let gate = TestGate::builder().config(HOOKS).spawn().await;
    for (hook, canonical) in [
        ("https://hooks.example.com/h?run=1", "https://hooks.example.com/h?run=1"),
        ("https://HOOKS.example.com:443/a/../h", "https://hooks.example.com/h"),
        ("https://hooks.example.com", "https://hooks.example.com/"),
    ] {
        gate.emulator.clear_requests();
        let path = format!("/{VPG}?{}", webhook_query(hook));
        for (response, _) in post_both(&gate, &path, &[], &json!({"input_concept": "x"})).await {
            assert_eq!(response.status(), 200, "{hook}");
        }
        assert_eq!(webhooks_fal_saw(&gate), [canonical, canonical], "{hook}");
    }
}

#[tokio::test]
async fn non_canonical_queue_paths_are_400_on_both_routes() {
    let gate = TestGate::spawn().await;
    for path in [
        format!("//{VPG}"),
        format!("/{VPG}/REQUESTS/{ID}"),
        format!("/{VPG}/Requests/{ID}/status"),
        format!("/{VPG}/sub/REQUESTS"),
    ] {
        for (response, code) in post_both(&gate, &path, &[], &json!({"input_concept": "x"})).await {
            gate.assert_refused(response, 400, code).await;
        }
    }
    // The run routes: `/api/fal/run/...` and `fal.run` targets.
    let response = gate
        .post_as_alice(&format!("/api/fal/run//{VPG}"), &json!({"input_concept": "x"}))
        .await;
    gate.assert_refused(response, 400, "malformed_request").await;
    let response = gate
        .proxy_post_as_alice(&format!("https://fal.run//{VPG}"), &json!({"input_concept": "x"}))
        .await;
    gate.assert_refused(response, 400, "invalid_target").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_400_on_both_routes() {
    let gate = TestGate::spawn().await;
    let addr = gate.url.trim_start_matches("http://").to_owned();
    let body = r#"{"input_concept":"x"}"#;
    for (path, extra) in [
        (format!("/api/fal/queue/{VPG}"), String::new()),
        (
            "/api/fal/proxy".to_owned(),
            format!("x-fal-target-url: https://queue.fal.run/{VPG}\r\n"),
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nAuthorization: Bearer {}\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            gate.token("alice"),
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("x-falgate-error: malformed_request"), "{answer}");
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

/// fal's caching headers, injected on the emulator's answers.
fn fal_cache_headers() -> Vec<(String, String)> {
    [
        ("cache-control", "public, max-age=3600"),
        ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ("etag", "\"fal-etag\""),
        ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("age", "12"),
        ("vary", "Accept-Encoding"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn assert_private(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    let all = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("cache-control"), ["no-store"], "{what}");
    assert_eq!(all("vary"), ["Authorization, Cookie, Origin"], "{what}");
    for name in ["expires", "etag", "last-modified", "age"] {
        assert!(all(name).is_empty(), "{what}: {name} relayed");
    }
}

#[tokio::test]
async fn every_answer_under_api_fal_is_private_and_fal_caching_headers_never_pass() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let status = format!("/{VPG}/requests/{id}/status");
    let result = format!("/{VPG}/requests/{id}");
    gate.fault(
        Op::Status,
        FaultAction::Status {
            status: 200,
            body: json!({"status": "IN_QUEUE", "queue_position": 0, "request_id": id}),
            headers: fal_cache_headers(),
        },
    );
    gate.fault(
        Op::Result,
        FaultAction::Status {
            status: 500,
            body: json!({"detail": "boom"}),
            headers: fal_cache_headers(),
        },
    );
    for (path, what) in [(&status, "status"), (&result, "a fal error")] {
        let rest = gate.get_as_alice(&format!("/api/fal/queue{path}")).await;
        assert_private(&rest, &format!("REST {what}"));
        let proxy = gate
            .as_alice(Method::GET, "/api/fal/proxy")
            .header("x-fal-target-url", format!("https://queue.fal.run{path}"))
            .send()
            .await
            .unwrap();
        assert_private(&proxy, &format!("proxy {what}"));
    }
    let submit = gate
        .proxy_post_as_alice(&format!("https://queue.fal.run/{VPG}"), &json!({"input_concept": "x"}))
        .await;
    assert_eq!(submit.status(), 200);
    assert_private(&submit, "proxy submit");
    let stream = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status/stream"))
        .await;
    assert_eq!(stream.status(), 200);
    assert_private(&stream, "status stream");
    drop(stream);
    // Refusals: no token (401), a bad path (400), a bad target (400), no such route.
    let anonymous = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .send()
        .await
        .unwrap();
    assert_private(&anonymous, "401");
    assert_private(&gate.post_as_alice("/api/fal/queue/x", &json!({})).await, "400");
    let bad_target = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header("x-fal-target-url", "https://evil.example/x")
        .send()
        .await
        .unwrap();
    assert_private(&bad_target, "400 target");
}

const TIERS: &str = r#"
[tiers.free]
[tiers.free.fal_headers]
runner_hint = "drop"
no_retry = "drop"
disable_fallbacks = "drop"
max_request_timeout_seconds = 60
max_object_expiration_seconds = 3600
store_io = "off"
[tiers.locked]
[tiers.locked.fal_headers]
object_lifecycle = { expiration_duration_seconds = 600, initial_acl = { default = "forbid" } }
[tiers.pro]
"#;

/// A submit of `vpg` as `sub` in `tier` on both routes with `headers`; the two responses.
async fn submit_both_as(gate: &TestGate, tier: &str, headers: &[(&str, &str)]) -> Vec<reqwest::Response> {
    let token = gate.tier_token("alice", tier);
    let mut rest = gate.client.post(format!("{}/api/fal/queue/{VPG}", gate.url));
    let mut proxy = gate
        .client
        .post(format!("{}/api/fal/proxy", gate.url))
        .header("x-fal-target-url", format!("https://queue.fal.run/{VPG}"));
    for (name, value) in headers {
        rest = rest.header(*name, *value);
        proxy = proxy.header(*name, *value);
    }
    let body = json!({"input_concept": "x"});
    vec![
        rest.bearer_auth(&token).json(&body).send().await.unwrap(),
        proxy.bearer_auth(&token).json(&body).send().await.unwrap(),
    ]
}

/// The `x-fal-*` headers of each request fal saw (names lower case), then forgotten.
fn fal_headers_seen(gate: &TestGate) -> Vec<Vec<(String, String)>> {
    let seen = gate
        .fal_saw()
        .into_iter()
        .map(|request| {
            let mut headers: Vec<_> = request
                .headers
                .into_iter()
                .filter(|(k, _)| k.starts_with("x-fal-"))
                .collect();
            headers.sort();
            headers
        })
        .collect();
    gate.emulator.clear_requests();
    seen
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<_> = list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    out.sort();
    out
}

#[tokio::test]
async fn invalid_fal_header_values_are_400_on_both_routes() {
    let gate = TestGate::builder().config(TIERS).spawn().await;
    for (name, value) in [
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":60,"expiration_duration_seconds":999999999}"#,
        ),
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":60,"x":1}"#,
        ),
        (
            "x-fal-object-lifecycle-preference",
            r#"{"initial_acl":{"default":"public"}}"#,
        ),
        ("x-fal-runner-hint", "two words"),
        ("x-fal-request-timeout", "1e9"),
        ("x-fal-no-retry", "maybe"),
        ("x-fal-disable-fallbacks", "maybe"),
        ("x-fal-store-io", "no"),
    ] {
        for response in submit_both_as(&gate, "pro", &[(name, value)]).await {
            gate.assert_refused(response, 400, "malformed_request").await;
        }
    }
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn fal_headers_reach_fal_canonical_and_as_the_tier_allows_caps_or_forces_them() {
    let gate = TestGate::builder().config(TIERS).spawn().await;
    let sent = [
        ("x-fal-runner-hint", "session-7"),
        ("x-fal-no-retry", "yes"),
        ("x-fal-disable-fallbacks", "yes"),
        ("x-fal-request-timeout", "600.0"),
        (
            "x-fal-object-lifecycle-preference",
            r#"{ "initial_acl": {"default": "hide"}, "expiration_duration_seconds": 86400 }"#,
        ),
        ("x-fal-store-io", "1"),
        ("x-fal-queue-priority", "low"),
    ];
    // pro: everything passes, in canonical form.
    for response in submit_both_as(&gate, "pro", &sent).await {
        assert_eq!(response.status(), 200);
    }
    let canonical = pairs(&[
        ("x-fal-runner-hint", "session-7"),
        ("x-fal-no-retry", "1"),
        ("x-fal-disable-fallbacks", "true"),
        ("x-fal-request-timeout", "600"),
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":86400,"initial_acl":{"default":"hide"}}"#,
        ),
        ("x-fal-store-io", "1"),
        ("x-fal-queue-priority", "low"),
    ]);
    assert_eq!(fal_headers_seen(&gate), [canonical.clone(), canonical]);
    // free: the hint, no-retry and disable-fallbacks dropped, the timeout and expiration capped, store-io forced off.
    for response in submit_both_as(&gate, "free", &sent).await {
        assert_eq!(response.status(), 200);
    }
    let capped = pairs(&[
        ("x-fal-request-timeout", "60"),
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":3600,"initial_acl":{"default":"hide"}}"#,
        ),
        ("x-fal-store-io", "0"),
        ("x-fal-queue-priority", "low"),
    ]);
    assert_eq!(fal_headers_seen(&gate), [capped.clone(), capped]);
    // free without any header: store-io forced off anyway, the absent expiration set to the cap.
    for response in submit_both_as(&gate, "free", &[]).await {
        assert_eq!(response.status(), 200);
    }
    let forced = pairs(&[
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":3600}"#,
        ),
        ("x-fal-store-io", "0"),
    ]);
    assert_eq!(fal_headers_seen(&gate), [forced.clone(), forced]);
    // locked: the operator's lifecycle replaces the caller's, and is set when none was sent.
    for headers in [&sent[4..5], &[]] {
        for response in submit_both_as(&gate, "locked", headers).await {
            assert_eq!(response.status(), 200);
        }
        let locked = pairs(&[(
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":600,"initial_acl":{"default":"forbid"}}"#,
        )]);
        assert_eq!(fal_headers_seen(&gate), [locked.clone(), locked]);
    }
}

#[tokio::test]
async fn caller_text_cannot_break_a_text_log_line() {
    let gate = TestGate::spawn().await;
    let env = [("FALGATE_LOG__FORMAT", "text"), ("RUST_LOG", "info")];
    let mut falgate = Process::serve_with_stderr(&gate.fal_url, &env, Stdio::piped()).await;
    let mut stderr = BufReader::new(falgate.child.stderr.take().unwrap()).lines();
    let client = crate::support::client();
    let token = gate.token("alice");
    // A duplicate key holding a newline, a carriage return, a terminal escape and the Unicode
    // line and paragraph separators, sent through both route families.
    let body = "{\"k\\n\\r\\u001b[2J\\u2028\\u2029FORGED\":1,\"k\\n\\r\\u001b[2J\\u2028\\u2029FORGED\":2}";
    let rest = client.post(format!("{}/api/fal/queue/{VPG}", falgate.url));
    let proxy = client
        .post(format!("{}/api/fal/proxy", falgate.url))
        .header("x-fal-target-url", format!("https://queue.fal.run/{VPG}"));
    for request in [rest, proxy] {
        let response = request
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let request_id = response.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
        let read = async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if line.contains("FORGED") {
                    return line;
                }
            }
            panic!("stderr ended");
        };
        let line = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a refused line");
        assert!(line.contains(&request_id) && line.contains("invalid_json"), "{line}");
        assert!(
            !line.contains(['\r', '\u{1b}', '\u{2028}', '\u{2029}', '\u{85}']),
            "{line:?}"
        );
    }
    drop(falgate);
}
