use std::sync::Arc;

use axum::http::HeaderName;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::client::refused_unprocessed;
use super::*;
use crate::error::GateError;
use crate::fal::headers::{ObjectLifecycle, RequestTimeout};
use crate::policy::{FalHeaderRules, Forward, StoreIo};
use crate::telemetry::trace_context::TraceParent;

/// An HTTP/2 (cleartext) server that answers stream `n` (from 0) with `reset(n)`'s reason,
/// or 200 when that is `None`; returns its address and the count of streams it saw.
async fn h2_server(
    reset: fn(usize) -> Option<h2::Reason>,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(socket).await.unwrap();
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    match reset(counter.fetch_add(1, Ordering::SeqCst)) {
                        Some(reason) => respond.send_reset(reason),
                        None => {
                            let answer = http::Response::builder().status(200).body(()).unwrap();
                            respond.send_response(answer, true).unwrap();
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

fn post(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/fal-ai/flux/dev"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// A request an HTTP/2 server refused unprocessed (REFUSED_STREAM) is sent once more, and
/// only once; any other reset is not retried (fal may have acted on it).
#[tokio::test]
async fn a_request_refused_unprocessed_over_http2_is_retried_exactly_once() {
    use std::sync::atomic::Ordering;
    let (addr, seen) = h2_server(|n| (n == 0).then_some(h2::Reason::REFUSED_STREAM)).await;
    let answer = send_retrying_refused(&h2_client(), post(addr)).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "one retry");

    let (addr, seen) = h2_server(|_| Some(h2::Reason::REFUSED_STREAM)).await;
    let err = send_retrying_refused(&h2_client(), post(addr)).await.unwrap_err();
    assert!(refused_unprocessed(&err));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "refused twice: no third try");

    let (addr, seen) = h2_server(|n| (n == 0).then_some(h2::Reason::INTERNAL_ERROR)).await;
    let err = send_retrying_refused(&h2_client(), post(addr)).await.unwrap_err();
    assert!(!refused_unprocessed(&err));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a reset after processing is never retried"
    );
}

fn submit() -> Call {
    crate::fal::parse_target("https://queue.fal.run/fal-ai/flux/dev").unwrap()
}

fn forwarded(inbound: &HeaderMap) -> Result<HeaderMap, GateError> {
    forwarded_headers(inbound, &submit(), &FalHeaderRules::default()).map_err(GateError::from)
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect()
}

#[test]
fn fal_header_values_are_forwarded_in_canonical_form() {
    let out = forwarded(&headers(&[
        ("x-fal-request-timeout", "30.0"),
        ("x-fal-no-retry", "yes"),
        ("x-fal-disable-fallbacks", "1"),
        ("x-fal-store-io", "0"),
        ("x-fal-runner-hint", "session-42"),
        (
            "x-fal-object-lifecycle-preference",
            r#"{ "initial_acl": {"default": "forbid"}, "expiration_duration_seconds": 60 }"#,
        ),
    ]))
    .unwrap();
    assert_eq!(out["x-fal-request-timeout"], "30");
    assert_eq!(out["x-fal-no-retry"], "1");
    assert_eq!(out["x-fal-disable-fallbacks"], "true");
    assert_eq!(out["x-fal-store-io"], "0");
    assert_eq!(out["x-fal-runner-hint"], "session-42");
    assert_eq!(
        out["x-fal-object-lifecycle-preference"],
        r#"{"expiration_duration_seconds":60,"initial_acl":{"default":"forbid"}}"#
    );
    assert!(!forwarded(&headers(&[("x-fal-no-retry", "0")]))
        .unwrap()
        .contains_key("x-fal-no-retry"));
    assert!(!forwarded(&headers(&[("x-fal-disable-fallbacks", "false")]))
        .unwrap()
        .contains_key("x-fal-disable-fallbacks"));
}

#[test]
fn tier_rules_drop_cap_and_force_fal_headers() {
    let rules = FalHeaderRules {
        runner_hint: Forward::Drop,
        no_retry: Forward::Drop,
        disable_fallbacks: Forward::Drop,
        max_request_timeout: Some(RequestTimeout::new(60.0).unwrap()),
        max_object_expiration_seconds: Some(3600),
        object_lifecycle: None,
        store_io: StoreIo::Off,
    };
    let inbound = headers(&[
        ("x-fal-runner-hint", "a"),
        ("x-fal-no-retry", "1"),
        ("x-fal-disable-fallbacks", "true"),
        ("x-fal-request-timeout", "600"),
        ("x-fal-object-lifecycle", r#"{"expiration_duration_seconds":86400}"#),
        ("x-fal-store-io", "1"),
    ]);
    let out = forwarded_headers(&inbound, &submit(), &rules).unwrap();
    assert!(!out.contains_key("x-fal-runner-hint") && !out.contains_key("x-fal-no-retry"));
    assert!(!out.contains_key("x-fal-disable-fallbacks"));
    assert_eq!(out["x-fal-request-timeout"], "60");
    assert_eq!(out["x-fal-object-lifecycle"], r#"{"expiration_duration_seconds":3600}"#);
    assert_eq!(out["x-fal-store-io"], "0");
    let short = headers(&[("x-fal-request-timeout", "5")]);
    assert_eq!(
        forwarded_headers(&short, &submit(), &rules).unwrap()["x-fal-request-timeout"],
        "5"
    );
    let forced = FalHeaderRules {
        object_lifecycle: Some(ObjectLifecycle::parse(r#"{"expiration_duration_seconds":60}"#).unwrap()),
        ..FalHeaderRules::default()
    };
    let out = forwarded_headers(&inbound, &submit(), &forced).unwrap();
    assert_eq!(
        out["x-fal-object-lifecycle-preference"],
        r#"{"expiration_duration_seconds":60}"#
    );
    assert!(!out.contains_key("x-fal-object-lifecycle"));
}

#[test]
fn only_allowlisted_headers_are_forwarded() {
    let mut inbound = HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer t"),
        ("cookie", "a=b"),
        ("x-fal-target-url", "https://fal.run/a/b"),
        ("x-fal-queue-priority", "low"),
        ("connection", "keep-alive"),
        ("x-fal-client-proxy", "x"),
        ("accept", "text/event-stream"),
    ] {
        inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let out = forwarded(&inbound).unwrap();
    let mut names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "traceparent", "x-fal-queue-priority"]);
}

#[test]
fn invalid_fal_header_values_are_refused() {
    for (k, v) in [
        ("x-fal-queue-priority", "urgent"),
        ("x-fal-request-timeout", "1"),
        ("x-fal-request-timeout", "NaN"),
        ("x-fal-runner-hint", "has space"),
        ("x-fal-no-retry", "please"),
        ("x-fal-disable-fallbacks", "please"),
        ("x-fal-store-io", "false"),
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":1,"expiration_duration_seconds":2}"#,
        ),
    ] {
        let mut inbound = HeaderMap::new();
        inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        assert!(forwarded(&inbound).is_err(), "{k}: {v}");
    }
}

#[test]
fn a_valid_traceparent_and_its_state_pass_and_anything_else_gets_a_fresh_one() {
    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with = |pairs: &[(&'static str, &'static str)]| {
        let mut inbound = HeaderMap::new();
        for (k, v) in pairs {
            inbound.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        forwarded(&inbound).unwrap()
    };
    let kept = with(&[("traceparent", CALLER), ("tracestate", "vendor=abc")]);
    assert_eq!(kept["traceparent"], CALLER);
    assert_eq!(kept["tracestate"], "vendor=abc");
    for bad in [
        &[][..],
        &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")],
        &[("traceparent", CALLER), ("traceparent", CALLER)],
        &[("traceparent", "garbage"), ("tracestate", "vendor=abc")],
    ] {
        let out = with(bad);
        let sent = out["traceparent"].to_str().unwrap();
        assert!(TraceParent::parse(sent.as_bytes()).is_some(), "{sent}");
        assert_ne!(sent, CALLER);
        assert!(!out.contains_key("tracestate"), "{bad:?}");
    }
}

#[test]
fn the_request_id_is_forwarded_only_when_plain() {
    let mut inbound = HeaderMap::new();
    inbound.insert("x-request-id", HeaderValue::from_static("3f2c9a1e-0b7d"));
    assert_eq!(forwarded(&inbound).unwrap()["x-request-id"], "3f2c9a1e-0b7d");
    inbound.insert("x-request-id", HeaderValue::from_static("a b"));
    assert!(!forwarded(&inbound).unwrap().contains_key("x-request-id"));
}
