//! Injectable failures: a fault matches by operation and path substring, is consulted in
//! insertion order (first match wins) and is removed once its `times` budget is spent.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::lock;

/// How long a broken body waits after its first chunk, so the headers reach the client.
pub(crate) const FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// A fal operation, as a fault selector and in recorded routing decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `POST queue/{endpoint}`.
    Submit,
    /// `GET queue/{app}/requests/{id}/status`.
    Status,
    /// `GET queue/{app}/requests/{id}/status/stream` (SSE).
    StatusStream,
    /// `GET queue/{app}/requests/{id}`.
    Result,
    /// `PUT queue/{app}/requests/{id}/cancel`.
    Cancel,
    /// `POST fal.run/{endpoint}`.
    Run,
    /// `POST fal.run/{endpoint}/stream` (SSE of partial outputs).
    RunStream,
    /// `POST rest.fal.ai/storage/upload/initiate`.
    StorageInitiate,
    /// `POST rest.fal.ai/storage/upload/initiate-multipart`.
    StorageInitiateMultipart,
    /// `POST rest.fal.ai/tokens/`.
    Token,
    /// `POST rest.fal.ai/tokens/realtime`.
    RealtimeToken,
}

/// One injected failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// Only requests of this operation match; `None` matches every fal request.
    #[serde(default)]
    pub op: Option<Op>,
    /// Only requests whose path contains this substring match; `None` matches any path.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// What to do instead of (or before) the normal handling.
    pub action: FaultAction,
    /// How many hits remain; `None` means forever. Decremented per hit, removed at zero.
    #[serde(default)]
    pub times: Option<u32>,
}

/// What a matching fault does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultAction {
    /// Answer with this status, JSON body and extra headers instead of handling the request.
    Status {
        /// HTTP status code (an invalid code answers 500).
        status: u16,
        /// JSON body.
        body: serde_json::Value,
        /// Extra response headers (invalid names or values are skipped).
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// Wait this long, then handle the request normally.
    Stall {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Answer 200 with `content-type: application/json` and a body that is not JSON.
    Garbage,
    /// Send 200 headers and a partial body, then break the connection.
    Drop,
    /// On an event stream (status or run), send this many events then break the connection;
    /// elsewhere `Drop`.
    StreamDrop {
        /// Events sent before the break.
        after_events: u32,
    },
    /// On an event stream (status or run), send this many events, then hold the stream open
    /// until `POST /_emulator/release` names `key` (at most [`MAX_HOLD`]); elsewhere no effect.
    /// Lets a test prove an event arrived before the stream ended, without timing.
    Hold {
        /// Events sent before the hold.
        after_events: u32,
        /// The name the release gives.
        key: String,
    },
    /// On a submit (handled normally otherwise): its job fails on fal's side with `fail` as its
    /// `error_type`, and/or every delivery of its `fal_webhook` is tampered with as `tamper`
    /// says. Elsewhere no effect.
    Webhook {
        /// How each delivery is spoiled (none: delivered as fal would).
        #[serde(default)]
        tamper: Option<Tamper>,
        /// The job fails with this `error_type` (e.g. `runner_disconnected`).
        #[serde(default)]
        fail: Option<String>,
    },
}

/// How a webhook delivery is spoiled ([`FaultAction::Webhook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// One bit of the signature flipped.
    BadSignature,
    /// Signed with a timestamp an hour old.
    StaleTimestamp,
    /// Signed (validly) for another fal user id.
    WrongUser,
    /// Each delivery sent twice.
    Duplicate,
}

/// The longest a `Hold` keeps a stream waiting for its release.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(30);

/// The ordered, shared fault list.
#[derive(Default)]
pub(crate) struct FaultList {
    faults: Mutex<Vec<Fault>>,
}

impl FaultList {
    pub(crate) fn add(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    pub(crate) fn clear(&self) {
        lock(&self.faults).clear();
    }

    /// Finds the first fault matching `op` and `path`, spends one of its hits and returns its action.
    pub(crate) fn take(&self, op: Option<Op>, path: &str) -> Option<FaultAction> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|fault| fault.matches(op, path))?;
        let fault = &mut faults[index];
        let action = fault.action.clone();
        if let Some(times) = fault.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                faults.remove(index);
            }
        }
        Some(action)
    }
}

impl Fault {
    fn matches(&self, op: Option<Op>, path: &str) -> bool {
        let op_ok = self.op.is_none_or(|wanted| Some(wanted) == op);
        let path_ok = self.path_contains.as_deref().is_none_or(|part| path.contains(part));
        // A `times: Some(0)` fault is already spent.
        op_ok && path_ok && self.times != Some(0)
    }
}

/// The canned `Status` answer.
pub(crate) fn status_response(status: u16, body: &serde_json::Value, headers: &[(String, String)]) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(body)).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A 200 JSON-typed answer whose body does not parse as JSON.
pub(crate) fn garbage_response() -> Response {
    json_typed(StatusCode::OK, Body::from("<html>upstream garbage {not json"))
}

/// A 200 answer whose body breaks after a partial chunk.
pub(crate) fn drop_response() -> Response {
    let partial = futures_util::stream::once(async { Ok(Bytes::from_static(b"{\"partial\":")) });
    // The pause lets the server flush the headers and first chunk before the abort.
    let broken = futures_util::stream::once(async {
        tokio::time::sleep(FLUSH_PAUSE).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "emulated connection drop",
        ))
    });
    json_typed(StatusCode::OK, Body::from_stream(partial.chain(broken)))
}

fn json_typed(status: StatusCode, body: Body) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(op: Option<Op>, path: Option<&str>, times: Option<u32>) -> Fault {
        Fault {
            op,
            path_contains: path.map(str::to_owned),
            action: FaultAction::Garbage,
            times,
        }
    }

    #[test]
    fn first_matching_fault_wins_and_spent_faults_disappear() {
        let list = FaultList::default();
        list.add(fault(Some(Op::Status), None, Some(2)));
        list.add(fault(None, Some("/flux/"), None));
        assert!(list.take(Some(Op::Result), "/a/b/requests/x").is_none());
        assert!(list.take(Some(Op::Status), "/a/b").is_some());
        assert!(list.take(Some(Op::Status), "/a/b").is_some());
        assert!(
            list.take(Some(Op::Status), "/a/b").is_none(),
            "times=2 fault must be removed"
        );
        assert!(list.take(None, "/fal-ai/flux/dev").is_some());
        assert!(
            list.take(None, "/fal-ai/flux/dev").is_some(),
            "times=None lasts forever"
        );
    }

    #[test]
    fn fault_json_uses_kind_tag_and_default_headers() {
        let json = r#"{"op":"status_stream","action":{"kind":"status","status":503,"body":{}}}"#;
        let parsed: Fault = serde_json::from_str(json).expect("fault json");
        assert_eq!(parsed.op, Some(Op::StatusStream));
        assert!(matches!(parsed.action, FaultAction::Status { status: 503, ref headers, .. } if headers.is_empty()));
    }
}
