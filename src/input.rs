//! The request body of a call that carries one: declared JSON, uncompressed, bounded in size and
//! time, and charged to the process's body budget (`request.body_budget_bytes`) while it is held,
//! so many large bodies at once cannot outgrow the memory limit (past it: 503 `overloaded`,
//! nothing sent to fal). Whether it *is* valid JSON for the endpoint is `schema`'s step, on the
//! bytes read here.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use bytes::BytesMut;

use crate::error::GateError;
use crate::upstream::budget::{Budget, Charge};

/// Reads the body: 415 unless declared JSON, 413 past `max_bytes`, 408 past `timeout`, 503 when
/// `budget` has no room for it within `timeout`. The charge is held as long as the bytes are.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
    timeout: std::time::Duration,
    budget: &Budget,
) -> Result<(Bytes, Charge), GateError> {
    if !is_json(headers) {
        return Err(GateError::NotJson);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(GateError::BodyTooLarge(max_bytes));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut charge = Charge::default();
    if let Some(len) = declared {
        reserve(budget, &mut charge, usize::try_from(len).unwrap_or(max_bytes), deadline).await?;
    }
    let mut bytes = BytesMut::new();
    let mut body = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut body)).await {
            Err(_) => return Err(GateError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(GateError::Malformed("the request body could not be read".into())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let size = bytes.len() + chunk.len();
        if size > max_bytes {
            return Err(GateError::BodyTooLarge(max_bytes));
        }
        reserve(budget, &mut charge, size, deadline).await?;
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes.freeze(), charge))
}

/// Grows `charge` to `size` bytes, waiting for room until `deadline`.
async fn reserve(
    budget: &Budget,
    charge: &mut Charge,
    size: usize,
    deadline: tokio::time::Instant,
) -> Result<(), GateError> {
    if budget.try_grow(charge, size) {
        return Ok(());
    }
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
    budget
        .grow(charge, size, wait)
        .await
        .map_err(|()| GateError::Overloaded)
}

/// `application/json` (parameters allowed), not compressed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let identity = headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    essence.eq_ignore_ascii_case("application/json") && identity
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

    async fn read(headers: &HeaderMap, body: Body, max_bytes: usize) -> Result<Bytes, GateError> {
        read_body(headers, body, max_bytes, SECOND, &Budget::new(1 << 20))
            .await
            .map(|(bytes, _)| bytes)
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
        let budget = Budget::new(4 * 1024);
        let body = || Body::from(format!("\"{}\"", "x".repeat(3000)));
        let (_, held) = read_body(&json_headers(), body(), 1 << 20, SECOND, &budget)
            .await
            .unwrap();
        let refused = read_body(&json_headers(), body(), 1 << 20, SECOND, &budget).await;
        assert_eq!(refused.unwrap_err().code(), "overloaded");
        drop(held);
        assert!(read_body(&json_headers(), body(), 1 << 20, SECOND, &budget)
            .await
            .is_ok());
    }
}
