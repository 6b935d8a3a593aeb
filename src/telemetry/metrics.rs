//! Metric names, buckets and the Prometheus recorder. Labels come from bounded sets only (route
//! family, status class, error code, operation, fal's status code, issuer name), never a caller id
//! or a raw path. Names follow Prometheus conventions: base units in the name (`_seconds`),
//! `_total` for counters, durations as histograms with explicit buckets so they aggregate
//! across replicas.
//!
//! Per request, a handle is looked up in a thread-local map keyed by its labels (the `metrics`
//! macros build a `Key` with a label `Vec` and hash it into a shared registry on every call); the
//! gauges and unlabelled series are cached once per process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Public calls: `route_family`, `operation`, `status_class`; from the request's arrival to the
/// end of its answer (for streams, the end of the stream).
pub const HTTP_REQUEST_DURATION: &str = "falgate_http_request_duration_seconds";
/// fal's time to answer with headers: `operation`, `status` (fal's code, or `timeout` / `error`).
pub const UPSTREAM_REQUEST_DURATION: &str = "falgate_upstream_request_duration_seconds";
/// fal's answers: `operation`, `status`.
pub const UPSTREAM_RESPONSES_TOTAL: &str = "falgate_upstream_responses_total";
/// falgate's own refusals: `code`.
pub const REFUSALS_TOTAL: &str = "falgate_refusals_total";
/// Open connections on the public listener.
pub const OPEN_CONNECTIONS: &str = "falgate_open_connections";
/// Event streams being relayed.
pub const OPEN_STREAMS: &str = "falgate_open_streams";
/// Public calls whose answer has not ended yet (streams included).
pub const CALLS_IN_FLIGHT: &str = "falgate_calls_in_flight";
/// Redis calls: `op` (`eval` for the limits scripts, `get` / `set` for ownership, `ping`).
pub const REDIS_DURATION: &str = "falgate_redis_duration_seconds";
/// Redis calls that failed or timed out: `op`.
pub const REDIS_ERRORS_TOTAL: &str = "falgate_redis_errors_total";
/// JWKS downloads: `issuer`, `result` (`ok` / `error`).
pub const JWKS_REFRESH_TOTAL: &str = "falgate_jwks_refresh_total";
/// Configuration reloads: `result` (`ok` / `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "falgate_config_reloads_total";
/// Concurrency slots of jobs in flight freed by the reconciler (fal said the job ended).
pub const INFLIGHT_RECONCILED_TOTAL: &str = "falgate_inflight_reconciled_total";
/// Calls let through unmetered while Redis was down (`on_store_error = "allow"`), by `limit`
/// (`rate`, `ip_rate`, `slot`): never money-like limits, which fail closed.
pub const LIMITS_FAIL_OPEN_TOTAL: &str = "falgate_limits_fail_open_total";
/// Verified fal webhook deliveries: `result` (`applied` / `duplicate`).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "falgate_webhook_deliveries_total";
/// Deliveries forwarded to a caller's own hook: `result` (`ok` / `failed` / `dropped`).
pub const WEBHOOK_FORWARDS_TOTAL: &str = "falgate_webhook_forwards_total";
/// Always 1; the labels say which build runs: `version`, `rustc`.
pub const BUILD_INFO: &str = "falgate_build_info";

/// Call durations: health checks take microseconds, sync runs and event streams minutes.
const CALL_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// fal's time to headers: milliseconds for control calls, up to the first-byte timeout for runs.
const UPSTREAM_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Redis round trips: sub-millisecond on a local network; the default call timeout is 100 ms.
const REDIS_BUCKETS: [f64; 11] = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installed on first use. A recorder is process-global
/// by the `metrics` crate's design, so several gates in one test process share it.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), &CALL_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPSTREAM_REQUEST_DURATION.into()), &UPSTREAM_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REDIS_DURATION.into()), &REDIS_BUCKETS))
        // Only fails on an empty bucket list; the lists above are constants.
        .expect("metric buckets are non-empty")
        .build_recorder();
    let handle = recorder.handle();
    // Another recorder may already be installed (embedding applications); then metrics go there
    // and /metrics shows only what this handle sees.
    let _ = metrics::set_global_recorder(recorder);
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "rustc" => env!("RUSTC_VERSION_FOR_BUILD_INFO"))
        .set(1.0);
    handle
}

/// `# HELP` lines, so a scrape explains itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Public calls, arrival to the end of the answer."
    );
    describe_histogram!(
        UPSTREAM_REQUEST_DURATION,
        Unit::Seconds,
        "fal's time to answer with headers."
    );
    describe_counter!(UPSTREAM_RESPONSES_TOTAL, "fal's answers by operation and status.");
    describe_counter!(REFUSALS_TOTAL, "Calls falgate refused, by error code.");
    describe_gauge!(OPEN_CONNECTIONS, "Open connections on the public listener.");
    describe_gauge!(OPEN_STREAMS, "Event streams being relayed from fal.");
    describe_gauge!(CALLS_IN_FLIGHT, "Public calls whose answer has not ended.");
    describe_histogram!(REDIS_DURATION, Unit::Seconds, "Redis calls, by operation.");
    describe_counter!(REDIS_ERRORS_TOTAL, "Redis calls that failed or timed out.");
    describe_counter!(JWKS_REFRESH_TOTAL, "JWKS downloads by issuer and result.");
    describe_counter!(WEBHOOK_DELIVERIES_TOTAL, "Verified fal webhook deliveries by result.");
    describe_counter!(
        WEBHOOK_FORWARDS_TOTAL,
        "Webhook deliveries forwarded to a caller's hook, by result."
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Configuration reloads by result.");
    describe_counter!(
        INFLIGHT_RECONCILED_TOTAL,
        "Job slots freed by the reconciler after fal said the job ended."
    );
    describe_counter!(
        LIMITS_FAIL_OPEN_TOTAL,
        "Calls let through unmetered while the limits store was down, by limit."
    );
    describe_gauge!(BUILD_INFO, "The running build (always 1).");
}

/// The text exposition for `/metrics`.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// The gauges, fetched once (after the recorder is installed, so they are not no-ops).
struct Gauges {
    connections: Gauge,
    streams: Gauge,
    in_flight: Gauge,
}

fn gauges() -> &'static Gauges {
    static GAUGES: OnceLock<Gauges> = OnceLock::new();
    GAUGES.get_or_init(|| {
        handle();
        Gauges {
            connections: metrics::gauge!(OPEN_CONNECTIONS),
            streams: metrics::gauge!(OPEN_STREAMS),
            in_flight: metrics::gauge!(CALLS_IN_FLIGHT),
        }
    })
}

/// A thread's cached handles, by label values.
type Handles<K, H> = RefCell<HashMap<K, H>>;

thread_local! {
    static CALLS: Handles<(&'static str, &'static str, &'static str), Histogram> = RefCell::new(HashMap::new());
    static UPSTREAM: Handles<(&'static str, u16), (Histogram, Counter)> = RefCell::new(HashMap::new());
    static REFUSALS: Handles<&'static str, Counter> = RefCell::new(HashMap::new());
    static REDIS: Handles<&'static str, (Histogram, Counter)> = RefCell::new(HashMap::new());
}

/// `2xx`, `4xx`, …
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Records one finished public call (`operation` is `none` when no fal call was parsed).
pub fn request_finished(
    route: &'static str,
    operation: &'static str,
    status: u16,
    elapsed: Duration,
    refusal: Option<&'static str>,
) {
    let class = status_class(status);
    CALLS.with_borrow_mut(|calls| {
        calls
            .entry((route, operation, class))
            .or_insert_with(|| {
                handle();
                metrics::histogram!(HTTP_REQUEST_DURATION, "route_family" => route, "operation" => operation, "status_class" => class)
            })
            .record(elapsed.as_secs_f64());
    });
    if let Some(code) = refusal {
        REFUSALS.with_borrow_mut(|refusals| {
            refusals
                .entry(code)
                .or_insert_with(|| {
                    handle();
                    metrics::counter!(REFUSALS_TOTAL, "code" => code)
                })
                .increment(1);
        });
    }
}

/// What fal did with one call: its status code, or no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Status(u16),
    /// No headers within the first-byte (or connect) timeout.
    Timeout,
    /// Unreachable, or the connection broke before headers.
    Error,
}

/// Records fal's answer (or failure) and the time it took to headers.
pub fn upstream_answered(operation: &'static str, outcome: UpstreamOutcome, elapsed: Duration) {
    // 0 and 1 never are HTTP status codes: they stand for the two failures in the map key.
    let code = match outcome {
        UpstreamOutcome::Status(code) => code,
        UpstreamOutcome::Timeout => 0,
        UpstreamOutcome::Error => 1,
    };
    UPSTREAM.with_borrow_mut(|upstream| {
        let (histogram, counter) = upstream.entry((operation, code)).or_insert_with(|| {
            handle();
            let status = match outcome {
                UpstreamOutcome::Status(code) => code.to_string(),
                UpstreamOutcome::Timeout => "timeout".to_owned(),
                UpstreamOutcome::Error => "error".to_owned(),
            };
            (
                metrics::histogram!(UPSTREAM_REQUEST_DURATION, "operation" => operation, "status" => status.clone()),
                metrics::counter!(UPSTREAM_RESPONSES_TOTAL, "operation" => operation, "status" => status),
            )
        });
        histogram.record(elapsed.as_secs_f64());
        counter.increment(1);
    });
}

/// Records one Redis call (`op` is a fixed name such as `eval`, `get`, `set`, `ping`).
pub fn redis_call(op: &'static str, elapsed: Duration, ok: bool) {
    REDIS.with_borrow_mut(|redis| {
        let (histogram, errors) = redis.entry(op).or_insert_with(|| {
            handle();
            (
                metrics::histogram!(REDIS_DURATION, "op" => op),
                metrics::counter!(REDIS_ERRORS_TOTAL, "op" => op),
            )
        });
        histogram.record(elapsed.as_secs_f64());
        if !ok {
            errors.increment(1);
        }
    });
}

/// Records one JWKS download for the issuer named `issuer` (a configured name: bounded).
pub fn jwks_refreshed(issuer: &str, ok: bool) {
    handle();
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(JWKS_REFRESH_TOTAL, "issuer" => issuer.to_owned(), "result" => result).increment(1);
}

/// Records one verified webhook delivery: `applied` (first of its request) or `duplicate`.
pub fn webhook_delivered(applied: bool) {
    handle();
    let result = if applied { "applied" } else { "duplicate" };
    metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "result" => result).increment(1);
}

/// Records one forward to a caller's hook: `ok`, `failed` (attempts spent) or `dropped` (queue full).
pub fn webhook_forwarded(result: &'static str) {
    handle();
    metrics::counter!(WEBHOOK_FORWARDS_TOTAL, "result" => result).increment(1);
}

/// Records one call let through a short-term limit unmetered (the store down, `allow`).
pub fn limits_fail_open(limit: &'static str) {
    handle();
    metrics::counter!(LIMITS_FAIL_OPEN_TOTAL, "limit" => limit).increment(1);
}

/// Records `freed` job slots freed by one pass of the reconciler.
pub fn inflight_reconciled(freed: usize) {
    handle();
    metrics::counter!(INFLIGHT_RECONCILED_TOTAL).increment(freed as u64);
}

/// Records one configuration reload (SIGHUP): `ok` when the new config was swapped in.
pub fn config_reloaded(ok: bool) {
    handle();
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

/// The public listener accepted a connection; call [`connection_closed`] when it ends, or hold
/// a [`ConnectionGuard`] instead.
pub fn connection_opened() {
    gauges().connections.increment(1.0);
}

/// A connection counted by [`connection_opened`] ended.
pub fn connection_closed() {
    gauges().connections.decrement(1.0);
}

/// Counts one open connection for as long as it is held.
#[must_use = "the connection counts as open only while the guard is held"]
pub struct ConnectionGuard(());

impl ConnectionGuard {
    pub fn open() -> Self {
        connection_opened();
        Self(())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        connection_closed();
    }
}

/// Counts one relayed event stream for as long as it is held (it lives in the stream's body).
#[must_use = "the stream counts as open only while the guard is held"]
pub struct StreamGuard(());

impl StreamGuard {
    pub fn open() -> Self {
        gauges().streams.increment(1.0);
        Self(())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        gauges().streams.decrement(1.0);
    }
}

/// Counts one public call until its answer ends (it moves into a streamed body).
#[must_use = "the call counts as in flight only while the guard is held"]
pub struct InFlightGuard(());

impl InFlightGuard {
    pub fn start() -> Self {
        gauges().in_flight.increment(1.0);
        Self(())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        gauges().in_flight.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` (labels in exposition order) in a scrape.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_finished_call_renders_a_histogram_with_the_explicit_buckets() {
        let handle = handle();
        request_finished("/api/fal/queue/", "submit", 201, Duration::from_millis(30), None);
        request_finished(
            "/api/fal/queue/",
            "submit",
            403,
            Duration::from_millis(2),
            Some("quota_exceeded"),
        );
        let text = render(&handle);
        let labels = r#"route_family="/api/fal/queue/",operation="submit",status_class="2xx""#;
        // 30 ms falls in the 0.05 bucket, not in the 0.025 one.
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("{HTTP_REQUEST_DURATION}_bucket{{{labels},le=\"{le}\"}}"),
            )
        };
        assert!(bucket("0.025").is_some_and(|n| n < 1.0), "{text}");
        assert!(bucket("0.05").is_some_and(|n| n >= 1.0), "{text}");
        assert!(bucket("300").is_some(), "{text}");
        assert!(
            text.contains(&format!("# TYPE {HTTP_REQUEST_DURATION} histogram")),
            "{text}"
        );
        assert!(sample(&text, &format!(r#"{REFUSALS_TOTAL}{{code="quota_exceeded"}}"#)).is_some_and(|n| n >= 1.0));
    }

    #[test]
    fn upstream_answers_are_counted_by_operation_and_fal_status() {
        let handle = handle();
        upstream_answered("cancel", UpstreamOutcome::Status(400), Duration::from_millis(7));
        upstream_answered("cancel", UpstreamOutcome::Timeout, Duration::from_secs(2));
        let text = render(&handle);
        for status in ["400", "timeout"] {
            let labels = format!(r#"operation="cancel",status="{status}""#);
            assert!(sample(&text, &format!("{UPSTREAM_RESPONSES_TOTAL}{{{labels}}}")).is_some_and(|n| n >= 1.0));
            assert!(
                sample(
                    &text,
                    &format!("{UPSTREAM_REQUEST_DURATION}_bucket{{{labels},le=\"0.01\"}}")
                )
                .is_some(),
                "{text}"
            );
        }
    }

    #[test]
    fn gauges_follow_their_guards_and_build_info_names_the_version() {
        let handle = handle();
        let streams = || sample(&render(&handle), OPEN_STREAMS).unwrap_or(0.0);
        // Other tests in this process may hold streams too, so only "at least this one" holds.
        let guard = StreamGuard::open();
        assert!(streams() >= 1.0);
        drop(guard);
        redis_call("get", Duration::from_micros(300), false);
        config_reloaded(false);
        let text = render(&handle);
        assert!(
            text.contains(&format!(r#"{BUILD_INFO}{{version="{}""#, env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(sample(&text, &format!(r#"{REDIS_ERRORS_TOTAL}{{op="get"}}"#)).is_some_and(|n| n >= 1.0));
        assert!(
            text.contains(&format!("{REDIS_DURATION}_bucket{{op=\"get\",le=\"0.00025\"}}")),
            "{text}"
        );
        assert!(sample(&text, &format!(r#"{CONFIG_RELOADS_TOTAL}{{result="error"}}"#)).is_some_and(|n| n >= 1.0));
    }
}
