//! The SSE status stream: one `data: <status json>` event at once and then every
//! `stream_interval_ms`, each carrying only the log lines not sent before (the JS client
//! accumulates them); the stream ends cleanly right after the `COMPLETED` event.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::faults::FLUSH_PAUSE;
use super::queue::Phase;
use super::status::{status_body, with_request_id, Urls};
use super::Emulator;

/// Where one stream is in its life.
struct Cursor {
    emulator: Emulator,
    app: String,
    urls: Urls,
    with_logs: bool,
    /// Break the connection (no clean end) once this many events were sent.
    drop_after: Option<u32>,
    events_sent: u32,
    logs_sent: usize,
    done: bool,
}

/// Answers the stream for a request already known to exist.
pub(crate) fn respond(
    emulator: Emulator,
    app: String,
    urls: Urls,
    with_logs: bool,
    drop_after: Option<u32>,
) -> Response {
    let id = urls.request_id.clone();
    let cursor = Cursor {
        emulator,
        app,
        urls,
        with_logs,
        drop_after,
        events_sent: 0,
        logs_sent: 0,
        done: false,
    };
    let events = futures_util::stream::unfold(cursor, next_event);
    let mut response = (StatusCode::OK, Body::from_stream(events)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_request_id(response, &id)
}

async fn next_event(mut cursor: Cursor) -> Option<(Result<Bytes, io::Error>, Cursor)> {
    if cursor.done {
        return None;
    }
    if cursor.events_sent > 0 {
        let interval = cursor.emulator.config().stream_interval_ms.max(1);
        tokio::time::sleep(Duration::from_millis(interval)).await;
    }
    if cursor.drop_after.is_some_and(|limit| cursor.events_sent >= limit) {
        cursor.done = true;
        if cursor.events_sent == 0 {
            // Let the 200 headers reach the client before the break, as with a later drop.
            tokio::time::sleep(FLUSH_PAUSE).await;
        }
        let error = io::Error::new(io::ErrorKind::ConnectionReset, "emulated stream drop");
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
