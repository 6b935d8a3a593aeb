//! The SSE status stream, the storage round trip and `serve` over real TCP.

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::tests::{call, emulator, submit, VPG};
use crate::emulator::{serve, Emulator, Fault, FaultAction, Op};

/// Reads a body chunk by chunk: the chunks received, and whether it ended with an error.
async fn read_chunks(emulator: &Emulator, uri: &str) -> (Vec<Bytes>, bool, axum::http::HeaderMap) {
    let request = Request::get(uri)
        .header("authorization", "Key k")
        .body(Body::empty())
        .expect("request");
    let response = emulator.router().oneshot(request).await.expect("infallible router");
    let headers = response.headers().clone();
    let mut stream = response.into_body().into_data_stream();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => chunks.push(bytes),
            Err(_) => return (chunks, true, headers),
        }
    }
    (chunks, false, headers)
}

fn events(chunks: &[Bytes]) -> Vec<Value> {
    let text: String = chunks
        .iter()
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap_or(event)).unwrap_or(Value::Null))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn status_stream_sends_new_logs_only_and_ends_after_completed() {
    let emulator = emulator();
    let id = submit(&emulator, VPG, &json!({ "input_concept": "x" })).await;
    let (chunks, broken, headers) = read_chunks(&emulator, &format!("/{VPG}/requests/{id}/status/stream?logs=1")).await;
    assert!(!broken, "stream must end cleanly");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    let events = events(&chunks);
    let statuses: Vec<&str> = events.iter().filter_map(|event| event["status"].as_str()).collect();
    assert_eq!(statuses.len(), events.len(), "every event is a status object");
    assert_eq!(statuses.first().copied(), Some("IN_QUEUE"));
    assert_eq!(statuses.iter().filter(|status| **status == "COMPLETED").count(), 1);
    assert_eq!(
        statuses.last().copied(),
        Some("COMPLETED"),
        "stream closes right after COMPLETED"
    );
    assert!(statuses.contains(&"IN_PROGRESS"));
    let logs: usize = events
        .iter()
        .filter_map(|event| event["logs"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(logs, 3, "each log line is sent exactly once");
    assert_eq!(events.len(), 11, "one event at once, then every 100 ms until 1000 ms");
}

#[tokio::test(start_paused = true)]
async fn stream_drop_fault_breaks_after_n_events_and_unknown_stream_is_404() {
    let emulator = emulator();
    let id = submit(&emulator, "a/b", &json!({})).await;
    let action = FaultAction::StreamDrop { after_events: 2 };
    emulator.add_fault(Fault {
        op: Some(Op::StatusStream),
        path_contains: None,
        action,
        times: Some(1),
    });
    let (chunks, broken, _) = read_chunks(&emulator, &format!("/a/b/requests/{id}/status/stream")).await;
    assert!(broken, "connection must break without a clean end");
    assert_eq!(events(&chunks).len(), 2);
    assert_eq!(events(&chunks)[0]["logs"], Value::Null, "no logs without logs=1");
    let unknown = call(&emulator, "GET", "/a/b/requests/nope/status/stream", Body::empty()).await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (StatusCode::NOT_FOUND, json!({ "detail": "Request not found" }))
    );
}

#[tokio::test(start_paused = true)]
async fn storage_initiate_put_and_get_round_trip() {
    let emulator = emulator();
    let body = json!({ "content_type": "text/plain", "file_name": "hello world.txt" }).to_string();
    let uri = "/rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3";
    let initiated = call(&emulator, "POST", uri, body.clone()).await.json();
    let path = |field: &str| {
        initiated[field]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("http://emu.test")
            .to_owned()
    };
    assert!(path("upload_url").starts_with("/_storage/upload/"), "{initiated}");
    assert!(path("file_url").ends_with("/hello%20world.txt"), "{initiated}");
    let put = Request::put(path("upload_url"))
        .header("content-type", "text/plain")
        .body(Body::from("Hello, World!"));
    let stored = emulator
        .router()
        .oneshot(put.expect("request"))
        .await
        .expect("infallible");
    assert_eq!(stored.status(), StatusCode::OK);
    let fetched = call(&emulator, "GET", &path("file_url"), Body::empty()).await;
    assert_eq!(fetched.body.as_deref().ok(), Some(&b"Hello, World!"[..]));
    assert_eq!(
        fetched.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain")
    );
    let unknown = call(&emulator, "PUT", "/_storage/upload/nope", "x").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let anonymous = Request::post(uri).body(Body::from(body)).expect("request");
    let refused = emulator.router().oneshot(anonymous).await.expect("infallible");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(emulator.requests().len(), 2, "only the two initiate calls are recorded");
}

#[tokio::test]
async fn serve_answers_over_tcp_breaks_dropped_bodies_and_shuts_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let emulator = emulator();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, emulator.clone(), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let submit = client
        .post(format!("http://{address}/a/b"))
        .header("authorization", "Key k")
        .body("{}");
    let body: Value = submit.send().await.expect("submit").json().await.expect("json");
    assert_eq!(
        body["status_url"],
        format!(
            "http://{address}/a/b/requests/{}/status",
            body["request_id"].as_str().unwrap_or_default()
        )
    );
    emulator.add_fault(Fault {
        op: None,
        path_contains: None,
        action: FaultAction::Drop,
        times: None,
    });
    let dropped = client
        .post(format!("http://{address}/a/b"))
        .header("authorization", "Key k")
        .body("{}");
    let response = dropped.send().await.expect("headers arrive");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(response.bytes().await.is_err(), "client must see a broken body");
    let _ = stop.send(());
    assert!(server.await.expect("join").is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_streaming_run_sends_growing_partials_then_the_output_and_refuses_bad_input_with_422() {
    let emulator = emulator();
    let request = Request::post(format!("/fal.run/{VPG}/stream"))
        .header("authorization", "Key k")
        .body(Body::from(
            r#"{"input_concept":"a city at night","prompt_length":"Short"}"#,
        ))
        .expect("request");
    let response = emulator.router().oneshot(request).await.expect("infallible router");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().contains_key("x-fal-request-id"));
    let chunks: Vec<Bytes> = response
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.expect("a clean stream"))
        .collect()
        .await;
    let prompts: Vec<String> = events(&chunks)
        .iter()
        .map(|event| event["prompt"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(prompts.len(), 3, "{prompts:?}");
    assert_eq!(prompts[2], "Simple video of a city at night.");
    assert!(prompts[0].len() < prompts[1].len() && prompts[1].len() < prompts[2].len());
    assert!(prompts[2].starts_with(&prompts[1]) && prompts[1].starts_with(&prompts[0]));

    let invalid = call(
        &emulator,
        "POST",
        &format!("/fal.run/{VPG}/stream"),
        r#"{"style":"Noir"}"#,
    )
    .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.json()["detail"][0]["loc"], json!(["body", "input_concept"]));
}

#[tokio::test(start_paused = true)]
async fn a_held_stream_waits_for_its_release() {
    let emulator = emulator();
    emulator.add_fault(Fault {
        op: Some(Op::RunStream),
        path_contains: None,
        action: FaultAction::Hold {
            after_events: 1,
            key: "k".into(),
        },
        times: None,
    });
    let request = Request::post("/fal.run/a/b/stream")
        .header("authorization", "Key k")
        .body(Body::from("{}"))
        .expect("request");
    let response = emulator.router().oneshot(request).await.expect("infallible router");
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.expect("a first event").expect("clean");
    assert_eq!(&first[..], b"data: {\"partial\":1}\n\n");
    // Held: nothing more within the emulator's interval, many times over.
    let held = tokio::time::timeout(std::time::Duration::from_secs(5), body.next()).await;
    assert!(held.is_err(), "the stream went on without its release");
    emulator.release("k");
    let rest: Vec<Bytes> = body.map(|chunk| chunk.expect("clean")).collect().await;
    assert_eq!(events(&rest).len(), 2);
}
