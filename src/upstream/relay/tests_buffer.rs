//! [`buffer`] against a stand-in for fal on `127.0.0.1:0` that answers whatever the test sets
//! (status, content type, body in chunks): fal's credential failures, the size bounds crossed
//! by one byte in several chunks, JSON required of control answers and of model output that
//! says it is JSON (and only of those), a submit without a request id, and the buffer budget
//! (model output streamed on past it, a control answer waiting for room). Found by mutation
//! (TESTING.md): these were only reached through `tests/it`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

use super::*;
use crate::config::{Config, FalCredentials};
use crate::error::GateError;
use crate::fal::{AppId, EndpointId, FalRequestId, Op};

/// What the stand-in answers next: status, content type, and the body's chunks.
#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    chunks: Vec<Vec<u8>>,
}

fn answer(status: u16, content_type: &'static str, chunks: &[&[u8]]) -> Answer {
    Answer {
        status,
        content_type,
        chunks: chunks.iter().map(|chunk| chunk.to_vec()).collect(),
    }
}

struct Fal {
    upstream: Upstream,
    next: Arc<Mutex<Answer>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Bounds: control answers 2048 bytes, model output 4096, the budget 2048 (2 KiB); fal's
/// silence tolerated 300 ms (how long a control answer waits for budget room).
async fn fal() -> Fal {
    let next = Arc::new(Mutex::new(answer(200, "application/json", &[b"{}"])));
    let serving = next.clone();
    let handler = move || {
        let Answer {
            status,
            content_type,
            chunks,
        } = serving.lock().unwrap().clone();
        async move {
            // One frame per chunk (chunked encoding): the reader sees them one by one.
            let frames = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk))),
            );
            axum::http::Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type)
                .header("x-fal-request-id", "fal-req-1")
                .header("set-cookie", "fal=1")
                .body(Body::from_stream(frames))
                .unwrap()
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = axum::Router::new().fallback(handler);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                stopped.await.ok();
            })
            .await
            .ok();
    });
    let vars: HashMap<String, String> = [
        ("FALGATE_UPSTREAM__QUEUE_URL", url.clone()),
        ("FALGATE_UPSTREAM__RUN_URL", format!("{url}/fal.run")),
        ("FALGATE_UPSTREAM__STORAGE_URL", format!("{url}/rest.fal.ai")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let config = Config::from_toml(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[auth]
hs256_secret = "relay-tests-secret-0123456789abcdef"
[upstream]
connect_timeout_ms = 2000
first_byte_timeout_ms = 5000
idle_timeout_ms = 300
max_response_bytes = 2048
max_result_bytes = 4096
buffer_budget_bytes = 2048
"#,
        &vars,
    )
    .unwrap();
    let upstream = Upstream::new(config.upstream, &FalCredentials::new("fk-relay-test".into()), 1).unwrap();
    Fal {
        upstream,
        next,
        _stop: stop,
    }
}

const ID: &str = "00000000-0000-4000-8000-000000000001";

fn app() -> AppId {
    EndpointId::parse("fal-ai/flux").unwrap().app()
}

fn status() -> Call {
    Call {
        op: Op::Status {
            app: app(),
            id: FalRequestId::parse(ID).unwrap(),
            logs: false,
        },
    }
}

fn result() -> Call {
    Call {
        op: Op::Result {
            app: app(),
            id: FalRequestId::parse(ID).unwrap(),
        },
    }
}

fn submit() -> Call {
    Call {
        op: Op::Submit {
            endpoint: EndpointId::parse("fal-ai/flux").unwrap(),
            webhook: None,
        },
    }
}

impl Fal {
    /// `call` answered with `next`, read by [`buffer`].
    async fn buffer(&self, call: &Call, next: Answer) -> Result<Buffered, GateError> {
        *self.next.lock().unwrap() = next;
        let response = self.upstream.send(call, HeaderMap::new(), None).await.unwrap();
        buffer(&self.upstream, call, response).await.map_err(GateError::from)
    }
}

async fn body(buffered: Buffered) -> (StatusCode, HeaderMap, Bytes) {
    let response = buffered.into_response();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

/// `n` bytes of a JSON object: `{"s":"xxx…"}`.
fn json_of(n: usize) -> Vec<u8> {
    let mut text = b"{\"s\":\"".to_vec();
    text.resize(n - 2, b'x');
    text.extend_from_slice(b"\"}");
    text
}

fn bad_response(err: &GateError) -> String {
    match err {
        GateError::UpstreamBadResponse(why) => why.clone(),
        other => panic!("not a bad response: {other:?}"),
    }
}

#[tokio::test]
async fn fals_401_and_403_are_credential_failures_never_relayed() {
    let fal = fal().await;
    for status in [401, 403] {
        let refused = fal
            .buffer(
                &status_call(),
                answer(status, "application/json", &[b"{\"detail\":\"no\"}"]),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(refused, GateError::UpstreamCredentials(s) if s == status),
            "{refused:?}"
        );
    }
    // Another refusal is fal's to relay, with the safe headers only.
    let relayed = fal
        .buffer(
            &status_call(),
            answer(404, "application/json", &[b"{\"detail\":\"gone\"}"]),
        )
        .await
        .unwrap();
    let (code, headers, bytes) = body(relayed).await;
    assert_eq!(
        (code, &bytes[..]),
        (StatusCode::NOT_FOUND, &b"{\"detail\":\"gone\"}"[..])
    );
    assert_eq!(headers["x-fal-request-id"], "fal-req-1");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(headers.get("set-cookie").is_none());
}

fn status_call() -> Call {
    status()
}

#[tokio::test]
async fn each_size_bound_is_exact_over_several_chunks() {
    let fal = fal().await;
    // A control answer of exactly 2048 bytes in two chunks passes; one byte more does not.
    let whole = json_of(2048);
    let (first, second) = whole.split_at(1024);
    let read = fal
        .buffer(&status_call(), answer(200, "application/json", &[first, second]))
        .await
        .unwrap();
    assert_eq!(read.body.len(), 2048);
    // It holds the whole budget until dropped.
    drop(read);
    let over = json_of(2049);
    let (first, second) = over.split_at(1024);
    let refused = fal
        .buffer(&status_call(), answer(200, "application/json", &[first, second]))
        .await
        .err()
        .unwrap();
    assert_eq!(bad_response(&refused), "answer larger than 2048 bytes");
    // Model output has its own, larger bound: 2049 bytes of it pass (once the budget is back).
    let output = fal
        .buffer(&result(), answer(200, "application/json", &[&json_of(2049)]))
        .await
        .unwrap();
    assert_eq!(body(output).await.2.len(), 2049);
}

#[tokio::test]
async fn control_answers_and_json_output_must_be_json_and_other_output_is_relayed_as_it_is() {
    let fal = fal().await;
    let garbage: &[u8] = b"<html>oops</html>";
    let refused = fal
        .buffer(&status_call(), answer(200, "application/json", &[garbage]))
        .await
        .err()
        .unwrap();
    assert_eq!(bad_response(&refused), "status answer with status 200 OK is not JSON");
    let refused = fal
        .buffer(&result(), answer(200, "application/json", &[garbage]))
        .await
        .err()
        .unwrap();
    assert_eq!(bad_response(&refused), "result answer with status 200 OK is not JSON");
    // Output that says it is something else is relayed untouched.
    let relayed = fal
        .buffer(&result(), answer(200, "text/plain", &[garbage]))
        .await
        .unwrap();
    let (code, headers, bytes) = body(relayed).await;
    assert_eq!((code, &bytes[..]), (StatusCode::OK, garbage));
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
    // A refusal's body is read for its fields, never required to be JSON.
    let relayed = fal
        .buffer(&status_call(), answer(500, "text/html", &[garbage]))
        .await
        .unwrap();
    assert_eq!(body(relayed).await.0, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_submit_answer_needs_a_valid_request_id_and_other_answers_do_not() {
    let fal = fal().await;
    let refused = fal
        .buffer(
            &submit(),
            answer(200, "application/json", &[b"{\"status\":\"IN_QUEUE\"}"]),
        )
        .await
        .err()
        .unwrap();
    // After sending a submit, fal may have taken it: its outcome is unknown, not a plain 502.
    assert!(
        matches!(&refused, GateError::SubmitOutcomeUnknown(why) if why == "submit answer has no valid request_id"),
        "{refused:?}"
    );
    let accepted = fal
        .buffer(
            &submit(),
            answer(
                200,
                "application/json",
                &[format!("{{\"request_id\":\"{ID}\"}}").as_bytes()],
            ),
        )
        .await
        .unwrap();
    assert_eq!(accepted.submitted_id().unwrap().as_str(), ID);
    drop(accepted);
    // A refused submit has no request id, and is relayed as fal's refusal.
    let refused = fal
        .buffer(&submit(), answer(422, "application/json", &[b"{\"detail\":[]}"]))
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.submitted_id().is_none());
    drop(refused);
    // A status answer names its state; none of these is a submit.
    let running = fal
        .buffer(
            &status_call(),
            answer(200, "application/json", &[b"{\"status\":\"IN_PROGRESS\"}"]),
        )
        .await
        .unwrap();
    assert!(!running.completed() && !running.already_completed());
    drop(running);
    let done = fal
        .buffer(
            &status_call(),
            answer(200, "application/json", &[b"{\"status\":\"COMPLETED\"}"]),
        )
        .await
        .unwrap();
    assert!(done.completed() && !done.already_completed());
}

#[tokio::test]
async fn past_the_budget_output_streams_on_and_a_control_answer_waits_for_room() {
    let fal = fal().await;
    // 3000 bytes of output in three chunks against a 2 KiB budget: the third does not fit, and
    // the answer is streamed on from there, whole.
    let whole = json_of(3000);
    let chunks: Vec<&[u8]> = whole.chunks(1000).collect();
    let output = fal
        .buffer(&result(), answer(200, "application/json", &chunks))
        .await
        .unwrap();
    assert_eq!(
        fal.upstream.budget().available_kib(),
        0,
        "the first two chunks hold it all"
    );
    let held = output.into_response();
    // Meanwhile a control answer waits for room, and gives up after fal's idle time.
    let waited = fal
        .buffer(
            &status_call(),
            answer(200, "application/json", &[b"{\"status\":\"IN_QUEUE\"}"]),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(waited, GateError::UpstreamTimeout), "{waited:?}");
    let bytes = held.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], &whole[..]);
    assert_eq!(
        fal.upstream.budget().available_kib(),
        2,
        "the charge is given back with the body"
    );
    // Within the budget, an answer holds what it read until its response is dropped.
    let read = fal
        .buffer(
            &status_call(),
            answer(200, "application/json", &[b"{\"status\":\"IN_QUEUE\"}"]),
        )
        .await
        .unwrap();
    assert_eq!(fal.upstream.budget().available_kib(), 1);
    drop(read);
    assert_eq!(fal.upstream.budget().available_kib(), 2);
}

/// A completed status answer's failure, as `finished` events report it: fal's `error_type` when
/// it is a string (whatever `error` says), `"error"` when only `error` names one, none when
/// neither does (`error: null` included); an `error_type` of another type is read as absent,
/// not as an unreadable answer.
#[tokio::test]
async fn a_completed_status_names_its_failure_by_error_type_then_error() {
    let fal = fal().await;
    let cases: [(&[u8], Option<&str>); 6] = [
        (
            br#"{"status":"COMPLETED","error_type":"Timeout","error":"slow"}"#,
            Some("Timeout"),
        ),
        (br#"{"status":"COMPLETED","error_type":"Timeout"}"#, Some("Timeout")),
        (br#"{"status":"COMPLETED","error":"boom"}"#, Some("error")),
        (br#"{"status":"COMPLETED","error":null}"#, None),
        (
            br#"{"status":"COMPLETED","error_type":7,"error":"boom"}"#,
            Some("error"),
        ),
        (br#"{"status":"COMPLETED","error_type":7}"#, None),
    ];
    for (json, failure) in cases {
        let read = fal
            .buffer(&status_call(), answer(200, "application/json", &[json]))
            .await
            .unwrap();
        assert!(read.completed());
        assert_eq!(read.failure(), failure, "{}", String::from_utf8_lossy(json));
    }
}
