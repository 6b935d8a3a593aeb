//! The fake storage: `rest.fal.ai` upload initiation hands out a token, `PUT /_storage/upload/{token}`
//! stores the raw bytes in memory (at most `MAX_TOTAL_BYTES` overall, 413 beyond) and
//! `GET /_storage/files/{token}/{name}` serves them back with their content type.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde_json::{json, Value};

use super::status::{detail, json_response};
use super::{lock, Emulator};

/// Cap on the bytes held by all uploads together.
const MAX_TOTAL_BYTES: usize = 100 * 1024 * 1024;

/// Uploads by token.
#[derive(Default)]
pub(crate) struct Store {
    state: Mutex<Uploads>,
}

#[derive(Default)]
struct Uploads {
    uploads: HashMap<String, Upload>,
    total_bytes: usize,
}

struct Upload {
    content_type: String,
    bytes: Option<Bytes>,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
enum StorageError {
    #[error("unknown upload token")]
    UnknownToken,
    #[error("storage capacity exceeded")]
    TooLarge,
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::UnknownToken => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        };
        detail(status, self.to_string())
    }
}

/// The CDN routes (not recorded, no auth: the JS client PUTs without credentials). Like fal's
/// CDN they answer any origin, so a browser app uploads straight to them (`falgate dev`).
pub(crate) fn routes() -> Router<Emulator> {
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::PUT, axum::http::Method::GET])
        .allow_headers(tower_http::cors::Any);
    Router::new()
        .route("/_storage/upload/{token}", put(upload))
        .route("/_storage/files/{token}/{*name}", get(download))
        .layer(cors)
}

/// `POST rest.fal.ai/storage/upload/initiate`: body `{"content_type", "file_name"}`, both optional.
pub(crate) fn initiate(store: &Store, base: &str, body: &[u8]) -> Response {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        let item = json!({ "loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict" });
        return detail(StatusCode::UNPROCESSABLE_ENTITY, json!([item]));
    };
    let text = |name: &str, default: &str| request.get(name).and_then(Value::as_str).unwrap_or(default).to_owned();
    let content_type = text("content_type", "application/octet-stream");
    let file_name = text("file_name", "file.bin");
    let token = uuid::Uuid::new_v4().simple().to_string();
    lock(&store.state).uploads.insert(
        token.clone(),
        Upload {
            content_type,
            bytes: None,
        },
    );
    let body = json!({
        "upload_url": format!("{base}/_storage/upload/{token}"),
        "file_url": format!("{base}/_storage/files/{token}/{}", encode_segment(&file_name)),
    });
    json_response(StatusCode::OK, &body)
}

async fn upload(State(emulator): State<Emulator>, Path(token): Path<String>, request: Request) -> Response {
    let store = &emulator.inner.storage;
    let room = {
        let state = lock(&store.state);
        if !state.uploads.contains_key(&token) {
            return StorageError::UnknownToken.into_response();
        }
        MAX_TOTAL_BYTES.saturating_sub(state.total_bytes)
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let Ok(bytes) = to_bytes(request.into_body(), room).await else {
        return StorageError::TooLarge.into_response();
    };
    match store.put(&token, content_type, bytes) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn download(State(emulator): State<Emulator>, Path((token, _name)): Path<(String, String)>) -> Response {
    let state = lock(&emulator.inner.storage.state);
    let Some((content_type, Some(bytes))) = state
        .uploads
        .get(&token)
        .map(|u| (u.content_type.clone(), u.bytes.clone()))
    else {
        return detail(StatusCode::NOT_FOUND, "File not found");
    };
    let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
    let value = HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

impl Store {
    /// Stores (or replaces) the bytes of an initiated upload, keeping the total under the cap.
    fn put(&self, token: &str, content_type: Option<String>, bytes: Bytes) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let previous = state
            .uploads
            .get(token)
            .ok_or(StorageError::UnknownToken)?
            .bytes
            .as_ref()
            .map_or(0, Bytes::len);
        let total = state.total_bytes - previous + bytes.len();
        if total > MAX_TOTAL_BYTES {
            return Err(StorageError::TooLarge);
        }
        state.total_bytes = total;
        let upload = state.uploads.get_mut(token).ok_or(StorageError::UnknownToken)?;
        if let Some(content_type) = content_type {
            upload.content_type = content_type;
        }
        upload.bytes = Some(bytes);
        Ok(())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("a b/ü.png"), "a%20b%2F%C3%BC.png");
    }

    #[test]
    fn total_bytes_are_capped_and_replacements_are_counted_once() {
        let store = Store::default();
        let body = br#"{"content_type":"text/plain","file_name":"a.txt"}"#;
        let response = initiate(&store, "http://h", body);
        assert_eq!(response.status(), StatusCode::OK);
        let token = lock(&store.state).uploads.keys().next().cloned().unwrap_or_default();
        let half = Bytes::from(vec![0u8; MAX_TOTAL_BYTES / 2 + 1]);
        assert!(store.put(&token, None, half.clone()).is_ok());
        assert!(store.put(&token, None, half).is_ok(), "replacing must not double count");
        let full = Bytes::from(vec![0u8; MAX_TOTAL_BYTES + 1]);
        assert!(matches!(store.put(&token, None, full), Err(StorageError::TooLarge)));
        assert!(matches!(
            store.put("nope", None, Bytes::new()),
            Err(StorageError::UnknownToken)
        ));
    }
}
