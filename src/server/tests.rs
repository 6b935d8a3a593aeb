use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use tokio::net::TcpListener;

use super::*;
use crate::lifecycle::Lifecycle;
use axum::routing::get;

fn test_settings() -> Settings {
    Settings {
        workers: 1,
        connections: Connections::default(),
        max_head_bytes: 40 * 1024,
        drain_timeout: Duration::from_secs(5),
    }
}

/// Every worker gets connections, each request runs on a worker thread, and shutdown lets
/// every thread end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_workers_and_shutdown_ends_them() {
    let router = Router::new().route(
        "/",
        get(|| async { format!("{}:{}", worker_index(), std::thread::current().name().unwrap_or("")) }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        workers: 3,
        ..test_settings()
    };
    let server = tokio::spawn(serve(listener, router, settings, Arc::default(), async move {
        stopped.await.ok();
    }));
    // Connections held open at once: least-loaded placement gives each worker one.
    let mut seen = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
        let body = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push(body);
        clients.push(client);
    }
    seen.sort();
    assert_eq!(seen, ["0:falgate-worker-0", "1:falgate-worker-1", "2:falgate-worker-2"]);
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("workers end after shutdown")
        .unwrap()
        .unwrap();
}

/// A server on `127.0.0.1:0` with `connections`, serving `/` (ok), `/slow` (answers after
/// the `release` notify), `/flood` (an endless body; `dropped` is set when hyper drops it)
/// and `/ticks` (ten chunks, 100 ms apart).
struct TestServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<io::Result<()>>,
    release: Arc<tokio::sync::Notify>,
    /// Notified when `/slow`'s handler is running.
    entered: Arc<tokio::sync::Notify>,
    lifecycle: Arc<Lifecycle>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn test_server(connections: Connections) -> TestServer {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (slow_release, slow_entered, flood_dropped) = (release.clone(), entered.clone(), dropped.clone());
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/slow",
            get(move || {
                let release = slow_release.clone();
                let entered = slow_entered.clone();
                async move {
                    let released = release.notified();
                    entered.notify_one();
                    released.await;
                    "finished"
                }
            }),
        )
        .route(
            "/flood",
            get(move || {
                let guard = SetOnDrop(flood_dropped.clone());
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures_util::stream::repeat_with(move || {
                    let _ = &guard;
                    Ok::<_, std::convert::Infallible>(chunk.clone())
                });
                async move { Body::from_stream(stream) }
            }),
        )
        .route(
            "/ticks",
            get(|| async {
                let ticks = futures_util::stream::unfold(0, |n| async move {
                    if n == 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from("tick\n")), n + 1))
                });
                Body::from_stream(ticks)
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        connections,
        ..test_settings()
    };
    let lifecycle = Arc::<Lifecycle>::default();
    let server = tokio::spawn(serve(listener, router, settings, lifecycle.clone(), async move {
        stopped.await.ok();
    }));
    TestServer {
        lifecycle,
        addr,
        stop: Some(stop),
        server,
        release,
        entered,
        dropped,
    }
}

fn quick(millis: u64) -> Connections {
    Connections {
        header_read_timeout: Duration::from_millis(millis),
        keep_alive_timeout: Duration::from_millis(millis),
        write_timeout: Duration::from_millis(millis),
        ..Connections::default()
    }
}

/// Reads until the server closes the connection (EOF or reset), with a deadline far above
/// any timeout under test; returns what was read.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
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
    assert!(closed.is_ok(), "the server kept the connection open");
    seen
}

async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let server = test_server(quick(300)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_off_at_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = test_server(quick(400)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One header line every 100 ms: each byte is progress, yet the head never completes.
    let trickle = tokio::spawn(async move {
        for n in 0..100 {
            if writer.write_all(format!("x-{n}: y\r\n").as_bytes()).await.is_err() {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        100
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickling client held the connection");
    assert!(
        trickle.await.unwrap() < 100,
        "the server closed before the trickle ended"
    );
}

/// The idle limit between kept-alive requests is its own: longer than the head limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_idles_up_to_the_keep_alive_timeout_then_closes() {
    let server = test_server(Connections {
        header_read_timeout: Duration::from_millis(200),
        keep_alive_timeout: Duration::from_millis(1500),
        ..Connections::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(get_on(&mut stream, "/").await.starts_with("HTTP/1.1 200"));
    // Idle for longer than the head limit: a connection opened after this one went idle is
    // closed by the head limit, and this one is still open for the next request.
    let mut later = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut later).await.is_empty());
    assert!(get_on(&mut stream, "/").await.starts_with("HTTP/1.1 200"));
    assert!(read_until_closed(&mut stream).await.is_empty());
}

/// A response still being written is a request in flight: no head or idle limit cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_outlives_the_idle_and_head_limits() {
    let server = test_server(quick(250)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let first = get_on(&mut stream, "/ticks").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let rest = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    let ticks = format!("{first}{rest}").matches("tick").count();
    assert_eq!(ticks, 10, "the stream was cut: {first}{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = test_server(quick(300)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /flood HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // Never read: the socket buffers fill, the server's writes block, the timer ends it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.dropped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blocked stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
}

/// At `max_open` a new connection waits (it is not refused) and is served once one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_for_a_free_place() {
    let server = test_server(Connections {
        max_open: 2,
        ..Connections::default()
    })
    .await;
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(get_on(&mut first, "/").await.starts_with("HTTP/1.1 200"));
    assert!(get_on(&mut second, "/").await.starts_with("HTTP/1.1 200"));
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (asked, was_asked) = tokio::sync::oneshot::channel();
    let waiting = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        third.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        asked.send(()).ok();
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut third, &mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    was_asked.await.unwrap();
    // A round trip on a held connection: without the cap the third, which asked first,
    // would have been answered by then.
    assert!(get_on(&mut second, "/").await.starts_with("HTTP/1.1 200"));
    assert!(!waiting.is_finished(), "a third connection was served over the cap");
    drop(first);
    drop(second);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Shutdown closes the listener but lets a call in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_call_in_flight_finish_and_refuses_new_connections() {
    let mut server = test_server(Connections::default()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let slow = tokio::spawn(async move { get_on(&mut stream, "/slow").await });
    // The call is in flight once the handler runs.
    tokio::time::timeout(Duration::from_secs(10), server.entered.notified())
        .await
        .expect("the handler runs");
    // As `app::serve` does: the drain begins (answers say `Connection: close`), then the
    // listener closes.
    server.lifecycle.begin_drain();
    server.stop.take().unwrap().send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the listener stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.release.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.contains("finished"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), server.server)
        .await
        .expect("the server ends once drained")
        .unwrap()
        .unwrap();
}

/// The admin listener serves its router with the public listener's connection code until its
/// shutdown, then drains and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_until_its_shutdown() {
    let router = Router::new().route("/metrics", get(|| async { "metrics" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(serve_admin(
        listener,
        router,
        test_settings(),
        Arc::default(),
        async move {
            stopped.await.ok();
        },
    ));
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "metrics");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), admin)
        .await
        .expect("the admin listener ends after its shutdown")
        .unwrap()
        .unwrap();
}

/// hyper's read buffer is at least its own floor of 8 KiB, however small the head limit:
/// a 1 KiB `max_head_bytes` still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_limit_under_8_kib_still_serves() {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Settings {
        max_head_bytes: 1024,
        ..test_settings()
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, settings, Arc::default(), async move {
        stopped.await.ok();
    }));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = get_on(&mut stream, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A worker's serving side on the test's own thread (so a thread-local subscriber sees its logs).
fn serving(settings: &Settings) -> worker::Serving {
    worker::Serving {
        builders: Arc::new(worker::Builders::new(settings)),
        router: Router::new().route("/", get(|| async { "ok" })),
        lifecycle: Arc::default(),
        graceful: hyper_util::server::graceful::GracefulShutdown::new(),
        closing: tokio::sync::watch::channel(false).0,
        connections: settings.connections,
        streams: Arc::new(tokio::sync::Semaphore::new(8)),
    }
}

/// A client connection handed to `serving` as the acceptor hands one to a worker.
async fn connect_to(serving: &worker::Serving) -> tokio::net::TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
    serving.spawn(stream, permit, None, peer);
    client
}

/// The drain names how many connections it waits for, and says nothing when none is open.
#[tokio::test]
async fn the_drain_names_the_connections_it_waits_for_and_is_silent_without_any() {
    let (captured, _log) = crate::telemetry::captured::Captured::on_this_thread();
    let settings = test_settings();
    serving(&settings).drain(Duration::from_secs(5)).await;
    assert!(!captured.text().contains("draining"), "{}", captured.text());

    let serving = serving(&settings);
    let mut client = connect_to(&serving).await;
    // One answer: the connection is open and kept alive when the drain starts.
    assert!(get_on(&mut client, "/").await.starts_with("HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(10), serving.drain(Duration::from_secs(5)))
        .await
        .expect("an idle connection drains at once");
    let text = captured.text();
    assert_eq!(text.matches("draining client connections").count(), 1, "{text}");
    assert!(text.contains("open=1"), "{text}");
}

/// A connection whose client has sent nothing yet does not hold the drain until its header read
/// timeout: it is closed when the drain begins, as hyper closes an idle kept-alive one (a
/// balancer's pre-opened connections would otherwise keep a stopping process that long). Its
/// protocol is peeked before hyper serves it, so hyper's graceful shutdown cannot reach it.
#[tokio::test(start_paused = true)]
async fn a_connection_that_sent_nothing_is_closed_when_the_drain_begins() {
    use tokio::io::AsyncReadExt;
    let settings = test_settings();
    let serving = serving(&settings);
    let mut client = connect_to(&serving).await;
    // The connection's task runs until it waits for the client's first bytes.
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    serving.drain(Duration::from_secs(60)).await;
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the drain waited for a silent connection (header read timeout {:?})",
        settings.connections.header_read_timeout
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
}

/// What HTTP/2 buffers per stream past the peer's window is 16 KiB, not hyper's 400 KiB default
/// (SECURITY.md, "What a stalled peer can hold"). hyper has no getter, so the builder's own
/// description is read; what the bound holds in memory is measured by
/// `tests/it/attack/stalled.rs` (`measure_stalled_memory`), which no unit test can do exactly
/// (the kernel's socket buffers come first).
#[test]
fn http2_buffers_sixteen_kib_per_stream_past_the_peers_window() {
    let described = format!("{:?}", worker::builder(&test_settings()));
    assert!(described.contains("max_send_buffer_size: 16384,"), "{described}");
}

/// A worker's load (what the acceptor picks the least loaded worker by) counts its open
/// connections: one more for each connection handed to it, one less when that one closes.
#[tokio::test]
async fn a_workers_load_counts_its_open_connections_until_they_close() {
    use std::sync::atomic::AtomicUsize;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let load = Arc::new(AtomicUsize::new(0));
    let workers = [acceptor::Worker { tx, load: load.clone() }];
    let incoming = acceptor::Incoming { rx, load: load.clone() };
    let permits = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move { acceptor::accept_loop(&listener, &workers, &permits, 0).await });
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let router = Router::new().route("/", get(|| async { "ok" }));
    tokio::spawn(worker::run_worker(
        incoming,
        router,
        test_settings(),
        Arc::default(),
        Arc::new(tokio::sync::Semaphore::new(8)),
        stopped,
    ));
    let settled = |want: usize| {
        let load = load.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while load.load(Ordering::Relaxed) != want {
                assert!(tokio::time::Instant::now() < deadline, "the load never became {want}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get_on(&mut first, "/").await.starts_with("HTTP/1.1 200"));
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(get_on(&mut second, "/").await.starts_with("HTTP/1.1 200"));
    settled(2).await;
    drop(first);
    settled(1).await;
    drop(second);
    settled(0).await;
}

/// `every` runs its task at once, then once per period, on the current runtime.
#[tokio::test(start_paused = true)]
async fn every_runs_its_task_at_once_then_each_period() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn count() {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }
    let task = tokio::spawn(super::every(Duration::from_millis(250), count));
    tokio::task::yield_now().await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "at once");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 5, "at 0, 250, 500, 750 and 1000 ms");
    task.abort();
}

/// The upkeep the binary sets (its allocator's collection) runs on every worker thread, each on
/// its own runtime: what a worker freed is handed back by that worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_upkeep_runs_on_every_worker_thread() {
    static SEEN: [std::sync::atomic::AtomicUsize; 3] = [const { std::sync::atomic::AtomicUsize::new(0) }; 3];
    fn note_worker() {
        if let Some(index) = current_worker() {
            SEEN[index].fetch_add(1, Ordering::SeqCst);
        }
    }
    super::set_worker_upkeep(note_worker);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        workers: 3,
        ..test_settings()
    };
    let server = tokio::spawn(serve(listener, Router::new(), settings, Arc::default(), async move {
        stopped.await.ok();
    }));
    // Its first run is at the worker's start; bounded, not timed.
    let all_ran = tokio::time::timeout(Duration::from_secs(20), async {
        while SEEN.iter().any(|runs| runs.load(Ordering::SeqCst) == 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(all_ran.is_ok(), "runs per worker: {SEEN:?}");
}
