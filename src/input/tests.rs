use axum::http::HeaderValue;

use super::*;
use crate::error::{GateError, OnTheWire};

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

fn limits(max_bytes: usize) -> BodyLimits {
    BodyLimits {
        max_bytes,
        timeout: SECOND,
        per_caller: 2,
    }
}

async fn read(headers: &HeaderMap, body: Body, max_bytes: usize) -> Result<Bytes, GateError> {
    read_body(headers, body, limits(max_bytes), &Bodies::new(1 << 20), "alice")
        .await
        .map(|(bytes, _)| bytes)
        .map_err(GateError::from)
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers
}

#[tokio::test]
async fn a_body_within_the_limit_is_kept_byte_for_byte() {
    let input = read(&json_headers(), Body::from(r#"{"a": 1}"#), 64).await.unwrap();
    assert_eq!(&input[..], br#"{"a": 1}"#);
}

#[tokio::test]
async fn each_bad_body_gets_its_own_error() {
    let text = HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))]);
    assert_eq!(
        read(&text, Body::from("{}"), 64).await.unwrap_err().code(),
        "unsupported_media_type"
    );
    assert_eq!(
        read(&HeaderMap::new(), Body::from("{}"), 64).await.unwrap_err().code(),
        "unsupported_media_type"
    );
    let mut gzip = json_headers();
    gzip.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    assert_eq!(
        read(&gzip, Body::from("{}"), 64).await.unwrap_err().code(),
        "unsupported_media_type"
    );
    assert_eq!(
        read(&json_headers(), Body::from("x".repeat(65)), 64)
            .await
            .unwrap_err()
            .code(),
        "body_too_large"
    );
}

/// Bodies held at once are bounded by the budget: one that cannot get room in time is 503
/// `overloaded`; the room comes back when the first body's charge is dropped.
#[tokio::test(start_paused = true)]
async fn bodies_past_the_budget_wait_then_are_refused_and_room_returns_when_released() {
    let budget = Bodies::new(4 * 1024);
    let body = || Body::from(format!("\"{}\"", "x".repeat(3000)));
    let (_, held) = read_body(&json_headers(), body(), limits(1 << 20), &budget, "alice")
        .await
        .unwrap();
    let refused = read_body(&json_headers(), body(), limits(1 << 20), &budget, "bob").await;
    assert_eq!(refused.unwrap_err().code(), "overloaded");
    drop(held);
    assert!(read_body(&json_headers(), body(), limits(1 << 20), &budget, "bob")
        .await
        .is_ok());
}

/// A declared length is not charged: bodies announced as large and not sent hold no budget,
/// so another caller's body is read at once (issue 20's body-pinning attack).
#[tokio::test(start_paused = true)]
async fn a_declared_length_that_never_arrives_holds_no_budget() {
    let bodies = Bodies::new(8 * 1024);
    let mut declared = json_headers();
    declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("8192"));
    let mut pending = Vec::new();
    for n in 0..3 {
        let body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let (headers, bodies) = (declared.clone(), bodies.clone());
        pending.push(tokio::spawn(async move {
            read_body(&headers, body, limits(8192), &bodies, &format!("mallory-{n}")).await
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(bodies.available_kib(), 8, "a declared length was charged");
    let (bytes, _charge) = read_body(&json_headers(), Body::from("{}"), limits(8192), &bodies, "bob")
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"{}");
    for task in pending {
        assert_eq!(task.await.unwrap().unwrap_err().code(), "body_timeout");
    }
}

/// One caller may have `per_caller` bodies in flight; the next is 429 before a byte is read,
/// another caller is not affected, and the place comes back when a read ends.
#[tokio::test(start_paused = true)]
async fn a_caller_past_its_bodies_in_flight_is_refused_and_others_are_not() {
    let bodies = Bodies::new(1 << 20);
    let first = bodies.start("mallory", 2).unwrap();
    let _second = bodies.start("mallory", 2).unwrap();
    let refused = read_body(&json_headers(), Body::from("{}"), limits(64), &bodies, "mallory").await;
    assert_eq!(refused.unwrap_err().code(), "concurrency_limited");
    assert!(read(&json_headers(), Body::from("{}"), 64).await.is_ok());
    assert!(read_body(&json_headers(), Body::from("{}"), limits(64), &bodies, "bob")
        .await
        .is_ok());
    drop(first);
    assert!(
        read_body(&json_headers(), Body::from("{}"), limits(64), &bodies, "mallory")
            .await
            .is_ok()
    );
    drop(_second);
    assert!(bodies.reading.lock().unwrap().is_empty(), "an entry outlived its reads");
}

/// A caller's bodies arriving at once hold at most a quarter of the budget (here 256 KiB of
/// 1 MiB): its next body is refused as it crosses the share, another caller is served, and
/// the share comes back with the bodies.
#[tokio::test]
async fn a_callers_bodies_hold_at_most_its_share_of_the_budget() {
    let bodies = Bodies::new(1 << 20);
    let limits = BodyLimits {
        max_bytes: 200 << 10,
        timeout: SECOND,
        per_caller: 4,
    };
    let mut held = bodies.start("mallory", 4).unwrap();
    assert!(held.grow_to(150 << 10, bodies.share.max(limits.max_bytes)));
    let body = Body::from(vec![b' '; 150 << 10]);
    let refused = read_body(&json_headers(), body, limits, &bodies, "mallory").await;
    assert_eq!(refused.unwrap_err().code(), "concurrency_limited");
    let body = Body::from(vec![b' '; 150 << 10]);
    assert!(read_body(&json_headers(), body, limits, &bodies, "bob").await.is_ok());
    drop(held);
    let body = Body::from(vec![b' '; 150 << 10]);
    assert!(read_body(&json_headers(), body, limits, &bodies, "mallory")
        .await
        .is_ok());
    assert!(bodies.reading.lock().unwrap().is_empty(), "an entry outlived its reads");
}
