//! Metrics on the admin listener, W3C trace context and request ids to fal, the JSON access line,
//! and OpenTelemetry export to a collector (a tiny OTLP/HTTP receiver on 127.0.0.1).

use std::process::Stdio;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::ChildStderr;

use crate::support::{Process, TestGate, FAL_KEY, SECRET, VPG};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The one value of header `name` in a request fal saw.
fn header<'a>(request: &'a falgate::emulator::RecordedRequest, name: &str) -> Option<&'a str> {
    let mut values = request
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    let value = values.next();
    assert!(values.next().is_none(), "{name} sent twice");
    value
}

/// `(trace id, parent id)` of a traceparent, asserting its exact W3C shape.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(
        hex(fields[1], 32) && hex(fields[2], 16) && hex(fields[3], 2),
        "{traceparent}"
    );
    (fields[1].to_owned(), fields[2].to_owned())
}

async fn scrape(client: &reqwest::Client, admin_url: &str) -> String {
    let metrics = client.get(format!("{admin_url}/metrics")).send();
    metrics.await.unwrap().text().await.unwrap()
}

/// The value of the series `series` (name and labels as exposed) in a scrape.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

/// Polls the scrape (with a deadline) until no stream is open and no call is in flight: a call's
/// gauges come down when the gate has finished writing its answer, just after the client has it.
async fn until_nothing_open(client: &reqwest::Client, admin_url: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(client, admin_url).await;
        if value(&text, "falgate_open_streams") == 0.0 && value(&text, "falgate_calls_in_flight") == 0.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} is still counted in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The metrics of a `falgate serve` process of its own (the metrics registry is process-wide,
/// so an in-process gate would also count the traffic of the tests running beside it): every
/// figure below is exactly what this test's own calls make.
#[tokio::test]
async fn metrics_show_histogram_buckets_and_gauges_after_calls() {
    // fal's jobs stay queued, so the status stream stays open until the test drops it.
    let fal = TestGate::builder().job_ms(600_000, 1_000).spawn().await;
    let falgate = Process::serve(&fal.fal_url, &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let alice = token("alice", Duration::from_secs(600));
    let submit = client
        .post(format!("{}/api/fal/queue/{VPG}", falgate.url))
        .bearer_auth(&alice)
        .json(&json!({"input_concept": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 200);
    let id = submit.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The submit is over once its answer has been written: nothing is open or in flight.
    until_nothing_open(&client, &falgate.admin_url, "the submit").await;
    let mut stream = client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{id}/status/stream",
            falgate.url
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    // While this stream is open, it is the one stream and the one call in flight.
    let during = scrape(&client, &falgate.admin_url).await;
    for gauge in ["falgate_open_streams", "falgate_calls_in_flight"] {
        assert_eq!(value(&during, gauge), 1.0, "{gauge} during the stream in\n{during}");
    }
    // The caller goes away: both gauges come back down.
    drop(stream);
    until_nothing_open(&client, &falgate.admin_url, "the dropped stream").await;
    let refused = client.get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", falgate.url));
    assert_eq!(refused.send().await.unwrap().status(), 401);
    let text = scrape(&client, &falgate.admin_url).await;
    for (series, count) in [
        (
            r#"falgate_http_request_duration_seconds_count{route_family="/api/fal/queue/",operation="submit",status_class="2xx"}"#,
            1.0,
        ),
        (
            r#"falgate_http_request_duration_seconds_count{route_family="/api/fal/queue/",operation="status_stream",status_class="2xx"}"#,
            1.0,
        ),
        (
            r#"falgate_http_request_duration_seconds_count{route_family="/api/fal/queue/",operation="none",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"falgate_upstream_request_duration_seconds_count{operation="submit",status="200"}"#,
            1.0,
        ),
        (
            r#"falgate_upstream_responses_total{operation="submit",status="200"}"#,
            1.0,
        ),
        (r#"falgate_refusals_total{code="unauthenticated"}"#, 1.0),
    ] {
        assert_eq!(value(&text, series), count, "{series} in\n{text}");
    }
    for series in [
        r#"falgate_http_request_duration_seconds_bucket{route_family="/api/fal/queue/",operation="submit",status_class="2xx",le="0.005"}"#,
        r#"falgate_http_request_duration_seconds_bucket{route_family="/api/fal/queue/",operation="status_stream",status_class="2xx",le="300"}"#,
        r#"falgate_upstream_request_duration_seconds_bucket{operation="submit",status="200",le="0.005"}"#,
        "falgate_open_connections ",
        r#"falgate_build_info{version=""#,
        "# TYPE falgate_http_request_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(series)),
            "{series} missing from\n{text}"
        );
    }
    // The stream's duration falls in a bucket at or under 300 s, and every refusal was the 401.
    assert_eq!(
        value(
            &text,
            r#"falgate_http_request_duration_seconds_bucket{route_family="/api/fal/queue/",operation="status_stream",status_class="2xx",le="300"}"#
        ),
        1.0
    );
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("falgate_refusals_total{"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(!text.contains("summary"), "durations are histograms:\n{text}");
}

#[tokio::test]
async fn every_call_to_fal_carries_a_traceparent_fresh_or_the_callers() {
    let gate = TestGate::spawn().await;
    let plain = gate
        .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "a"}))
        .await;
    assert_eq!(plain.status(), 200);
    let traced = gate
        .as_alice(reqwest::Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("traceparent", CALLER_PARENT)
        .header("tracestate", "vendor=abc")
        .json(&json!({"input_concept": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    let broken = gate
        .as_alice(reqwest::Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("traceparent", "00-NOT-A-TRACE-01")
        .json(&json!({"input_concept": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 200);
    let saw = gate.fal_saw();
    assert_eq!(saw.len(), 3, "{saw:?}");
    let sent: Vec<&str> = saw
        .iter()
        .map(|r| header(r, "traceparent").expect("a traceparent"))
        .collect();
    let (fresh_trace, _) = parts(sent[0]);
    let (caller_trace, _) = parts(sent[1]);
    let (replaced_trace, _) = parts(sent[2]);
    assert_eq!(caller_trace, CALLER_TRACE);
    assert_eq!(header(&saw[1], "tracestate"), Some("vendor=abc"));
    assert_ne!(fresh_trace, CALLER_TRACE);
    assert_ne!(fresh_trace, replaced_trace, "each fresh trace is new");
    assert_eq!(header(&saw[0], "tracestate"), None);
}

#[tokio::test]
async fn a_request_id_is_taken_only_from_a_trusted_proxy_and_reaches_fal() {
    let untrusted = TestGate::spawn().await;
    let trusted = TestGate::builder()
        .config("[limits]\ndefault_tier = \"default\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n[limits.tiers.default]\n")
        .spawn()
        .await;
    for (gate, honoured) in [(&untrusted, false), (&trusted, true)] {
        let response = gate
            .as_alice(reqwest::Method::POST, &format!("/api/fal/queue/{VPG}"))
            .header("x-request-id", "lb-7f3a9c")
            .json(&json!({"input_concept": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let returned = response.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
        assert_eq!(returned == "lb-7f3a9c", honoured, "{returned}");
        let saw = gate.fal_saw();
        assert_eq!(header(&saw[0], "x-request-id"), Some(returned.as_str()));
    }
    // Even a trusted proxy's id must be a plain, bounded one.
    let long = "a".repeat(129);
    for bad in ["has space", long.as_str()] {
        let response = trusted
            .client
            .get(format!("{}/healthz", trusted.url))
            .header("x-falgate-request-id", bad)
            .send()
            .await
            .unwrap();
        assert_ne!(response.headers()["x-falgate-request-id"], bad);
    }
}

/// A `falgate serve` child with JSON logs on stderr, in front of `fal`.
struct WithLogs {
    process: Process,
    stderr: Lines<BufReader<ChildStderr>>,
}

async fn process(fal: &str, env: &[(&str, &str)]) -> WithLogs {
    let env: Vec<(&str, &str)> = [("FALGATE_LOG__FORMAT", "json"), ("RUST_LOG", "info")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let mut process = Process::serve_with_stderr(fal, &env, Stdio::piped()).await;
    let stderr = BufReader::new(process.child.stderr.take().unwrap()).lines();
    WithLogs { process, stderr }
}

impl WithLogs {
    /// The public URL.
    fn url(&self) -> &str {
        &self.process.url
    }

    /// Reads stderr (JSON lines) until `wanted` holds for one, returning it and everything read.
    async fn line_where(&mut self, wanted: impl Fn(&Value) -> bool, seen: &mut String) -> Value {
        let read = async {
            while let Some(line) = self.stderr.next_line().await.unwrap() {
                seen.push_str(&line);
                seen.push('\n');
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if wanted(&value) {
                        return value;
                    }
                }
            }
            panic!("stderr ended");
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("no such log line in:\n{seen}"))
    }
}

fn token(sub: &str, ttl: Duration) -> String {
    falgate::auth::mint_hs256(SECRET.as_bytes(), sub, None, ttl).unwrap()
}

#[tokio::test]
async fn the_json_access_line_names_the_call_and_never_the_token() {
    let gate = TestGate::spawn().await;
    let mut falgate = process(&gate.fal_url, &[]).await;
    let client = crate::support::client();
    let alice = token("alice@example.com", Duration::from_secs(600));
    let submit = client
        .post(format!("{}/api/fal/queue/{VPG}", falgate.url()))
        .bearer_auth(&alice)
        .json(&json!({"input_concept": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 200);
    let request_id = submit.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
    let fal_request_id = submit.headers()["x-fal-request-id"].to_str().unwrap().to_owned();
    let size = submit.bytes().await.unwrap().len() as u64;
    let mut seen = String::new();
    let line = falgate
        .line_where(|v| v["request_id"] == request_id.as_str(), &mut seen)
        .await;
    assert_eq!(line["message"], "answered", "{line}");
    assert_eq!(line["route"], "/api/fal/queue/");
    assert_eq!(line["endpoint"], VPG);
    assert_eq!(line["operation"], "submit");
    assert_eq!(line["status"], 200);
    assert_eq!(line["fal_request_id"], fal_request_id.as_str());
    assert_eq!(line["bytes"], size);
    assert!(
        line["headers_ms"].as_f64().is_some() && line["total_ms"].as_f64().is_some(),
        "{line}"
    );
    let principal = line["principal"].as_str().unwrap();
    assert!(
        principal.len() == 16 && principal.bytes().all(|b| b.is_ascii_hexdigit()),
        "{line}"
    );

    // A stream's line is written when the stream ends, with its bytes and total time.
    let stream = client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{fal_request_id}/status/stream",
            falgate.url()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let stream_id = stream.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
    let streamed = stream.bytes().await.unwrap().len() as u64;
    let line = falgate
        .line_where(|v| v["request_id"] == stream_id.as_str(), &mut seen)
        .await;
    assert_eq!(line["operation"], "status_stream", "{line}");
    assert_eq!(line["outcome"], "complete");
    assert_eq!(line["bytes"], streamed);
    assert!(streamed > 0);
    assert!(line["total_ms"].as_f64() >= line["headers_ms"].as_f64(), "{line}");

    // A refused token says why, and the token itself appears nowhere.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice@example.com", "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let refused = client
        .get(format!(
            "{}/api/fal/queue/{VPG}/requests/{fal_request_id}/status",
            falgate.url()
        ))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused_id = refused.headers()["x-falgate-request-id"].to_str().unwrap().to_owned();
    let line = falgate
        .line_where(|v| v["request_id"] == refused_id.as_str(), &mut seen)
        .await;
    assert_eq!(line["code"], "unauthenticated", "{line}");
    assert_eq!(line["detail"], "expired", "{line}");
    for secret in [alice.as_str(), expired.as_str(), "alice@example.com", FAL_KEY] {
        assert!(!seen.contains(secret), "{secret} in the log:\n{seen}");
    }
}

/// A collector: every OTLP/HTTP export POSTed to `/v1/traces`, decoded.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (sent, received) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sent = sent.clone();
            async move {
                if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                    let _ = sent.send(export);
                }
                ""
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// `(name, trace id, span id)` of every span in an export, ids in hex.
fn spans(export: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
    export
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| {
            (
                span.name.clone(),
                hex::encode(&span.trace_id),
                hex::encode(&span.span_id),
            )
        })
        .collect()
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_fal_gets_the_same_trace() {
    let gate = TestGate::spawn().await;
    let (collector_url, mut exports) = collector().await;
    let falgate = process(
        &gate.fal_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("OTEL_SERVICE_NAME", "falgate-it"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let client = crate::support::client();
    let alice = token("alice", Duration::from_secs(600));
    for traceparent in [Some(CALLER_PARENT), None] {
        let mut call = client
            .post(format!("{}/api/fal/queue/{VPG}", falgate.url()))
            .bearer_auth(&alice)
            .json(&json!({"input_concept": "a cat"}));
        if let Some(value) = traceparent {
            call = call.header("traceparent", value);
        }
        assert_eq!(call.send().await.unwrap().status(), 200);
    }
    let saw = gate.fal_saw();
    let sent: Vec<(String, String)> = saw.iter().map(|r| parts(header(r, "traceparent").unwrap())).collect();
    assert_eq!(sent[0].0, CALLER_TRACE, "the caller's trace continues to fal");
    assert_ne!(sent[0].1, "00f067aa0ba902b7", "with falgate's span as the parent");
    let mut exported = Vec::new();
    let wait = async {
        while !sent.iter().all(|(trace, parent)| {
            exported.iter().any(|(name, t, s): &(String, String, String)| {
                name == "POST /api/fal/queue/" && t == trace && s == parent
            })
        }) {
            let export = exports.recv().await.unwrap();
            let service = export.resource_spans[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| format!("{:?}", kv.value));
            assert!(service.is_some_and(|s| s.contains("falgate-it")));
            exported.extend(spans(&export));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("fal saw {sent:?}; the collector got {exported:?}"));
}
