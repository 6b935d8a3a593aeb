//! Relaying fal's answer: status, body and a safe subset of headers. Event streams (the status
//! stream, and a streaming run fal took) are relayed chunk by chunk, never buffered; an idle gap
//! longer than the configured timeout, or an upstream that breaks off, aborts the client's
//! response (an error, not a clean end). A status stream open for
//! `upstream.max_stream_lifetime_ms` is ended cleanly (the fal client then polls again); a
//! streaming run is aborted instead, since `fal.stream` takes a clean end for the run's end and
//! its last partial for the output. Both deadlines also ride on the response ([`crate::body::Bounds`])
//! for the listener to enforce when the client takes nothing and hyper stops polling the body.
//! Every other answer is small JSON: it is read whole (bounded) and checked, so garbage becomes a
//! 502 instead of a 200 the client cannot parse. A guard (a limits slot) can ride in the body, so
//! it is dropped when the body ends or the client goes away ([`stream`], `crate::body::held`).
//!
//! Every byte read whole is charged to one budget per process (`upstream.buffer_budget_bytes`)
//! until the client's response body is dropped, so many large results at once cannot outgrow
//! the memory limit: when the budget is spent, model output (result, sync run) is streamed
//! through from where it is (unchecked, like any stream), and a control answer waits for room
//! (up to the idle timeout).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyDataStream;

use crate::budget::Charge;
use crate::fal::{Answer, Call, FalRequestId, Job};
use crate::telemetry::metrics;
use crate::upstream::{after_sent, FalResponse, Upstream, UpstreamError};

/// fal response headers a client may see; `set-cookie`, CORS and hop-by-hop headers stay behind.
/// (`HeaderName`s, not strings: a string key is parsed into a name on every lookup.)
const RELAYED: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("x-fal-request-id"),
    header::RETRY_AFTER,
    HeaderName::from_static("x-fal-request-timeout-type"),
    HeaderName::from_static("x-fal-error-type"),
    HeaderName::from_static("x-fal-retryable"),
    HeaderName::from_static("x-fal-needs-retry"),
];

/// An answer read whole.
pub struct Buffered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The two fields the gate reads from fal's JSON, taken in the one parse that checks it.
    fields: Fields,
    /// What `body` costs the buffer budget, given back when the client's response is dropped.
    charge: Charge,
    /// The rest of a model output that did not fit the budget: streamed after `body`.
    rest: Option<Body>,
}

/// The top-level fields of a fal answer the gate acts on; all others are skipped unparsed.
#[derive(Default, serde::Deserialize)]
struct Fields {
    request_id: Option<String>,
    status: Option<String>,
    /// A completed status's failure (fal's `error_type`, and `error` without a type).
    /// Read leniently: a field of unexpected type must not make the answer unreadable.
    #[serde(default, deserialize_with = "lenient_string")]
    error_type: Option<String>,
    error: Option<serde::de::IgnoredAny>,
}

/// A string, or `None` for any other JSON value.
fn lenient_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = <serde_json::Value as serde::Deserialize>::deserialize(deserializer)?;
    Ok(value.as_str().map(str::to_owned))
}

impl Buffered {
    /// The `request_id` of a successful submit, when fal's answer carries a valid one.
    pub fn submitted_id(&self) -> Option<FalRequestId> {
        FalRequestId::parse(self.fields.request_id.as_deref()?).ok()
    }

    /// Whether a status answer says the job is `COMPLETED`.
    pub fn completed(&self) -> bool {
        self.fields.status.as_deref() == Some("COMPLETED")
    }

    /// A completed status answer's failure: fal's `error_type`, `"error"` when it only says
    /// `error`, `None` when it names no failure.
    pub fn failure(&self) -> Option<&str> {
        match (self.fields.error_type.as_deref(), &self.fields.error) {
            (Some(kind), _) => Some(kind),
            (None, Some(_)) => Some("error"),
            (None, None) => None,
        }
    }

    /// Whether a cancel answer says the job had already ended (fal's `ALREADY_COMPLETED`).
    pub fn already_completed(&self) -> bool {
        self.fields.status.as_deref() == Some("ALREADY_COMPLETED")
    }

    /// Turns the answer into the client's response; the budget charge lives as long as its body.
    pub fn into_response(self) -> Response {
        let charge = self.charge;
        let body = match self.rest {
            None => crate::body::in_frames(self.body),
            Some(rest) => {
                let head = futures_util::stream::once(std::future::ready(Ok::<_, axum::Error>(self.body)));
                Body::from_stream(head.chain(rest.into_data_stream()))
            }
        };
        let body = match charge.is_empty() {
            true => body,
            false => crate::body::held(body, charge),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Whether fal's answer is relayed as it arrives: the status stream always, a streaming run
/// when fal took it (a 2xx; its refusals are small JSON, read and checked like a sync run's).
/// Every other answer is read whole.
pub fn is_streamed(call: &Call, status: StatusCode) -> bool {
    match call.facts().answer {
        Answer::Stream => true,
        Answer::StreamWhenTaken => status.is_success(),
        Answer::Control | Answer::Output | Answer::Json => false,
    }
}

/// Reads an answer whole (bounded by size and idle time) and checks a 2xx is JSON where it must
/// be: always for control answers, and for model output that says it is JSON.
pub async fn buffer(upstream: &Upstream, call: &Call, response: FalResponse) -> Result<Buffered, UpstreamError> {
    let status = response.status();
    refuse_credential_failure(status)?;
    let headers = relayed_headers(response.headers());
    let facts = call.facts();
    let limit = upstream.max_answer_bytes(call);
    let mut body = BytesMut::new();
    let mut charge = Charge::default();
    let mut chunks = Box::pin(idle_limited(
        BodyDataStream::new(response.into_body()),
        upstream.idle_timeout(),
    ));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| after_sent(call, UpstreamError::BadResponse(err.to_string())))?;
        let size = body.len() + chunk.len();
        if size > limit {
            return Err(after_sent(
                call,
                UpstreamError::BadResponse(format!("answer larger than {limit} bytes")),
            ));
        }
        if !upstream.budget().try_grow(&mut charge, size) {
            if status.is_success() && facts.answer == Answer::Output {
                // Out of budget: relay the model output as it comes instead of holding it.
                body.extend_from_slice(&chunk);
                let rest = Body::from_stream(chunks);
                return Ok(Buffered {
                    status,
                    headers,
                    body: body.freeze(),
                    fields: Fields::default(),
                    charge,
                    rest: Some(rest),
                });
            }
            upstream
                .budget()
                .grow(&mut charge, size, upstream.idle_timeout())
                .await
                .map_err(|()| after_sent(call, UpstreamError::Timeout))?;
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let must_be_json = facts.answer != Answer::Output || is_json(&headers);
    let not_json = || {
        after_sent(
            call,
            UpstreamError::BadResponse(format!("{} answer with status {status} is not JSON", call.op_name())),
        )
    };
    let fields = match (status.is_success(), facts.answer) {
        // A refusal's fields are read, never required: a refused cancel may say the job already
        // ended (`ALREADY_COMPLETED`).
        (false, Answer::Control | Answer::StreamWhenTaken) => {
            serde_json::from_slice::<Fields>(&body).unwrap_or_default()
        }
        (false, Answer::Output | Answer::Json | Answer::Stream) => Fields::default(),
        // Model output saying it is not JSON is relayed as it is.
        (true, Answer::Output) if !must_be_json => Fields::default(),
        // Model output is only checked to be JSON: its fields are the model's, not fal's. A
        // temporary token is a JSON string.
        (true, Answer::Output | Answer::Json) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|_| not_json())?;
            Fields::default()
        }
        (true, Answer::Control | Answer::Stream | Answer::StreamWhenTaken) => {
            serde_json::from_slice::<Fields>(&body).map_err(|_| not_json())?
        }
    };
    let buffered = Buffered {
        status,
        headers,
        body,
        fields,
        charge,
        rest: None,
    };
    if status.is_success() && facts.job == Job::Starts && buffered.submitted_id().is_none() {
        return Err(after_sent(
            call,
            UpstreamError::BadResponse("submit answer has no valid request_id".into()),
        ));
    }
    Ok(buffered)
}

/// Streams fal's answer to `call` to the client as it arrives, for at most the configured stream
/// lifetime; `hold` lives as long as the client's body (dropped at its end or when the client
/// goes away).
pub fn stream<G: Send + 'static>(upstream: &Upstream, call: &Call, response: FalResponse, hold: G) -> Response {
    let status = response.status();
    let mut headers = relayed_headers(response.headers());
    let is_event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_event_stream {
        // Ask any proxy in front of falgate not to buffer the stream either.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    // Counted in `falgate_open_streams` for as long as the body lives.
    let open = metrics::StreamGuard::open();
    let body = idle_limited(BodyDataStream::new(response.into_body()), upstream.idle_timeout());
    // A run cut short must not look finished: `fal.stream` would take its last partial as the output.
    let at_lifetime = match call.facts().answer {
        Answer::StreamWhenTaken => AtLifetime::Abort,
        Answer::Stream | Answer::Control | Answer::Output | Answer::Json => AtLifetime::End,
    };
    let body = lifetime_limited(body, upstream.max_stream_lifetime(), at_lifetime).map(move |chunk| {
        let _held = (&hold, &open);
        chunk
    });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    // The same two deadlines, enforced by the listener even when the client takes nothing (and
    // hyper stops polling this body, where the timers above live).
    out.extensions_mut().insert(crate::body::Bounds {
        lifetime: Some(upstream.max_stream_lifetime()),
        idle: Some(upstream.idle_timeout()),
    });
    out
}

/// fal's 401/403 mean the server-held key is bad, not the caller's session: never relay them.
pub fn refuse_credential_failure(status: StatusCode) -> Result<(), UpstreamError> {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Credentials(status.as_u16())),
        _ => Ok(()),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in &RELAYED {
        if let Some(value) = upstream.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

/// How a stream still open at its lifetime ends.
#[derive(Clone, Copy)]
enum AtLifetime {
    /// Cleanly (an SSE client then reconnects; an event cut short at that moment is discarded
    /// by it, as at any end).
    End,
    /// With an error, so the client does not take the stream for complete.
    Abort,
}

/// Ends the stream once it has been open for `lifetime`, as `at_lifetime` says.
fn lifetime_limited<S>(body: S, lifetime: Duration, at_lifetime: AtLifetime) -> impl Stream<Item = S::Item> + Send
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let deadline = Box::pin(tokio::time::sleep(lifetime));
    futures_util::stream::unfold(Some((Box::pin(body), deadline)), move |state| async move {
        let (mut body, mut deadline) = state?;
        tokio::select! {
            item = body.next() => item.map(|item| (item, Some((body, deadline)))),
            () = &mut deadline => match at_lifetime {
                AtLifetime::End => None,
                AtLifetime::Abort => {
                    let cut = std::io::Error::new(std::io::ErrorKind::TimedOut, "the stream reached its lifetime");
                    Some((Err(cut), None))
                }
            },
        }
    })
}

/// Ends the stream with an error when no chunk arrives within `idle`.
fn idle_limited(
    body: impl Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
    idle: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(Box::pin(body)), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(err))) => Some((Err(std::io::Error::other(err)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "fal went silent")),
                None,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_ended_cleanly_at_its_lifetime_and_drops_what_it_holds() {
        let (guard, mut released) = tokio::sync::oneshot::channel::<()>();
        let events = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"data: {}\n\n"))])
            .chain(futures_util::stream::pending());
        let started = tokio::time::Instant::now();
        let stream = lifetime_limited(events, Duration::from_secs(3600), AtLifetime::End).map(move |chunk| {
            let _held = &guard;
            chunk
        });
        let chunks: Vec<_> = stream.collect().await;
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
        assert_eq!(
            released.try_recv(),
            Err(TryRecvError::Closed),
            "the guard outlived its stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_first_is_not_held_to_its_lifetime() {
        let events = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"data: {}\n\n"))]);
        let started = tokio::time::Instant::now();
        let chunks: Vec<_> = lifetime_limited(events, Duration::from_secs(3600), AtLifetime::End)
            .collect()
            .await;
        assert_eq!((chunks.len(), started.elapsed()), (1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_run_at_its_lifetime_ends_in_an_error_not_a_clean_end() {
        let events = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"data: {}\n\n"))])
            .chain(futures_util::stream::pending());
        let chunks: Vec<_> = lifetime_limited(events, Duration::from_secs(3600), AtLifetime::Abort)
            .collect()
            .await;
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].is_ok());
        assert_eq!(chunks[1].as_ref().unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }
}

#[cfg(test)]
mod tests_buffer;
