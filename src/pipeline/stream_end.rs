//! A relayed status stream that shows its job `COMPLETED` tells the owner's events
//! ([`crate::events::Events::finished`]), as a status poll that shows it does. The stream is
//! relayed unchanged: the watcher only reads the `data:` lines going by, at most
//! [`MAX_LINE_BYTES`] of a line held at once (a longer line is skipped), and acts on the first
//! completed status only.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::StreamExt;

use crate::events::Events;
use crate::fal::FalRequestId;
use crate::ownership::Outcome;

/// The longest SSE line read; fal's status events are far shorter (their logs aside).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// `response`'s body, relayed as it is, reporting the job's end once a status event shows it.
pub(super) fn watch(response: Response, events: Arc<Events>, tag: String, id: FalRequestId) -> Response {
    let (parts, body) = response.into_parts();
    let mut reader = Lines::default();
    let mut told = false;
    let body = body.into_data_stream().map(move |chunk| {
        if let (Ok(bytes), false) = (&chunk, told) {
            if let Some(outcome) = reader.feed(bytes) {
                told = true;
                let (events, tag, id) = (events.clone(), tag.clone(), id.clone());
                tokio::spawn(async move {
                    events.finished(&tag, &id, outcome).await;
                });
            }
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// The `data:` lines of an event stream, read as they arrive.
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    /// The current line grew past the bound: skipped to its end.
    skipping: bool,
}

impl Lines {
    /// Reads `bytes`; the outcome of the first completed status among the lines it ends.
    fn feed(&mut self, bytes: &Bytes) -> Option<Outcome> {
        let mut found = None;
        for &byte in bytes.iter() {
            if byte == b'\n' {
                if !self.skipping && found.is_none() {
                    found = completed(&self.line);
                }
                self.line.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.line.push(byte);
                if self.line.len() > MAX_LINE_BYTES {
                    self.line.clear();
                    self.skipping = true;
                }
            }
        }
        found
    }
}

/// The outcome a `data: {"status": "COMPLETED", …}` line names, if it is one.
fn completed(line: &[u8]) -> Option<Outcome> {
    let data = line.strip_prefix(b"data:")?;
    let data = data.strip_suffix(b"\r").unwrap_or(data);
    let status: serde_json::Value = serde_json::from_slice(data).ok()?;
    if status.get("status")?.as_str()? != "COMPLETED" {
        return None;
    }
    Some(
        match (status.get("error_type").and_then(|t| t.as_str()), status.get("error")) {
            (Some(kind), _) => Outcome::error(kind),
            (None, Some(error)) if !error.is_null() => Outcome::error("error"),
            _ => Outcome::Ok,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_completed_status_is_found_across_chunks() {
        let mut lines = Lines::default();
        assert_eq!(
            lines.feed(&Bytes::from_static(b"data: {\"status\": \"IN_PROGRESS\"}\n\n")),
            None
        );
        assert_eq!(lines.feed(&Bytes::from_static(b"data: {\"status\": \"COMP")), None);
        assert_eq!(
            lines.feed(&Bytes::from_static(b"LETED\", \"logs\": []}\n\n")),
            Some(Outcome::Ok)
        );
        let failed = b"data: {\"status\":\"COMPLETED\",\"error\":\"boom\",\"error_type\":\"request_timeout\"}\r\n";
        assert_eq!(
            Lines::default().feed(&Bytes::from_static(failed)),
            Some(Outcome::Error("request_timeout".into()))
        );
        assert_eq!(
            Lines::default().feed(&Bytes::from_static(b": COMPLETED\nevent: COMPLETED\n")),
            None
        );
    }

    #[test]
    fn a_line_past_the_bound_is_skipped_not_held() {
        let mut lines = Lines::default();
        let long = format!(
            "data: {{\"status\": \"COMPLETED\", \"x\": \"{}\"}}",
            "a".repeat(MAX_LINE_BYTES)
        );
        assert_eq!(lines.feed(&Bytes::from(long)), None);
        assert!(lines.line.is_empty() && lines.skipping);
        assert_eq!(
            lines.feed(&Bytes::from_static(b"\ndata: {\"status\": \"COMPLETED\"}\n")),
            Some(Outcome::Ok)
        );
    }

    #[test]
    fn a_line_of_exactly_64_kib_is_read() {
        let head = "data: {\"status\": \"COMPLETED\", \"x\": \"";
        let tail = "\"}";
        // The bound as documented, not read from the constant (a changed constant must fail).
        let bound = 64 * 1024;
        let pad = "a".repeat(bound - head.len() - tail.len());
        let line = format!("{head}{pad}{tail}");
        assert_eq!(line.len(), bound);
        assert_eq!(
            Lines::default().feed(&Bytes::from(format!("{line}\n"))),
            Some(Outcome::Ok)
        );
        let over = format!("{head}{pad}a{tail}\n");
        assert_eq!(Lines::default().feed(&Bytes::from(over)), None);
    }

    #[test]
    fn a_completed_status_names_its_failure_and_a_null_error_is_none() {
        let read = |line: &'static str| Lines::default().feed(&Bytes::from_static(line.as_bytes()));
        assert_eq!(
            read("data: {\"status\": \"COMPLETED\", \"error\": \"boom\"}\n"),
            Some(Outcome::error("error"))
        );
        assert_eq!(
            read("data: {\"status\": \"COMPLETED\", \"error\": null}\n"),
            Some(Outcome::Ok)
        );
        assert_eq!(
            read("data: {\"status\": \"COMPLETED\", \"error\": null, \"error_type\": \"x\"}\n"),
            Some(Outcome::error("x"))
        );
    }
}
