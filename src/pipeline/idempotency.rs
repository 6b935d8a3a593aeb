//! `Idempotency-Key` on submits: the first answer is stored and replayed to a retry with the same
//! key and body, so one click never makes two jobs; the same key with another body is a 422.
//! A key is scoped to the caller (principal), the method, the endpoint and the query (the call
//! as forwarded, [`Call::path_and_query`], so both route families share it): the same key sent
//! to another endpoint or with another `fal_webhook` is another key, never a replay.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::Answer;
use crate::error::GateError;
use crate::fal::Call;
use crate::limits::{IdemState, Idempotency, LimitError};
use crate::schema::ValidInput;

/// The request header carrying the key.
const KEY_HEADER: &str = "idempotency-key";
/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// What the key says about this submit.
pub(super) enum Claim {
    /// Go on; settle the key (when there is one) with the outcome.
    New(Option<String>),
    /// Answered before: send this again, submit nothing.
    Replay(Response),
}

/// Claims the submit's key, if it carries one. Other operations ignore the header.
pub(super) async fn claim(
    store: &Idempotency,
    principal: &str,
    call: &Call,
    headers: &HeaderMap,
    input: Option<&ValidInput>,
) -> Result<Claim, GateError> {
    let (true, Some(input)) = (call.facts().idempotent, input) else {
        return Ok(Claim::New(None));
    };
    let Some(key) = key(headers)?.map(|key| scoped(call, &key)) else {
        return Ok(Claim::New(None));
    };
    let hash = Idempotency::body_hash(&input.bytes);
    match store.begin(principal, &key, &hash).await? {
        IdemState::New => Ok(Claim::New(Some(key))),
        IdemState::Replay { status, body } => Ok(Claim::Replay(replay(status, body))),
        IdemState::InFlight => Err(LimitError::IdempotencyInFlight.into()),
        IdemState::Mismatch => Err(LimitError::IdempotencyKeyReused.into()),
    }
}

/// Whether this submit carries an `Idempotency-Key` whose first use was answered: its retry is
/// replayed even when the caller is over a limit now (the precheck would otherwise refuse it and
/// the caller would lose the answer of a job it paid for). A key with no stored answer, or a
/// store error, is a no.
pub(super) async fn answered(
    store: &Idempotency,
    principal: &str,
    call: &Call,
    headers: &HeaderMap,
) -> Result<bool, GateError> {
    if !call.facts().idempotent {
        return Ok(false);
    }
    match key(headers)? {
        Some(key) => Ok(store.answered(principal, &scoped(call, &key)).await),
        None => Ok(false),
    }
}

/// What to do with a claimed key once the submit is over.
pub(super) enum Settle {
    /// Store this answer for replay.
    Complete(u16, bytes::Bytes),
    /// fal may have queued the job: keep the key pending, so a retry does not submit again.
    Keep,
    /// fal did not take it: free the key, so a retry may run.
    Abandon,
}

impl Settle {
    pub(super) fn of(outcome: &Result<Answer, GateError>) -> Self {
        match outcome {
            Ok(Answer::Buffered(answer, ..)) if answer.status.is_success() => {
                Self::Complete(answer.status.as_u16(), answer.body.clone())
            }
            Err(GateError::SubmitOutcomeUnknown(_)) => Self::Keep,
            _ => Self::Abandon,
        }
    }
}

/// Applies the settlement to the key.
pub(super) async fn settle(store: &Idempotency, principal: &str, key: &str, settlement: Settle) {
    match settlement {
        Settle::Complete(status, body) => store.complete(principal, key, status, &body).await,
        Settle::Keep => {}
        Settle::Abandon => store.abandon(principal, key).await,
    }
}

pub(super) fn key(headers: &HeaderMap) -> Result<Option<String>, GateError> {
    let mut values = headers.get_all(KEY_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let valid = values.next().is_none()
        && !value.is_empty()
        && value.len() <= MAX_KEY_LEN
        && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
    match value.to_str() {
        Ok(key) if valid => Ok(Some(key.to_owned())),
        _ => Err(GateError::Malformed(format!(
            "{KEY_HEADER} must be one printable value of at most {MAX_KEY_LEN} bytes"
        ))),
    }
}

/// The key as stored: the caller's key within the call it was sent with. The store hashes it.
pub(super) fn scoped(call: &Call, key: &str) -> String {
    format!("{} {}\n{key}", call.method(), call.path_and_query())
}

pub(super) fn replay(status: u16, body: bytes::Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
