//! Logging setup (text or JSON on stderr, `RUST_LOG` filter), OpenTelemetry trace export, what
//! the access line records (its middleware is `layers::access_log`) and metrics. Log lines never
//! carry tokens, cookies, `FAL_KEY` or request bodies.
//!
//! A leaf: it uses no other falgate module. Its settings ([`LogFormat`], [`Telemetry`]) are its
//! own; `config` reads them from the file and the environment.
//!
//! Two layers share one subscriber: the log lines (filtered by `RUST_LOG`), and, when an OTLP
//! endpoint is configured ([`Telemetry`]), `tracing-opentelemetry` exporting the
//! spans of target [`OTEL_TARGET`] in batches from the SDK's own thread. Each layer ignores the
//! other's spans: the log layer never formats the trace span's attributes, and with tracing off
//! a trace span is disabled at its call site, which costs one atomic load.

pub mod access_line;
pub mod access_log;
#[cfg(test)]
pub(crate) mod captured;
pub mod metrics;
pub mod request_scope;
mod text_fields;
pub mod trace_context;
pub mod writer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::format::{self as line, JsonFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use url::Url;

use self::request_scope::WithRequestId;

/// The target of spans exported to OpenTelemetry (and of no log line).
pub const OTEL_TARGET: &str = "falgate::otel";

/// The validated trace settings (`config` reads them from `[telemetry]` and the `OTEL_*`
/// variables).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Where spans are POSTed (`…/v1/traces`); None = tracing off.
    pub otlp_traces_url: Option<Url>,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            otlp_traces_url: None,
            service_name: "falgate".into(),
            sample_ratio: 1.0,
        }
    }
}

/// How log lines are written (`[log] format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps logging and trace export alive; dropping it flushes buffered lines and spans.
pub struct TelemetryGuard {
    // Field order is drop order: spans first (their export may log), then the log writer.
    tracer: Option<SdkTracerProvider>,
    _log: writer::LogGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take() {
            // Exports what is queued (bounded by the exporter's timeout).
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber once; later calls are no-ops (tests build many gates).
/// Lines go to stderr in batches from a writer thread ([`writer`]), so no request waits on a
/// write syscall or wakes another thread per line; keep the returned guard alive until exit.
pub fn init(format: LogFormat, telemetry: &Telemetry) -> TelemetryGuard {
    // Colour codes only for a person at a terminal; log files and pipelines get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    install(format, telemetry, std::io::stderr(), ansi)
}

/// [`init`] writing to `out` instead of stderr, without colour codes: the allocation-count test
/// (`tests/alloc.rs`) formats every line as `serve` does, into a sink.
pub fn init_to(format: LogFormat, telemetry: &Telemetry, out: impl std::io::Write + Send + 'static) -> TelemetryGuard {
    install(format, telemetry, out, false)
}

fn install(
    format: LogFormat,
    telemetry: &Telemetry,
    out: impl std::io::Write + Send + 'static,
    ansi: bool,
) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = writer::batch_writer(out);
    let not_otel = filter_fn(|meta| meta.target() != OTEL_TARGET);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer.clone());
    let logs = match format {
        // Caller text is escaped in the text format (`text_fields`); JSON escapes its own.
        // Each line written inside a request names it (`request_scope`).
        LogFormat::Text => fmt
            .fmt_fields(text_fields::EscapedFields)
            .event_format(WithRequestId::text(line::format()))
            .with_filter(filter.and(not_otel))
            .boxed(),
        LogFormat::Json => fmt
            .fmt_fields(JsonFields::new())
            .event_format(WithRequestId::json(line::format().json().flatten_event(true)))
            .with_filter(filter.and(not_otel))
            .boxed(),
    };
    let (provider, trace_error) = match &telemetry.otlp_traces_url {
        Some(url) => match tracer_provider(url.as_str(), telemetry) {
            Ok(provider) => (Some(provider), None),
            Err(err) => (None, Some(err)),
        },
        None => (None, None),
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("falgate"))
            // Only what the exported spans need: no per-poll timings, thread or code locations,
            // and no OpenTelemetry context attached on every enter.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_context_activation(false)
            .with_filter(filter_fn(|meta| meta.target() == OTEL_TARGET))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && !ansi {
        // Answered calls' access lines skip the formatter (same bytes; see `access_line`).
        access_line::install(format, writer);
    }
    if let Some(err) = trace_error {
        tracing::warn!(error = %err, "OpenTelemetry trace export is off: the exporter could not be built");
    } else if let (true, Some(url)) = (installed && provider.is_some(), &telemetry.otlp_traces_url) {
        tracing::info!(endpoint = %url, service = %telemetry.service_name, "exporting traces over OTLP/HTTP");
    }
    TelemetryGuard {
        tracer: provider.filter(|_| installed),
        _log: guard,
    }
}

/// The OTLP/HTTP (protobuf) exporter behind the SDK's batch processor (bounded queue, its own
/// thread; `OTEL_BSP_*` variables tune it).
fn tracer_provider(
    url: &str,
    telemetry: &Telemetry,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A caller's sampling decision is followed; new traces are sampled at the ratio.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            telemetry.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}
