//! fal's response shapes: request URLs built from the caller's Host, status bodies for each
//! phase, and the small JSON error bodies (`{"detail": ...}`) fal answers with.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::queue::{JobView, Phase};

/// Response header carrying the request id, read by both official clients.
pub(crate) const REQUEST_ID_HEADER: &str = "x-fal-request-id";

/// The absolute URLs of one request, as returned on submit and in every status body.
pub(crate) struct Urls {
    pub(crate) request_id: String,
    pub(crate) response_url: String,
    pub(crate) status_url: String,
    pub(crate) cancel_url: String,
}

impl Urls {
    /// URLs under `base` (`http://host`) for `id` in `app` (the subpath is never part of them).
    pub(crate) fn new(base: &str, app: &str, id: &str) -> Self {
        let response_url = format!("{base}/{app}/requests/{id}");
        Self {
            request_id: id.to_owned(),
            status_url: format!("{response_url}/status"),
            cancel_url: format!("{response_url}/cancel"),
            response_url,
        }
    }

    fn insert_into(&self, body: &mut Value) {
        body["request_id"] = json!(self.request_id);
        body["response_url"] = json!(self.response_url);
        body["status_url"] = json!(self.status_url);
        body["cancel_url"] = json!(self.cancel_url);
    }
}

/// `http://<Host>` of the incoming request (HTTP/2 authority as fallback, then `localhost`).
pub(crate) fn base_url(headers: &HeaderMap, authority: Option<&str>) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .or(authority)
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// The status body of `snapshot`; `logs` is `None` when the caller did not ask for logs.
pub(crate) fn status_body(snapshot: &JobView, urls: &Urls, logs: Option<&[Value]>) -> Value {
    let mut body = json!({ "status": snapshot.phase.as_str() });
    urls.insert_into(&mut body);
    let logs = logs.map_or(Value::Null, |logs| Value::Array(logs.to_vec()));
    match snapshot.phase {
        Phase::InQueue => body["queue_position"] = json!(snapshot.queue_position),
        Phase::InProgress => body["logs"] = logs,
        Phase::Completed => {
            body["logs"] = logs;
            body["metrics"] = snapshot
                .inference_time
                .map_or_else(|| json!({}), |seconds| json!({ "inference_time": seconds }));
            if let Some((error, error_type)) = failure(snapshot) {
                body["error"] = json!(error);
                body["error_type"] = json!(error_type);
            }
        }
    }
    body
}

/// The `error`/`error_type` pair of a completed request that did not succeed.
pub(crate) fn failure(snapshot: &JobView) -> Option<(&'static str, String)> {
    use super::model::ModelResult;
    if snapshot.cancelled {
        return Some(("Request was cancelled", "request_cancelled".into()));
    }
    match &snapshot.outcome {
        ModelResult::Invalid(_) => Some(("Invalid status code: 422", "validation_error".into())),
        ModelResult::Failed(error_type) => Some(("Invalid status code: 500", error_type.clone())),
        ModelResult::Output(_) => None,
    }
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"detail": <detail>}` with `status`.
pub(crate) fn detail(status: StatusCode, detail: impl Into<Value>) -> Response {
    json_response(status, &json!({ "detail": detail.into() }))
}

/// Adds the `x-fal-request-id` header.
pub(crate) fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
