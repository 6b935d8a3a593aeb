//! Peers that accept a response and then take nothing of it: an HTTP/2 client that advertises a
//! zero stream window (and answers pings, so it looks alive), and an HTTP/1 client that reads a
//! large result a little at a time. Every deadline is enforced outside the response body (hyper
//! stops polling a body its client does not take): each test sets the deadline under test to
//! 1 s and every other timer far beyond `DEADLINE`, so a missing deadline fails the test.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use falgate::emulator::{Fault, FaultAction, Op};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{assert_refused, connect, raw_status, request_head, slow_fal, Gate, DEADLINE};
use crate::support::VPG;

/// Every connection timer far beyond `DEADLINE` unless a test sets it.
const FAR: &str = "600000";

/// An HTTP/2 (h2c) client whose streams advertise a zero window: the gate can send headers,
/// never data. Its connection task answers pings.
struct Stalled {
    send: h2::client::SendRequest<Bytes>,
    connection: JoinHandle<Result<(), h2::Error>>,
    local: SocketAddr,
}

impl Stalled {
    async fn connect(gate: &Gate) -> Self {
        let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        Self {
            send,
            connection: tokio::spawn(connection),
            local,
        }
    }

    /// Sends a GET for `path` (with `token`) and returns the answer's head and body.
    async fn get(&mut self, gate: &Gate, path: &str, token: Option<&str>) -> http::Response<h2::RecvStream> {
        let mut request = http::Request::get(format!("http://{}{path}", gate.addr));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.send(request.body(()).unwrap()).await
    }

    /// Sends `request` (no body) and returns the answer's head and body.
    async fn send(&mut self, request: http::Request<()>) -> http::Response<h2::RecvStream> {
        self.send = self.send.clone().ready().await.unwrap();
        let (response, _) = self.send.send_request(request, true).unwrap();
        tokio::time::timeout(DEADLINE, response)
            .await
            .expect("an answer's head")
            .unwrap()
    }
}

/// Waits until the gate resets `body`'s stream (h2 `CANCEL`), failing past `DEADLINE` or on any
/// other ending: data cannot arrive through a zero window, and a clean end is no reset.
async fn wait_reset(body: &mut h2::RecvStream, what: &str) {
    match tokio::time::timeout(DEADLINE, body.data()).await {
        Err(_) => panic!("{what}: the stream is still open after {DEADLINE:?}"),
        Ok(Some(Err(err))) => assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{what}: {err}"),
        Ok(other) => panic!("{what}: expected a reset, got {other:?}"),
    }
}

fn limits(caps: &str) -> String {
    format!(
        r#"
[limits]
default_tier = "default"
{caps}
[limits.tiers.default]
submit = {{ burst = 100, per_minute = 6000 }}
poll = {{ burst = 1000, per_minute = 60000 }}
"#
    )
}

/// Whether `sub` is refused a status stream of `job` now (429) or served (200, then dropped).
async fn stream_status(gate: &Gate, sub: &str, job: &str) -> u16 {
    gate.client
        .get(format!("{}/api/fal/queue/{VPG}/requests/{job}/status/stream", gate.url))
        .bearer_auth(gate.token(sub))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// After one `GET /healthz` answered into a zero window, the connection has no request left in
/// progress (the answer's stream is reset when its client takes nothing for `write_timeout`)
/// and is closed by the keep-alive timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_http2_client_is_closed_after_its_answer() {
    let gate = Gate::start(
        &format!(
            "[connections]\nheader_read_timeout_ms = {FAR}\nkeep_alive_timeout_ms = 1000\nwrite_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = {FAR}\n"
        ),
        slow_fal(),
    )
    .await;
    let mut client = Stalled::connect(&gate).await;
    let answer = client.get(&gate, "/healthz", None).await;
    assert_eq!(answer.status(), 200);
    gate.wait_released(client.local, "a zero-window client after /healthz")
        .await;
    let ended = tokio::time::timeout(DEADLINE, &mut client.connection).await;
    assert!(ended.is_ok(), "the client's side of the connection stayed open");
}

/// A client whose streams may take one byte: the answer's body is handed to h2 and ends on the
/// gate's side, its last byte waits in h2 for a window that never comes. The response is still
/// in progress (the connection never idles out), so the progress rule closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_left_in_http2_buffers_is_bounded_by_the_progress_rule() {
    let gate = Gate::start(
        &format!(
            "[connections]\nheader_read_timeout_ms = {FAR}\nkeep_alive_timeout_ms = {FAR}\nwrite_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = {FAR}\n"
        ),
        slow_fal(),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (mut send, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    send = send.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/healthz", gate.addr))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let answer = tokio::time::timeout(DEADLINE, response).await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    gate.wait_released(local, "an answer left in h2's buffers").await;
    assert!(tokio::time::timeout(DEADLINE, connection).await.is_ok());
    drop(answer);
}

/// Past `http2_max_open_streams` (all connections together) a new stream is refused at once
/// with 429 `concurrency_limited` and no body; once the held streams are reset, streams are
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_progress_are_capped_for_the_whole_process() {
    let gate = Gate::start(
        &format!(
            "[connections]\nhttp2_max_open_streams = 3\nheader_read_timeout_ms = {FAR}\nkeep_alive_timeout_ms = {FAR}\nwrite_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = {FAR}\n"
        ),
        slow_fal(),
    )
    .await;
    let mut first = Stalled::connect(&gate).await;
    let mut second = Stalled::connect(&gate).await;
    let mut held = Vec::new();
    for on_first in [true, true, false] {
        let client = if on_first { &mut first } else { &mut second };
        let answer = client.get(&gate, "/healthz", None).await;
        assert_eq!(answer.status(), 200);
        held.push(answer.into_body());
    }
    let refused = second.get(&gate, "/healthz", None).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-falgate-error"], "concurrency_limited");
    assert!(refused.body().is_end_stream(), "a refusal with a body");
    for body in &mut held {
        wait_reset(body, "a held stream").await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut third = Stalled::connect(&gate).await;
    while third.get(&gate, "/healthz", None).await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream places never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Twenty zero-window clients at `max_open = 20` do not keep the gate from others for good: a
/// new connection waits in the backlog and is served once they are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_clients_cannot_fill_the_connection_cap() {
    let gate = Gate::start(
        &format!(
            "[connections]\nmax_open = 20\nheader_read_timeout_ms = {FAR}\nkeep_alive_timeout_ms = 1000\nwrite_timeout_ms = 1000\nhttp2_keep_alive_interval_ms = {FAR}\n"
        ),
        slow_fal(),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = Stalled::connect(&gate).await;
        let answer = client.get(&gate, "/healthz", None).await;
        assert_eq!(answer.status(), 200);
        // Kept: a client that drops the answer resets its stream itself.
        clients.push((client, answer));
    }
    let (status, answer) = raw_status(gate.addr, &request_head("GET", "/healthz", None, "")).await;
    assert_eq!(status, 200, "{answer}");
    for (client, _) in &clients {
        gate.wait_released(client.local, "a zero-window client").await;
    }
}

/// Status streams answered into a zero window are reset at `max_stream_lifetime_ms` (plus a
/// grace), though hyper never polls their bodies again; the caller's stream slots come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_are_reset_at_their_lifetime() {
    let gate = Gate::start(
        &format!(
            "{}[upstream]\nmax_stream_lifetime_ms = 1000\nidle_timeout_ms = {FAR}\n[connections]\nwrite_timeout_ms = {FAR}\nkeep_alive_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n",
            limits("streams_per_caller = 2")
        ),
        slow_fal(),
    )
    .await;
    held_streams_are_reset(&gate, "at the stream lifetime").await;
}

/// The same streams with the lifetime far away: reset when nothing moved through them for
/// `upstream.idle_timeout_ms` (fal sends an event every 50 ms; the client takes none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_are_reset_at_the_upstream_idle_timeout() {
    let gate = Gate::start(
        &format!(
            "{}[upstream]\nmax_stream_lifetime_ms = {FAR}\nidle_timeout_ms = 1000\n[connections]\nwrite_timeout_ms = {FAR}\nkeep_alive_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n",
            limits("streams_per_caller = 2")
        ),
        slow_fal(),
    )
    .await;
    held_streams_are_reset(&gate, "at the upstream idle timeout").await;
}

/// The same streams with lifetime and idle far away: reset by the progress rule
/// (`write_timeout_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_are_reset_by_the_progress_rule() {
    let gate = Gate::start(
        &format!(
            "{}[upstream]\nmax_stream_lifetime_ms = {FAR}\nidle_timeout_ms = {FAR}\n[connections]\nwrite_timeout_ms = 1000\nkeep_alive_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n",
            limits("streams_per_caller = 2")
        ),
        slow_fal(),
    )
    .await;
    held_streams_are_reset(&gate, "by the progress rule").await;
}

/// Alice holds both her stream slots on one zero-window connection (a third stream is refused
/// 429), both streams are reset, and she is served again.
async fn held_streams_are_reset(gate: &Gate, what: &str) {
    let job = gate.submit("alice").await;
    let token = gate.token("alice");
    let path = format!("/api/fal/queue/{VPG}/requests/{job}/status/stream");
    let mut client = Stalled::connect(gate).await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let answer = client.get(gate, &path, Some(&token)).await;
        assert_eq!(answer.status(), 200, "{what}");
        bodies.push(answer.into_body());
    }
    assert_eq!(stream_status(gate, "alice", &job).await, 429, "{what}: slots not held");
    for body in &mut bodies {
        wait_reset(body, what).await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while stream_status(gate, "alice", &job).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: alice's stream slots were never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.submit("bob").await;
}

/// A result larger than `buffer_budget_bytes` fetched through the proxy route into a zero
/// window holds the caller's relay slot and the budget; the progress rule resets it, the slot
/// and the budget come back, and another caller's submit (which needs budget for fal's
/// answer) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_result_gives_back_its_slot_and_budget() {
    let gate = Gate::start(
        &format!(
            "{}[upstream]\nbuffer_budget_bytes = 1048576\n[connections]\nwrite_timeout_ms = 1000\nkeep_alive_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n",
            limits("relays_per_caller = 1")
        ),
        slow_fal(),
    )
    .await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "prompt": "v".repeat(2 * 1024 * 1024) }),
            headers: Vec::new(),
        },
        times: None,
    });
    let job = gate.submit("alice").await;
    let token = gate.token("alice");
    let mut client = Stalled::connect(&gate).await;
    let request = http::Request::get(format!("http://{}/api/fal/proxy", gate.addr))
        .header("authorization", format!("Bearer {token}"))
        .header(
            "x-fal-target-url",
            format!("https://queue.fal.run/{VPG}/requests/{job}"),
        )
        .body(())
        .unwrap();
    let answer = client.send(request).await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let result = || {
        gate.client
            .get(format!("{}/api/fal/queue/{VPG}/requests/{job}", gate.url))
            .bearer_auth(gate.token("alice"))
            .send()
    };
    assert_refused(result().await.unwrap(), 429, "concurrency_limited").await;
    wait_reset(&mut body, "a result into a zero window").await;
    // Budget back: fal's answer to bob's submit is read whole (it waits for budget otherwise).
    gate.submit("bob").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = result().await.unwrap();
        if response.status() == 200 {
            assert!(response.bytes().await.unwrap().len() > 2 * 1024 * 1024);
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's relay slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1 client that reads an 8 MB result about 100 KiB/s (a little at a time, so no write
/// is ever blocked for `write_timeout`) is below `min_send_bytes_per_second` (1 MiB/s here): the
/// connection is closed and the caller's relay slot released, long before the read would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_result_a_little_at_a_time_is_closed_by_the_minimum_rate() {
    let gate = Gate::start(
        &format!(
            "{}[connections]\nwrite_timeout_ms = 1000\nmin_send_bytes_per_second = 1048576\nsend_buffer_bytes = 16384\nkeep_alive_timeout_ms = {FAR}\n",
            limits("relays_per_caller = 1")
        ),
        slow_fal(),
    )
    .await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "prompt": "v".repeat(8 * 1024 * 1024) }),
            headers: Vec::new(),
        },
        times: None,
    });
    let job = gate.submit("alice").await;
    let path = format!("/api/fal/queue/{VPG}/requests/{job}");
    let mut slow = connect(gate.addr, Some(4096)).await;
    let local = slow.local_addr().unwrap();
    slow.write_all(request_head("GET", &path, Some(&gate.token("alice")), "").as_bytes())
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let mut read = 0usize;
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read += n,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    gate.wait_blocked_on(local, "a slow reader").await;
    gate.wait_released(local, "a client reading below the minimum rate")
        .await;
    let read = tokio::time::timeout(DEADLINE, reader).await.unwrap().unwrap();
    assert!(
        read < 8 * 1024 * 1024,
        "the slow client read the whole result ({read} bytes)"
    );
    let answer = gate
        .client
        .get(format!("{}{path}", gate.url))
        .bearer_auth(gate.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "alice's relay slot was not released");
    gate.submit("bob").await;
}

/// Not a check: prints what stalled peers cost the gate (SECURITY.md, "What a stalled peer can
/// hold"): HTTP/2 connections whose 64 streams each hold an answer nobody takes, and HTTP/1
/// connections whose answer nobody reads. Every deadline is set far away, so nothing is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand with --ignored --nocapture"]
async fn measure_stalled_memory() {
    let gate = Gate::start(
        &format!(
            "[connections]\nheader_read_timeout_ms = {FAR}\nkeep_alive_timeout_ms = {FAR}\nwrite_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n"
        ),
        slow_fal(),
    )
    .await;
    let mut held = Vec::new();
    let mut clients = Vec::new();
    // The first connections warm up the allocator; the figure is taken over the next 100.
    for (label, conns) in [("warm-up", 2u64), ("HTTP/2, 64 streams each", 100)] {
        let before = gate.memory();
        for _ in 0..conns {
            let mut client = Stalled::connect(&gate).await;
            for _ in 0..64 {
                held.push(client.get(&gate, "/healthz", None).await);
            }
            clients.push(client);
        }
        let after = gate.memory();
        eprintln!(
            "{label}: {conns} connections, {} kB each",
            after.rss_kb.saturating_sub(before.rss_kb) / conns
        );
    }
    let before = gate.memory();
    let mut unread = Vec::new();
    for _ in 0..200 {
        let mut stream = connect(gate.addr, Some(4096)).await;
        stream
            .write_all(request_head("GET", "/healthz", None, "").as_bytes())
            .await
            .unwrap();
        unread.push(stream);
    }
    gate.wait_read_all("unread answers").await;
    let after = gate.memory();
    eprintln!(
        "HTTP/1, an unread answer each: 200 connections, {} kB each",
        after.rss_kb.saturating_sub(before.rss_kb) / 200
    );
}

/// A client that takes what it is sent is never cut, on HTTP/2 as on HTTP/1, with the same
/// tight settings as above: an 8 MB result is read whole, and a status stream runs to the job's
/// end (its body waits for fal between events, which the progress rule does not count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_its_answers_is_served_in_full_on_both_versions() {
    let gate = Gate::start(
        "[connections]\nwrite_timeout_ms = 1000\nmin_send_bytes_per_second = 1048576\nkeep_alive_timeout_ms = 1000\n",
        falgate::emulator::EmulatorConfig {
            queue_ms: 1_500,
            progress_ms: 1_500,
            log_lines: 2,
            stream_interval_ms: 200,
        },
    )
    .await;
    gate.emulator.add_fault(Fault {
        op: Some(Op::Result),
        path_contains: None,
        action: FaultAction::Status {
            status: 200,
            body: json!({ "prompt": "v".repeat(8 * 1024 * 1024) }),
            headers: Vec::new(),
        },
        times: None,
    });
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    for (version, client) in [("HTTP/2", &h2), ("HTTP/1.1", &h1)] {
        let job = gate.submit("alice").await;
        let stream = client
            .get(format!("{}/api/fal/queue/{VPG}/requests/{job}/status/stream", gate.url))
            .bearer_auth(gate.token("alice"))
            .send();
        let events = tokio::time::timeout(DEADLINE, async { stream.await?.text().await })
            .await
            .expect("the stream ends with the job")
            .unwrap_or_else(|err| panic!("{version}: the stream was cut: {err}"));
        assert!(events.contains("COMPLETED"), "{version}: {events}");
        let result = client
            .get(format!("{}/api/fal/queue/{VPG}/requests/{job}", gate.url))
            .bearer_auth(gate.token("alice"))
            .send();
        let bytes = tokio::time::timeout(DEADLINE, async { result.await?.bytes().await })
            .await
            .expect("the result arrives")
            .unwrap_or_else(|err| panic!("{version}: the result was cut: {err}"));
        assert!(bytes.len() > 8 * 1024 * 1024, "{version}: {} bytes", bytes.len());
    }
}

/// A sync run answered into a zero window holds the caller's relay slot until the progress rule
/// resets it; then the caller's next sync run is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_sync_run_gives_back_its_relay_slot() {
    let gate = Gate::start(
        &format!(
            "{}[connections]\nwrite_timeout_ms = 1000\nkeep_alive_timeout_ms = {FAR}\nhttp2_keep_alive_interval_ms = {FAR}\n",
            limits("relays_per_caller = 1")
        ),
        falgate::emulator::EmulatorConfig {
            queue_ms: 0,
            progress_ms: 0,
            log_lines: 1,
            stream_interval_ms: 50,
        },
    )
    .await;
    let input = json!({"input_concept": "a lighthouse at dusk"}).to_string();
    let mut client = Stalled::connect(&gate).await;
    let request = http::Request::post(format!("http://{}/api/fal/run/{VPG}", gate.addr))
        .header("authorization", format!("Bearer {}", gate.token("alice")))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    client.send = client.send.clone().ready().await.unwrap();
    let (response, mut body_out) = client.send.send_request(request, false).unwrap();
    body_out.send_data(Bytes::from(input.clone()), true).unwrap();
    let answer = tokio::time::timeout(DEADLINE, response).await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let run = || {
        gate.client
            .post(format!("{}/api/fal/run/{VPG}", gate.url))
            .bearer_auth(gate.token("alice"))
            .header("content-type", "application/json")
            .body(input.clone())
            .send()
    };
    assert_refused(run().await.unwrap(), 429, "concurrency_limited").await;
    wait_reset(&mut body, "a sync run into a zero window").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = run().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's relay slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
