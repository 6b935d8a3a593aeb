//! The emulator's event streams. The SSE status stream: one `data: <status json>` event at once
//! and then every `stream_interval_ms`, each carrying only the log lines not sent before (the JS
//! client accumulates them); it ends cleanly right after the `COMPLETED` event. The streaming run
//! (`POST fal.run/{endpoint}/stream`): partial outputs every `stream_interval_ms`, the last event
//! being the whole output, then a clean end (`fal.stream` resolves `done()` with the last event).
//! Faults can break either stream after some events, or hold it open until a test releases it.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::faults::{FLUSH_PAUSE, MAX_HOLD};
use super::queue::Phase;
use super::status::{status_body, with_request_id, Urls};
use super::{lock, Emulator};

/// What faults do to one stream: break it, or hold it, after some events.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pace {
    /// Break the connection (no clean end) once this many events were sent.
    pub(crate) drop_after: Option<u32>,
    /// Wait for the release of this key once this many events were sent.
    pub(crate) hold: Option<(u32, String)>,
}

/// Streams held by a `Hold` fault, released by key (a release before the hold also counts).
#[derive(Default)]
pub(crate) struct Holds {
    released: Mutex<HashSet<String>>,
    notify: tokio::sync::Notify,
}

impl Holds {
    pub(crate) fn release(&self, key: String) {
        lock(&self.released).insert(key);
        self.notify.notify_waiters();
    }

    /// Waits until `key` is released, at most [`MAX_HOLD`].
    async fn wait(&self, key: &str) {
        let released = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                // Registered before the check, so a release in between is not missed.
                notified.as_mut().enable();
                if lock(&self.released).contains(key) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(MAX_HOLD, released).await;
    }
}

/// Where one status stream is in its life.
struct Cursor {
    emulator: Emulator,
    app: String,
    urls: Urls,
    with_logs: bool,
    pace: Pace,
    events_sent: u32,
    logs_sent: usize,
    done: bool,
}

/// Answers the stream for a request already known to exist.
pub(crate) fn respond(emulator: Emulator, app: String, urls: Urls, with_logs: bool, pace: Pace) -> Response {
    let id = urls.request_id.clone();
    let cursor = Cursor {
        emulator,
        app,
        urls,
        with_logs,
        pace,
        events_sent: 0,
        logs_sent: 0,
        done: false,
    };
    let events = futures_util::stream::unfold(cursor, next_event);
    event_stream(Body::from_stream(events), &id)
}

/// Answers a streaming run that produced `output`: a few partial outputs, then `output`.
pub(crate) fn run(emulator: Emulator, output: &Value, pace: Pace) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let run = RunCursor {
        emulator,
        events: partials(output).into(),
        pace,
        events_sent: 0,
    };
    let events = futures_util::stream::unfold(run, next_partial);
    event_stream(Body::from_stream(events), &id)
}

fn event_stream(body: Body, id: &str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_request_id(response, id)
}

/// What the pace says before the next event: go on, or break the stream here.
async fn paced(emulator: &Emulator, pace: &Pace, events_sent: u32) -> Result<(), io::Error> {
    if events_sent > 0 {
        let interval = emulator.config().stream_interval_ms.max(1);
        tokio::time::sleep(Duration::from_millis(interval)).await;
    }
    if let Some((_, key)) = pace.hold.as_ref().filter(|(after, _)| *after == events_sent) {
        emulator.inner.holds.wait(key).await;
    }
    if pace.drop_after.is_some_and(|limit| events_sent >= limit) {
        if events_sent == 0 {
            // Let the 200 headers reach the client before the break, as with a later drop.
            tokio::time::sleep(FLUSH_PAUSE).await;
        }
        return Err(io::Error::new(io::ErrorKind::ConnectionReset, "emulated stream drop"));
    }
    Ok(())
}

async fn next_event(mut cursor: Cursor) -> Option<(Result<Bytes, io::Error>, Cursor)> {
    if cursor.done {
        return None;
    }
    if let Err(error) = paced(&cursor.emulator, &cursor.pace, cursor.events_sent).await {
        cursor.done = true;
        return Some((Err(error), cursor));
    }
    let snapshot = cursor
        .emulator
        .inner
        .queue
        .snapshot(&cursor.app, &cursor.urls.request_id)?;
    let fresh = snapshot.logs.get(cursor.logs_sent..).unwrap_or_default();
    let body = status_body(&snapshot, &cursor.urls, cursor.with_logs.then_some(fresh));
    cursor.logs_sent = snapshot.logs.len();
    cursor.events_sent += 1;
    cursor.done = snapshot.phase == Phase::Completed;
    Some((Ok(Bytes::from(format!("data: {body}\n\n"))), cursor))
}

/// Where one streaming run is in its life.
struct RunCursor {
    emulator: Emulator,
    /// The events still to send, the whole output last.
    events: VecDeque<Value>,
    pace: Pace,
    events_sent: u32,
}

async fn next_partial(mut run: RunCursor) -> Option<(Result<Bytes, io::Error>, RunCursor)> {
    let event = run.events.pop_front()?;
    if let Err(error) = paced(&run.emulator, &run.pace, run.events_sent).await {
        run.events.clear();
        return Some((Err(error), run));
    }
    run.events_sent += 1;
    Some((Ok(Bytes::from(format!("data: {event}\n\n"))), run))
}

/// The events of a streaming run: two partial outputs, then `output`. A `prompt` grows word by
/// word (a third, then two thirds of it); any other output is preceded by `{"partial": n}`.
fn partials(output: &Value) -> Vec<Value> {
    let partial = |n: usize| match output["prompt"].as_str() {
        Some(prompt) => {
            let words: Vec<&str> = prompt.split(' ').collect();
            let shown = (words.len() * n).div_ceil(3).max(1);
            json!({ "prompt": words[..shown.min(words.len())].join(" ") })
        }
        None => json!({ "partial": n }),
    };
    vec![partial(1), partial(2), output.clone()]
}
