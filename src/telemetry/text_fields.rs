//! The field formatter of the text log format: every field value (and message) is written with
//! its control characters and Unicode line separators escaped (`\n`, `\u{1b}`, `\u{2028}`), so
//! nothing a caller sends can end a line early, forge another line or carry terminal escapes.
//! tracing-subscriber's default text formatter writes `%` (Display) fields raw; its JSON
//! formatter escapes through serde_json and needs nothing from here.

use std::fmt::{self, Write as _};

use tracing_subscriber::field::{MakeExt, RecordFields};
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The text format's fields: `name=value` pairs separated by spaces, like the default, escaped.
#[derive(Debug, Default)]
pub(super) struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let escaped = format::debug_fn(
            |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
                if field.name() != "message" {
                    write!(writer, "{field}=")?;
                }
                write!(Escape(writer), "{value:?}")
            },
        )
        .delimited(" ");
        escaped.format_fields(writer, fields)
    }
}

/// A `fmt::Write` that escapes what could break a line on its way to `W`.
pub(super) struct Escape<W>(pub(super) W);

impl<W: fmt::Write> fmt::Write for Escape<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(needs_escape) {
            let c = rest[at..].chars().next().unwrap_or_default();
            self.0.write_str(&rest[..at])?;
            for escaped in c.escape_default() {
                self.0.write_char(escaped)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::captured::Captured;

    #[test]
    fn a_caller_value_cannot_break_or_forge_a_text_line() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .with_writer(captured.clone())
            .finish();
        let forged = "bad\n2026-12-01T00:00:00Z  INFO forged\r\u{1b}[2J\u{2028}end";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = %forged);
            let _entered = span.enter();
            tracing::info!(reason = %forged, detail = forged, status = 400, "refused");
        });
        let text = captured.text();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        assert!(!text.contains(['\r', '\u{1b}', '\u{2028}']), "{text}");
        assert!(
            text.contains(r"reason=bad\n2026-12-01T00:00:00Z  INFO forged\r\u{1b}[2J\u{2028}end"),
            "{text}"
        );
        assert!(text.contains("status=400") && text.contains("refused"), "{text}");
    }
}
