//! The fake storage: `rest.fal.ai` upload initiation hands out a token, `PUT /_storage/upload/{token}`
//! stores the raw bytes in memory (at most `MAX_TOTAL_BYTES` overall, 413 beyond) and
//! `GET /_storage/files/{token}/{name}` serves them back with their content type.
//!
//! Multipart uploads, as `@fal-ai/client` makes them for files over 90 MiB: `initiate-multipart`
//! hands out `upload_url = /_storage/multipart/{token}`; each part is `PUT {upload_url}/{n}`
//! (answered `{"partNumber": n, "etag": …}`), then `POST {upload_url}/complete` with
//! `{"parts": [{"partNumber", "etag"}…]}` joins parts 1..n (each etag checked) into the file.

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
const MAX_TOTAL_BYTES: usize = 200 * 1024 * 1024;
/// The highest part number (S3's).
const MAX_PARTS: u32 = 10_000;

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
    /// A multipart upload's parts so far, by number.
    parts: Option<std::collections::BTreeMap<u32, Bytes>>,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
enum StorageError {
    #[error("unknown upload token")]
    UnknownToken,
    #[error("storage capacity exceeded")]
    TooLarge,
    #[error("{0}")]
    BadPart(&'static str),
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::UnknownToken => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadPart(_) => StatusCode::BAD_REQUEST,
        };
        detail(status, self.to_string())
    }
}

/// The CDN routes (not recorded, no auth: the JS client PUTs without credentials). Like fal's
/// CDN they answer any origin, so a browser app uploads straight to them (`falgate dev`).
pub(crate) fn routes() -> Router<Emulator> {
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([
            axum::http::Method::PUT,
            axum::http::Method::GET,
            axum::http::Method::POST,
        ])
        .allow_headers(tower_http::cors::Any);
    Router::new()
        .route("/_storage/upload/{token}", put(upload))
        .route("/_storage/files/{token}/{*name}", get(download))
        .route("/_storage/multipart/{token}/{part}", put(part).post(complete))
        .layer(cors)
}

/// `POST rest.fal.ai/storage/upload/initiate`: body `{"content_type", "file_name"}`, both optional.
pub(crate) fn initiate(store: &Store, base: &str, body: &[u8]) -> Response {
    initiate_as(store, base, body, false)
}

/// `POST rest.fal.ai/storage/upload/initiate-multipart`: the same body; the upload comes in parts.
pub(crate) fn initiate_multipart(store: &Store, base: &str, body: &[u8]) -> Response {
    initiate_as(store, base, body, true)
}

fn initiate_as(store: &Store, base: &str, body: &[u8], multipart: bool) -> Response {
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
            parts: multipart.then(Default::default),
        },
    );
    let kind = if multipart { "multipart" } else { "upload" };
    let body = json!({
        "upload_url": format!("{base}/_storage/{kind}/{token}"),
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

/// `PUT /_storage/multipart/{token}/{n}`: one part of a multipart upload.
async fn part(
    State(emulator): State<Emulator>,
    Path((token, number)): Path<(String, String)>,
    request: Request,
) -> Response {
    let store = &emulator.inner.storage;
    let Some(number) = number.parse::<u32>().ok().filter(|n| (1..=MAX_PARTS).contains(n)) else {
        return StorageError::BadPart("a part number is 1 to 10000").into_response();
    };
    let room = {
        let state = lock(&store.state);
        match state.uploads.get(&token) {
            Some(Upload { parts: Some(_), .. }) => {}
            _ => return StorageError::UnknownToken.into_response(),
        }
        MAX_TOTAL_BYTES.saturating_sub(state.total_bytes)
    };
    let Ok(bytes) = to_bytes(request.into_body(), room).await else {
        return StorageError::TooLarge.into_response();
    };
    let etag = etag_of(number, &bytes);
    let mut state = lock(&store.state);
    let Some(parts) = state.uploads.get_mut(&token).and_then(|u| u.parts.as_mut()) else {
        return StorageError::UnknownToken.into_response();
    };
    let previous = parts.insert(number, bytes.clone()).map_or(0, |old| old.len());
    let total = state.total_bytes - previous + bytes.len();
    if total > MAX_TOTAL_BYTES {
        if let Some(parts) = state.uploads.get_mut(&token).and_then(|u| u.parts.as_mut()) {
            parts.remove(&number);
        }
        state.total_bytes -= previous;
        return StorageError::TooLarge.into_response();
    }
    state.total_bytes = total;
    json_response(StatusCode::OK, &json!({ "partNumber": number, "etag": etag }))
}

/// `POST /_storage/multipart/{token}/complete`: joins parts 1..n, as listed with their etags.
async fn complete(
    State(emulator): State<Emulator>,
    Path((token, last)): Path<(String, String)>,
    request: Request,
) -> Response {
    if last != "complete" {
        return StorageError::BadPart("parts are PUT, completion is POST .../complete").into_response();
    }
    let Ok(body) = to_bytes(request.into_body(), 1024 * 1024).await else {
        return StorageError::BadPart("the completion body is too large").into_response();
    };
    let listed: Vec<(u32, String)> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("parts")?
                .as_array()?
                .iter()
                .map(|p| {
                    let number = u32::try_from(p.get("partNumber")?.as_u64()?).ok()?;
                    Some((number, p.get("etag")?.as_str()?.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut state = lock(&emulator.inner.storage.state);
    let Some(upload) = state.uploads.get_mut(&token) else {
        return StorageError::UnknownToken.into_response();
    };
    let Some(parts) = upload.parts.as_ref() else {
        return StorageError::UnknownToken.into_response();
    };
    let in_order = listed
        .iter()
        .enumerate()
        .all(|(i, (n, _))| usize::try_from(*n).ok() == Some(i + 1));
    let matching = listed
        .iter()
        .all(|(n, etag)| parts.get(n).is_some_and(|bytes| etag_of(*n, bytes) == *etag));
    if listed.is_empty() || !in_order || !matching || listed.len() != parts.len() {
        return StorageError::BadPart("the parts listed are not the parts uploaded").into_response();
    }
    let mut joined = Vec::with_capacity(parts.values().map(Bytes::len).sum());
    for bytes in parts.values() {
        joined.extend_from_slice(bytes);
    }
    upload.parts = None;
    upload.bytes = Some(Bytes::from(joined));
    json_response(StatusCode::OK, &json!({ "ok": true }))
}

/// A part's etag: its number and a hash of its bytes.
fn etag_of(number: u32, bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("\"{number}-{:016x}\"", hasher.finish())
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
