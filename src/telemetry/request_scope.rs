//! The request a log line was written for, without a span per request.
//!
//! `layers::access_log` runs each request's handler inside [`scope`]: a task-local holding the
//! request id, set for the length of each poll (a swap in a thread-local, no allocation). The
//! log formatter ([`WithRequestId`]) adds `request_id` to every line written inside it, in
//! both formats and at every level. A `tracing` span did this before, at a cost on every
//! request (a registry slot, its fields formatted into a `String`, an enter and exit per poll)
//! for lines that are rare (warnings and errors inside a request: the access line names the
//! request itself), and, being an `info` span, it vanished under `RUST_LOG=warn`, taking the id
//! off exactly the lines that were left.

use std::fmt;
use std::future::Future;

use http::HeaderValue;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Runs `handler` with `id` as the request of every line it logs.
pub fn scope<F: Future>(id: HeaderValue, handler: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, handler)
}

/// The request id of the code running now, if it runs inside [`scope`].
pub fn current() -> Option<HeaderValue> {
    REQUEST_ID.try_with(HeaderValue::clone).ok()
}

/// An event format that adds the current request's id to each line written inside [`scope`]:
/// ` request_id=<id>` at the end of a text line, a `"request_id"` member of a JSON line. Other
/// lines are the inner format's, untouched. Request ids are plain (`[A-Za-z0-9-_.:=+/@]`,
/// `trace_context::valid_request_id`, or a UUID): nothing to escape in either format.
pub struct WithRequestId<F> {
    inner: F,
    json: bool,
}

impl<F> WithRequestId<F> {
    pub fn text(inner: F) -> Self {
        Self { inner, json: false }
    }

    pub fn json(inner: F) -> Self {
        Self { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some(id) = current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Rare lines (inside a request): formatted aside, then completed.
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let id = id.to_str().unwrap_or("-");
        match line.strip_suffix('}').filter(|_| self.json) {
            Some(open) => writeln!(writer, "{open},\"request_id\":\"{id}\"}}"),
            None => writeln!(writer, "{line} request_id={id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::captured::Captured;

    fn logged_in_scope(json: bool, id: Option<&'static str>) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(captured.clone());
        let dispatch: tracing::Dispatch = match json {
            true => builder
                .event_format(WithRequestId::json(
                    tracing_subscriber::fmt::format().json().flatten_event(true),
                ))
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .finish()
                .into(),
            false => builder
                .event_format(WithRequestId::text(tracing_subscriber::fmt::format()))
                .finish()
                .into(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            runtime.block_on(async {
                let log = async { tracing::warn!(store = "redis", "not shared") };
                match id {
                    Some(id) => scope(HeaderValue::from_static(id), log).await,
                    None => log.await,
                }
            });
        });
        captured.text()
    }

    #[test]
    fn a_line_inside_a_request_names_it_in_both_formats() {
        let text = logged_in_scope(false, Some("req-1"));
        assert!(
            text.ends_with("not shared store=\"redis\" request_id=req-1\n"),
            "{text}"
        );
        assert_eq!(text.matches('\n').count(), 1);
        let json = logged_in_scope(true, Some("req-1"));
        let line: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(line["request_id"], "req-1", "{json}");
        assert_eq!(
            (line["message"].as_str(), line["store"].as_str()),
            (Some("not shared"), Some("redis"))
        );
    }

    #[test]
    fn a_line_outside_any_request_is_the_inner_formats() {
        let text = logged_in_scope(false, None);
        assert!(
            text.ends_with("not shared store=\"redis\"\n") && !text.contains("request_id"),
            "{text}"
        );
        let json = logged_in_scope(true, None);
        let line: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert!(line.get("request_id").is_none(), "{json}");
    }
}
