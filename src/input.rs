//! The request body of a call that carries one: declared JSON, uncompressed, bounded in size and
//! time. Whether it *is* valid JSON for the endpoint is `schema`'s step, on the bytes read here.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::GateError;

/// Reads the body: 415 unless declared JSON, 413 past `max_bytes`, 408 past `timeout`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, GateError> {
    if !is_json(headers) {
        return Err(GateError::NotJson);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(GateError::BodyTooLarge(max_bytes));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, max_bytes).collect())
        .await
        .map_err(|_| GateError::BodyTimeout)?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => return Err(GateError::BodyTooLarge(max_bytes)),
        Err(_) => return Err(GateError::Malformed("the request body could not be read".into())),
    };
    Ok(bytes)
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
        let input = read_body(&json_headers(), Body::from(r#"{"a": 1}"#), 64, SECOND)
            .await
            .unwrap();
        assert_eq!(&input[..], br#"{"a": 1}"#);
    }

    #[tokio::test]
    async fn each_bad_body_gets_its_own_error() {
        let text = HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))]);
        assert_eq!(
            read_body(&text, Body::from("{}"), 64, SECOND).await.unwrap_err().code(),
            "unsupported_media_type"
        );
        assert_eq!(
            read_body(&HeaderMap::new(), Body::from("{}"), 64, SECOND)
                .await
                .unwrap_err()
                .code(),
            "unsupported_media_type"
        );
        let mut gzip = json_headers();
        gzip.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            read_body(&gzip, Body::from("{}"), 64, SECOND).await.unwrap_err().code(),
            "unsupported_media_type"
        );
        assert_eq!(
            read_body(&json_headers(), Body::from("x".repeat(65)), 64, SECOND)
                .await
                .unwrap_err()
                .code(),
            "body_too_large"
        );
    }
}
