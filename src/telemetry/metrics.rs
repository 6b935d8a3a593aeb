//! Metric names and the Prometheus recorder. Labels come from bounded sets only (route family,
//! status class, error code, operation), never a caller id or a raw path.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "falgate_requests_total";
pub const REQUEST_DURATION: &str = "falgate_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "falgate_upstream_duration_seconds";
pub const REFUSALS_TOTAL: &str = "falgate_refusals_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installed on first use. A recorder is process-global
/// by the `metrics` crate's design, so several gates in one test process share it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding applications); then metrics
            // go there and /metrics shows only what this handle sees.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The text exposition for `/metrics`.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// Records one answered public request.
pub fn request_finished(route: &'static str, status: u16, elapsed: Duration, refusal: Option<&'static str>) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(REQUESTS_TOTAL, "route" => route, "status" => class).increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(elapsed.as_secs_f64());
    if let Some(code) = refusal {
        metrics::counter!(REFUSALS_TOTAL, "code" => code).increment(1);
    }
}

/// Records the time fal took to answer with headers (or to fail).
pub fn upstream_answered(op: &'static str, elapsed: Duration) {
    metrics::histogram!(UPSTREAM_DURATION, "op" => op).record(elapsed.as_secs_f64());
}
