//! The listener's watchdog and HTTP/2 side seen through a real server on `127.0.0.1:0` (found by
//! mutation testing, TESTING.md round 2): a relayed stream is cut at its lifetime and at its
//! movement bound (each plus the grace) even while its client reads, HTTP/2 is served, and an
//! HTTP/2 stream over `http2_max_open_streams` is refused in its headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::body::Bounds;

/// A response that ticks every 50 ms forever (or `last` times), or (`quiet`) once and then
/// never again.
fn ticking(bounds: Bounds, quiet: bool) -> Response {
    ticks(bounds, quiet, u32::MAX)
}

fn ticks(bounds: Bounds, quiet: bool, last: u32) -> Response {
    let ticks = futures_util::stream::unfold(0u32, move |n| async move {
        if n == last {
            return None;
        }
        if n > 0 {
            let pause = if quiet {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(50)
            };
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from("tick\n")), n + 1))
    });
    let mut response = Body::from_stream(ticks).into_response();
    response.extensions_mut().insert(bounds);
    response
}

/// A server with `connections`, serving `/` (ok), `/lived` (ticks with a lifetime of 200 ms)
/// and `/quiet` (one tick, then silence, with a movement bound of 200 ms). Stopped when the
/// returned sender is dropped.
async fn server(connections: Connections) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let bound = Some(Duration::from_millis(200));
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/lived",
            get(move || async move {
                ticking(
                    Bounds {
                        lifetime: bound,
                        idle: None,
                    },
                    false,
                )
            }),
        )
        .route(
            "/big",
            get(|| async { crate::body::in_frames(Bytes::from(vec![b'x'; 200_000])) }),
        )
        .route(
            "/brief",
            get(|| async {
                let bounds = Bounds {
                    lifetime: Some(Duration::from_secs(20)),
                    idle: None,
                };
                ticks(bounds, false, 3)
            }),
        )
        .route(
            "/quiet",
            get(move || async move {
                ticking(
                    Bounds {
                        lifetime: None,
                        idle: bound,
                    },
                    true,
                )
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        workers: 1,
        connections,
        max_head_bytes: 40 * 1024,
        drain_timeout: Duration::from_secs(5),
    };
    tokio::spawn(serve(listener, router, settings, Arc::default(), async move {
        stopped.await.ok();
    }));
    (addr, stop)
}

/// Reads `path` over HTTP/1 until the server closes (bounded by 10 s); the ticks read and how
/// long it took.
async fn read_ticks(addr: SocketAddr, path: &str) -> (usize, Duration) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    ticks_on(&mut stream, path).await
}

/// [`read_ticks`] on a connection already open.
async fn ticks_on(stream: &mut tokio::net::TcpStream, path: &str) -> (usize, Duration) {
    let started = std::time::Instant::now();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{path}: the stream was never cut");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    (text.matches("tick").count(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_steadily_is_cut_at_its_lifetime_plus_the_grace() {
    let (addr, _stop) = server(Connections::default()).await;
    let (ticks, took) = read_ticks(addr, "/lived").await;
    assert!(
        took >= Duration::from_millis(200) + watchdog::GRACE,
        "cut after {took:?}"
    );
    assert!(ticks >= 10, "the client read the stream as it came: {ticks} ticks");
}

/// The connection's watchdog moves its timer earlier for a new answer whose bound comes sooner
/// than the one armed for the answer before (`/brief`'s 20 s lifetime): a stream gone quiet
/// wakes nothing else, so only that timer can cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_after_another_on_a_kept_alive_connection_is_cut_at_its_own_bound() {
    let (addr, _stop) = server(Connections::default()).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /brief HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        // The chunked body's last chunk.
        while !seen.ends_with(b"\r\n0\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after the first answer");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "{}", String::from_utf8_lossy(&seen));
    let (ticks, took) = ticks_on(&mut stream, "/quiet").await;
    assert!(
        took >= Duration::from_millis(200) + watchdog::GRACE,
        "cut after {took:?}"
    );
    assert_eq!(ticks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_moving_is_cut_at_its_movement_bound_plus_the_grace() {
    let (addr, _stop) = server(Connections::default()).await;
    let (ticks, took) = read_ticks(addr, "/quiet").await;
    assert!(
        took >= Duration::from_millis(200) + watchdog::GRACE,
        "cut after {took:?}"
    );
    assert_eq!(ticks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_served_and_a_stream_over_the_process_cap_is_refused_in_its_headers() {
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let (addr, _stop) = server(Connections::default()).await;
    let answer = h2.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(
        (answer.version(), answer.status().as_u16()),
        (http::Version::HTTP_2, 200)
    );
    // The watched body keeps the answer's size: hyper states it (HTTP/2 has no chunking).
    let length = answer.headers().get("content-length").map(|v| v.as_bytes().to_vec());
    assert_eq!(length.as_deref(), Some(&b"2"[..]));
    assert_eq!(answer.text().await.unwrap(), "ok");

    let (addr, _stop) = server(Connections {
        http2_max_open_streams: 0,
        ..Connections::default()
    })
    .await;
    let refused = h2.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let header = |name: &str| refused.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-falgate-error").as_deref(), Some("concurrency_limited"));
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(refused.bytes().await.unwrap().len(), 0);
    // HTTP/1 answers are not HTTP/2 streams: not capped.
    let http1 = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(http1.status().as_u16(), 200);
    assert_eq!(
        http1.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"2"[..])
    );
    // A whole answer handed over in frames (`body::in_frames`) keeps its length through the
    // watched body: `content-length`, not a chunked body.
    let big = reqwest::Client::new()
        .get(format!("http://{addr}/big"))
        .send()
        .await
        .unwrap();
    let length = big.headers().get("content-length").map(|v| v.as_bytes().to_vec());
    assert_eq!(length.as_deref(), Some(&b"200000"[..]), "{:?}", big.headers());
    assert_eq!(big.bytes().await.unwrap().len(), 200_000);
}

/// An HTTP/2 client whose streams take one byte: the answer ends on the listener's side, its
/// last byte waits in h2 for a window that never comes, and no stream is left to reset. The
/// response is still in progress (the keep-alive timer never starts), so the progress rule
/// closes the whole connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_left_in_http2_buffers_closes_its_connection_by_the_progress_rule() {
    let far = Duration::from_secs(600);
    let (addr, _stop) = server(Connections {
        header_read_timeout: far,
        keep_alive_timeout: far,
        write_timeout: Duration::from_millis(500),
        http2_keep_alive_interval: far,
        ..Connections::default()
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::get(format!("http://{addr}/")).body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer's head")
        .unwrap();
    assert_eq!(answer.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open with the answer's last byte unsent"
    );
    drop(answer);
}
