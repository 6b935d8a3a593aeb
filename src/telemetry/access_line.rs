//! The access line of an answered call, written without the `fmt` machinery (issue 23).
//!
//! With falgate's own subscriber installed ([`super::init`]), the line of a call that was
//! answered (`"answered"`, one per request) is rendered here straight into a per-thread buffer
//! and handed to the log writer ([`super::writer`]) as one slice: no dispatch through the
//! subscriber's layers, no `Debug` of each field through `fmt::Formatter`, no timestamp
//! formatted with `write!`. The bytes are those tracing-subscriber's formatter writes for the
//! same event (text with [`super::text_fields`] escaping, or flattened JSON), checked by the
//! tests below against the formatter itself; a value that would need escaping is written
//! through the same escaping code as before. `RUST_LOG` still decides: the line is written only
//! when an `INFO` event of [`ACCESS_TARGET`] is enabled.
//!
//! Without falgate's subscriber (an embedding application's, the unit tests'), or with colour
//! codes on (a terminal), the line goes through `tracing` as before. Refusals always do (they
//! are the rare case, and their fields vary).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::access_log::PrincipalHash;
use super::writer::BatchWriter;
use super::LogFormat;

/// The target of every access line (the module that wrote it before this one existed).
pub const ACCESS_TARGET: &str = "falgate::layers::access_log";

/// The access line of a call that was answered (not refused by falgate).
#[derive(Clone, Copy, Debug)]
pub struct Answered<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub endpoint: &'a str,
    pub operation: &'a str,
    pub status: u16,
    /// Time to the answer's headers.
    pub headers: Duration,
    /// Time to the answer's end.
    pub total: Duration,
    pub bytes: u64,
    pub principal: Option<PrincipalHash>,
    pub fal_request_id: &'a str,
    pub outcome: &'a str,
}

/// Where lines go when falgate's subscriber is the global one.
struct Sink {
    format: LogFormat,
    writer: BatchWriter,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Called by [`super::init`] once its subscriber is installed (never with colour codes on).
pub(super) fn install(format: LogFormat, writer: BatchWriter) {
    let _ = SINK.set(Sink { format, writer });
}

thread_local! {
    /// The line being rendered; its capacity is kept between lines.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The timestamp's `YYYY-MM-DDTHH:MM:SS` for the second last rendered.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

impl Answered<'_> {
    /// Logs the line (when `RUST_LOG` lets `INFO` lines of [`ACCESS_TARGET`] through).
    pub fn log(&self) {
        match SINK.get() {
            Some(sink) => {
                if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
                    LINE.with_borrow_mut(|line| {
                        line.clear();
                        self.render(sink.format, SystemTime::now(), line);
                        // Nothing useful can be done about a failed log write.
                        let _ = (&sink.writer).write_all(line);
                    });
                }
            }
            None => self.log_with_tracing(),
        }
    }

    /// The same line through `tracing` (what every line was before).
    fn log_with_tracing(&self) {
        let Self {
            request_id,
            method,
            route,
            endpoint,
            operation,
            status,
            headers,
            total,
            bytes,
            principal,
            fal_request_id,
            outcome,
        } = *self;
        let headers_ms = millis_f64(headers);
        let total_ms = millis_f64(total);
        let principal = principal.map(tracing::field::display);
        tracing::info!(
            target: ACCESS_TARGET,
            %request_id, %method, route, endpoint, operation, status,
            headers_ms, total_ms, bytes, principal, fal_request_id, outcome, "answered"
        );
    }

    fn render(&self, format: LogFormat, now: SystemTime, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => self.render_text(now, out),
            LogFormat::Json => self.render_json(now, out),
        }
    }

    /// `<time>  INFO <target>: answered request_id=… method=… route="…" … outcome="…"`.
    fn render_text(&self, now: SystemTime, out: &mut Vec<u8>) {
        timestamp(now, out);
        out.extend_from_slice(b"  INFO ");
        out.extend_from_slice(ACCESS_TARGET.as_bytes());
        out.extend_from_slice(b": answered request_id=");
        text_display(out, self.request_id);
        out.extend_from_slice(b" method=");
        text_display(out, self.method);
        out.extend_from_slice(b" route=");
        text_debug_str(out, self.route);
        out.extend_from_slice(b" endpoint=");
        text_debug_str(out, self.endpoint);
        out.extend_from_slice(b" operation=");
        text_debug_str(out, self.operation);
        out.extend_from_slice(b" status=");
        number(out, u64::from(self.status));
        out.extend_from_slice(b" headers_ms=");
        millis(out, self.headers);
        out.extend_from_slice(b" total_ms=");
        millis(out, self.total);
        out.extend_from_slice(b" bytes=");
        number(out, self.bytes);
        if let Some(principal) = self.principal {
            out.extend_from_slice(b" principal=");
            principal.hex(out);
        }
        out.extend_from_slice(b" fal_request_id=");
        text_debug_str(out, self.fal_request_id);
        out.extend_from_slice(b" outcome=");
        text_debug_str(out, self.outcome);
        out.push(b'\n');
    }

    /// tracing-subscriber's flattened JSON: timestamp, level, the fields in order, target.
    fn render_json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(now, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"answered\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"route\":");
        json_str(out, self.route);
        out.extend_from_slice(b",\"endpoint\":");
        json_str(out, self.endpoint);
        out.extend_from_slice(b",\"operation\":");
        json_str(out, self.operation);
        out.extend_from_slice(b",\"status\":");
        number(out, u64::from(self.status));
        out.extend_from_slice(b",\"headers_ms\":");
        millis(out, self.headers);
        out.extend_from_slice(b",\"total_ms\":");
        millis(out, self.total);
        out.extend_from_slice(b",\"bytes\":");
        number(out, self.bytes);
        if let Some(principal) = self.principal {
            out.extend_from_slice(b",\"principal\":\"");
            principal.hex(out);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"fal_request_id\":");
        json_str(out, self.fal_request_id);
        out.extend_from_slice(b",\"outcome\":");
        json_str(out, self.outcome);
        out.extend_from_slice(b",\"target\":\"");
        out.extend_from_slice(ACCESS_TARGET.as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
}

/// Milliseconds to the microsecond, as the `f64` the line has always carried (`0.317`, not
/// `0.31690199999999996`).
pub fn millis_f64(elapsed: Duration) -> f64 {
    f64::from(micros(elapsed)) / 1000.0
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

/// [`millis_f64`] as `f64`'s `Debug` and serde_json write it (`0.317`, `2.0`): a whole number
/// of microseconds over 1000 is the double nearest that decimal, whose shortest form is the
/// decimal itself.
fn millis(out: &mut Vec<u8>, elapsed: Duration) {
    let micros = micros(elapsed);
    number(out, u64::from(micros / 1000));
    out.push(b'.');
    let mut fraction = micros % 1000;
    if fraction == 0 {
        out.push(b'0');
        return;
    }
    let mut digits = 3;
    while fraction.is_multiple_of(10) {
        fraction /= 10;
        digits -= 1;
    }
    let start = out.len();
    number(out, u64::from(fraction));
    // Leading zeros of the fraction (`0.005`).
    let written = out.len() - start;
    for _ in written..digits {
        out.insert(start, b'0');
    }
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Printable ASCII other than `"` and `\`: written as is by every formatter here.
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A `%` (Display) field in the text format: raw, control characters escaped.
fn text_display(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        out.extend_from_slice(text.as_bytes());
    } else {
        escaped(out, format_args!("{text}"));
    }
}

/// A `&str` field in the text format: `Debug` (quoted), control characters escaped.
fn text_debug_str(out: &mut Vec<u8>, text: &str) {
    if plain(text) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        escaped(out, format_args!("{text:?}"));
    }
}

/// Through the text format's own escaping (`text_fields`), for the rare value that needs it.
fn escaped(out: &mut Vec<u8>, value: std::fmt::Arguments<'_>) {
    let mut text = String::new();
    let _ = super::text_fields::Escape(&mut text).write_fmt(value);
    out.extend_from_slice(text.as_bytes());
}

/// A JSON string, as serde_json writes it.
fn json_str(out: &mut Vec<u8>, text: &str) {
    if plain(text) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as tracing-subscriber's `SystemTime` timer writes it;
/// the date and time of day are computed once per second per thread.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            *second = secs;
            *text = civil(secs);
        }
        out.extend_from_slice(text);
    });
    out.push(b'.');
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for at in (0..6).rev() {
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (years 1970–9999).
fn civil(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year.min(9999));
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day % 3600 / 60);
    put(17, 2, of_day % 60);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::captured::Captured;
    use crate::telemetry::text_fields::EscapedFields;

    fn line<'a>(request_id: &'a str, endpoint: &'a str, fal_request_id: &'a str) -> Answered<'a> {
        Answered {
            request_id,
            method: "GET",
            route: "/api/fal/proxy",
            endpoint,
            operation: "status",
            status: 200,
            headers: Duration::from_micros(317),
            total: Duration::from_micros(2_000_005),
            bytes: 12_345,
            principal: Some(PrincipalHash::keyed(&[1; 32], "default", "alice")),
            fal_request_id,
            outcome: "complete",
        }
    }

    /// What tracing-subscriber's formatter writes for the line, timestamp cut off.
    fn through_tracing(format: LogFormat, answered: &Answered<'_>) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(captured.clone());
        match format {
            LogFormat::Text => {
                let subscriber = builder.fmt_fields(EscapedFields).finish();
                tracing::subscriber::with_default(subscriber, || answered.log_with_tracing());
            }
            LogFormat::Json => {
                let subscriber = builder.json().flatten_event(true).finish();
                tracing::subscriber::with_default(subscriber, || answered.log_with_tracing());
            }
        }
        captured.text()
    }

    fn rendered(format: LogFormat, answered: &Answered<'_>) -> String {
        let mut out = Vec::new();
        answered.render(format, SystemTime::now(), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The text line without its timestamp; the JSON line without its timestamp's value.
    fn untimed(format: LogFormat, line: &str) -> String {
        match format {
            LogFormat::Text => line[27..].to_owned(),
            LogFormat::Json => format!("{}{}", &line[..14], &line[14 + 27..]),
        }
    }

    #[test]
    fn the_access_line_is_byte_for_byte_what_the_formatter_writes() {
        let cases = [
            line(
                "0b5c6a8e-3f1e-4c2a-9d7e-1a2b3c4d5e6f",
                "fal-ai/video-prompt-generator",
                "-",
            ),
            // Values that need escaping take the formatter's own escaping.
            line("lb\u{7f}1", "fal-ai/\"quoted\"\\x", "id\nforged\u{1b}[2J"),
            line("id", "fal-ai/é\u{2028}", "\u{0}"),
            Answered {
                principal: None,
                headers: Duration::ZERO,
                total: Duration::from_micros(5),
                status: 502,
                outcome: "client_gone",
                ..line("x", "fal-ai/flux", "-")
            },
            Answered {
                total: Duration::from_secs(86_400 * 365),
                headers: Duration::from_micros(1_230),
                ..line("x", "fal-ai/flux", "-")
            },
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for case in &cases {
                let formatter = through_tracing(format, case);
                let ours = rendered(format, case);
                assert_eq!(untimed(format, &ours), untimed(format, &formatter), "{format:?}");
                assert_eq!(ours.len(), formatter.len());
            }
        }
    }

    /// The fast path's test: a value it takes is written as is, so it must be exactly the values
    /// no formatter escapes (the slow path gives the same bytes for every value, so the line
    /// test above cannot tell which path ran).
    #[test]
    fn only_printable_ascii_without_quotes_or_backslashes_is_plain() {
        for text in [
            "",
            "fal-ai/video-prompt-generator",
            " !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~",
        ] {
            assert!(plain(text), "{text:?}");
        }
        for text in ["\"", "a\"b", "\\", "a\\b", "\u{1f}", "\t", "\n", "\u{7f}", "é", "\u{0}"] {
            assert!(!plain(text), "{text:?}");
        }
    }

    #[test]
    fn milliseconds_are_written_as_their_f64_is() {
        for micros in [0, 1, 5, 10, 317, 1_000, 1_230, 2_000_005, 999_999, 4_294_967_295] {
            let mut out = Vec::new();
            millis(&mut out, Duration::from_micros(micros));
            let expected = format!("{:?}", millis_f64(Duration::from_micros(micros)));
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{micros}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let at = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            timestamp(
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_709_164_799, 999_999), "2024-02-28T23:59:59.999999Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00.000000Z");
        assert_eq!(at(1_796_601_600 + 49_823, 123_456), "2026-12-07T13:50:23.123456Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // The same second twice (the cached date) and the next.
        assert_eq!(at(1_709_164_800, 1), "2024-02-29T00:00:00.000001Z");
        assert_eq!(at(1_709_164_801, 0), "2024-02-29T00:00:01.000000Z");
    }

    #[test]
    fn the_timestamp_has_the_formatters_shape() {
        let formatter = through_tracing(LogFormat::Text, &line("x", "e", "-"));
        let ours = rendered(LogFormat::Text, &line("x", "e", "-"));
        let shape = |s: &str| {
            s[..27]
                .bytes()
                .map(|b| if b.is_ascii_digit() { b'0' } else { b })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&ours), shape(&formatter), "{ours}\n{formatter}");
    }
}
