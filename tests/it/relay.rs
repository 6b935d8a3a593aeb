//! The relay: every queue operation end to end, what fal sees, what the client gets back,
//! streams unbuffered, and upstream failures mapped to the contract.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

use falgate::emulator::{FaultAction, Op};

use crate::support::{wait_completed, TestGate, FAL_KEY, VPG};

#[tokio::test]
async fn submit_status_result_round_trip_with_server_key_and_no_caller_credentials() {
    let gate = TestGate::spawn().await;
    let response = gate
        .as_alice(Method::POST, &format!("/api/fal/queue/{VPG}"))
        .header("cookie", "session=browser-secret")
        .header("x-fal-queue-priority", "low")
        .header("x-custom", "nope")
        .json(&json!({"input_concept": "a lighthouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let submitted: serde_json::Value = response.json().await.unwrap();
    let id = submitted["request_id"].as_str().unwrap();
    wait_completed(&gate, id).await;
    let result = gate.get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}")).await;
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["x-fal-request-id"], id);
    let output: serde_json::Value = result.json().await.unwrap();
    assert!(
        output["prompt"].as_str().is_some_and(|p| p.contains("a lighthouse")),
        "{output}"
    );
    for seen in gate.fal_saw() {
        let auth: Vec<_> = seen
            .headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(auth, [format!("Key {FAL_KEY}")], "{} {}", seen.method, seen.path);
        assert!(
            !seen
                .headers
                .iter()
                .any(|(k, _)| ["cookie", "x-custom", "x-fal-target-url"].contains(&k.as_str())),
            "{seen:?}"
        );
    }
    let submit = &gate.fal_saw()[0];
    assert!(submit.headers.contains(&("x-fal-queue-priority".into(), "low".into())));
}

#[tokio::test]
async fn status_stream_is_relayed_as_events_before_the_request_completes() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "waves"})).await;
    let response = gate
        .as_alice(
            Method::GET,
            &format!("/api/fal/queue/{VPG}/requests/{id}/status/stream?logs=1"),
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let first = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    // The first event arrives while fal still works on the request: nothing was buffered.
    assert!(first.starts_with("data: ") && !first.contains("COMPLETED"), "{first}");
    let mut all = first;
    while let Some(chunk) = body.next().await {
        all.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(all.contains("\"COMPLETED\""), "{all}");
}

#[tokio::test]
async fn a_stream_fal_drops_midway_ends_in_an_error_not_a_clean_end() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "waves"})).await;
    gate.fault(Op::StatusStream, FaultAction::StreamDrop { after_events: 1 });
    let response = gate
        .as_alice(
            Method::GET,
            &format!("/api/fal/queue/{VPG}/requests/{id}/status/stream"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    // Bounded well below the client's 20 s total timeout, whose error must not count.
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if let Err(err) = chunk {
                return Some(err);
            }
        }
        None
    })
    .await
    .expect("the broken stream was still open after 10 s");
    let err = failed.expect("the client saw a clean end of a broken stream");
    assert!(!err.is_timeout(), "the client's own timeout ended the stream: {err}");
}

#[tokio::test]
async fn sync_run_cancel_and_storage_initiate_reach_their_hosts() {
    let gate = TestGate::spawn().await;
    let run = gate
        .post_as_alice(&format!("/api/fal/run/{VPG}"), &json!({"input_concept": "fog"}))
        .await;
    assert_eq!(run.status(), 200);
    assert!(run.headers().contains_key("x-fal-request-id"));
    let id = gate.submit("alice", json!({"input_concept": "fog"})).await;
    let cancel = gate
        .as_alice(Method::PUT, &format!("/api/fal/queue/{VPG}/requests/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let upload = gate
        .as_alice(Method::POST, "/api/fal/proxy")
        .header(
            "x-fal-target-url",
            "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
        )
        .json(&json!({"content_type": "text/plain", "file_name": "a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let paths: Vec<String> = gate
        .fal_saw()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            format!("POST /fal.run/{VPG}"),
            format!("POST /{VPG}"),
            format!("PUT /{VPG}/requests/{id}/cancel"),
            "POST /rest.fal.ai/storage/upload/initiate".to_owned(),
        ]
    );
}

#[tokio::test]
async fn fal_errors_pass_through_verbatim_without_cookies_or_cors_headers() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    let headers = vec![
        ("set-cookie".to_owned(), "fal=1".to_owned()),
        ("access-control-allow-origin".to_owned(), "*".to_owned()),
        ("x-fal-request-id".to_owned(), id.clone()),
    ];
    gate.fault(
        Op::Result,
        FaultAction::Status {
            status: 500,
            body: json!({"detail": "model crashed"}),
            headers,
        },
    );
    let response = gate.get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}")).await;
    assert_eq!(response.status(), 500);
    assert!(!response.headers().contains_key("x-falgate-error"));
    assert!(!response.headers().contains_key("set-cookie"));
    assert!(!response.headers().contains_key("access-control-allow-origin"));
    assert_eq!(response.headers()["x-fal-request-id"], id.as_str());
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"detail": "model crashed"})
    );
}

#[tokio::test]
async fn unreachable_fal_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let gate = TestGate::builder().queue_url(&format!("http://{addr}")).spawn().await;
    let response = gate
        .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
        .await;
    gate.assert_refused(response, 502, "upstream_unreachable").await;
}

/// The connect timeout covers the TLS handshake too: a fal that accepts TCP and then says nothing
/// is a connect failure (504, the submit never left), not a sent submit of unknown outcome (424).
#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_timeout_not_an_unknown_outcome() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let gate = TestGate::builder()
        .queue_url(&format!("https://{addr}"))
        .env("FALGATE_UPSTREAM__CONNECT_TIMEOUT_MS", "200")
        .env("FALGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "3000")
        .spawn()
        .await;
    let response = gate
        .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
        .await;
    gate.assert_refused(response, 504, "upstream_timeout").await;
    held.abort();
}

/// With `HTTPS_PROXY` set, fal is reached through the proxy's CONNECT tunnel (with the proxy's
/// credentials from the URL), and the proxy sees the host name only: never the fal key.
#[tokio::test]
async fn fal_is_reached_through_the_egress_proxy_tunnel_and_the_proxy_never_sees_the_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut stream, _) = proxy.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the tunnel request ended early");
            received.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        // Whatever comes next is TLS to fal; keep it, then close (the handshake fails).
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            received.extend_from_slice(&buf[..n]);
        }
        received
    });
    let gate = TestGate::builder()
        .queue_url("https://queue.fal.run")
        .env("HTTPS_PROXY", &format!("http://gate:proxy-pw@{proxy_addr}"))
        .spawn()
        .await;
    let response = gate
        .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
        .await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("upstream_unreachable") && !body.contains("proxy-pw"),
        "{body}"
    );
    let tunnel = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .expect("the gate never opened a tunnel through the proxy");
    let received = String::from_utf8_lossy(&tunnel.unwrap()).into_owned();
    assert!(
        received.starts_with("CONNECT queue.fal.run:443 HTTP/1.1\r\n"),
        "{received}"
    );
    // base64("gate:proxy-pw")
    assert!(
        received
            .to_ascii_lowercase()
            .contains("proxy-authorization: basic z2f0ztpwcm94es1wdw=="),
        "{received}"
    );
    assert!(
        !received.contains(FAL_KEY) && !received.contains("Bearer"),
        "{received}"
    );
}

/// A malformed `HTTPS_PROXY` is a configuration error naming the variable, never its value.
#[test]
fn a_malformed_egress_proxy_is_refused_without_echoing_it() {
    let vars: std::collections::HashMap<String, String> = [
        ("FALGATE_AUTH__HS256_SECRET", "0123456789abcdef0123456789abcdef"),
        ("HTTPS_PROXY", "socks5://user:secret-pw@proxy:1080"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let err = falgate::config::Config::from_toml("", &vars).unwrap_err().to_string();
    assert!(err.contains("HTTPS_PROXY") && !err.contains("secret-pw"), "{err}");
}

#[tokio::test]
async fn slow_status_is_504_and_garbage_status_is_502() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    gate.emulator.add_fault(falgate::emulator::Fault {
        op: Some(Op::Status),
        path_contains: None,
        action: FaultAction::Stall { ms: 5_000 },
        times: Some(1),
    });
    let response = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status"))
        .await;
    gate.assert_refused(response, 504, "upstream_timeout").await;
    gate.fault(Op::Status, FaultAction::Garbage);
    let response = gate
        .get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}/status"))
        .await;
    gate.assert_refused(response, 502, "upstream_bad_response").await;
}

#[tokio::test]
async fn a_submit_whose_outcome_is_unknown_is_never_answered_with_a_retryable_status() {
    let gate = TestGate::spawn().await;
    for action in [
        FaultAction::Stall { ms: 5_000 },
        FaultAction::Drop,
        FaultAction::Garbage,
    ] {
        gate.emulator.clear_faults();
        gate.fault(Op::Submit, action);
        let response = gate
            .post_as_alice(&format!("/api/fal/queue/{VPG}"), &json!({"input_concept": "x"}))
            .await;
        assert!(![429, 502, 503, 504].contains(&response.status().as_u16()));
        gate.assert_refused(response, 424, "submit_outcome_unknown").await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn garbage_result_is_502_and_a_broken_sync_run_is_424() {
    let gate = TestGate::spawn().await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    wait_completed(&gate, &id).await;
    gate.fault(Op::Result, FaultAction::Garbage);
    let response = gate.get_as_alice(&format!("/api/fal/queue/{VPG}/requests/{id}")).await;
    gate.assert_refused(response, 502, "upstream_bad_response").await;
    gate.fault(Op::Run, FaultAction::Drop);
    let response = gate
        .post_as_alice(&format!("/api/fal/run/{VPG}"), &json!({"input_concept": "x"}))
        .await;
    gate.assert_refused(response, 424, "submit_outcome_unknown").await;
}

/// A result that fits `upstream.buffer_budget_bytes` is read whole (a `content-length`); one
/// that does not is streamed through as it comes (no length), complete either way.
#[tokio::test]
async fn model_output_over_the_buffer_budget_is_streamed_instead_of_held() {
    let gate = TestGate::builder()
        .env("FALGATE_UPSTREAM__MAX_RESPONSE_BYTES", "16384")
        .env("FALGATE_UPSTREAM__BUFFER_BUDGET_BYTES", "65536")
        .spawn()
        .await;
    let id = gate.submit("alice", json!({"input_concept": "x"})).await;
    crate::support::wait_completed(&gate, &id).await;
    let path = format!("/api/fal/queue/{VPG}/requests/{id}");
    let result = |size: usize| {
        gate.emulator.add_fault(falgate::emulator::Fault {
            op: Some(Op::Result),
            path_contains: None,
            action: FaultAction::Status {
                status: 200,
                body: json!({ "prompt": "p".repeat(size) }),
                headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            },
            times: Some(1),
        });
        gate.get_as_alice(&path)
    };
    let small = result(10_000).await;
    assert_eq!(small.status(), 200);
    assert!(
        small.headers().contains_key("content-length"),
        "a small result is read whole"
    );
    let large = result(200_000).await;
    assert_eq!(large.status(), 200);
    assert!(
        !large.headers().contains_key("content-length"),
        "a result over the budget was held whole"
    );
    let body: serde_json::Value = large.json().await.unwrap();
    assert_eq!(body["prompt"].as_str().map(str::len), Some(200_000));
}
