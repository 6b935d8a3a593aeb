//! The public listener, served thread per core.
//!
//! `workers` OS threads each run a single-threaded Tokio runtime that owns its connections from
//! accept to close, and its own pool of connections to fal ([`worker_index`] picks it in
//! `upstream`). A request therefore never leaves the thread that read it: no work-stealing
//! hand-off and no cross-thread wake-up between the caller's connection and fal's, which cost a
//! quarter of the CPU per request under the multi-threaded runtime (BENCHMARKS.md, "Where the
//! time goes"). This is nginx's worker model.
//!
//! One acceptor on the main runtime takes new connections and gives each to the worker with the
//! fewest open ones (a per-connection hand-off; requests on a kept-alive connection pay nothing).
//! Chosen over `SO_REUSEPORT` sockets per worker, whose hash spreads a few long-lived load
//! balancer connections unevenly and which let a stale process on the same port silently take
//! half the traffic. Written by hand because axum and hyper serve one listener on one runtime;
//! each worker serves its connections with hyper-util's auto (HTTP/1 and HTTP/2) builder.
//!
//! The admin listener, the acceptor and background tasks (JWKS refresh) stay on the main
//! runtime. Each worker opens its own Redis connection (`redis::RedisStore::connection`).
//!
//! What a connection may hold is bounded here (`[connections]`), since no layer above the
//! connection can see it:
//! - the acceptor takes a permit of `max_open` before each accept, so at the cap new
//!   connections wait in the kernel's backlog and the loop never spins;
//! - [`Conn`], the connection's I/O, enforces the time limits hyper has no knob for: a new
//!   connection must start a request within `header_read_timeout`, a request head must be
//!   complete within `header_read_timeout` of its first byte, a connection with no request in
//!   flight is closed after `keep_alive_timeout`, and a write blocked for `write_timeout` (a
//!   client that stopped reading, event streams included) ends the connection. hyper's own
//!   `header_read_timeout` restarts between kept-alive requests, so one knob would tie the idle
//!   limit to the header limit; requests in flight are counted by a guard in each response body;
//! - every response is watched outside its body (`watchdog`): stream lifetime, movement and
//!   the client's progress (`min_send_bytes_per_second` per `write_timeout`), since hyper stops
//!   polling a body whose client takes nothing (an HTTP/2 window of zero) and timers inside it
//!   stop with it; a response counts as in flight until its last chunk left hyper;
//! - hyper bounds the buffered request head (`max_buf_size`, also its HTTP/1 write queue) and
//!   HTTP/2 streams, header lists, send buffers and pings; HTTP/2 streams in progress are capped
//!   for the process (`http2_max_open_streams`).
//!
//! The admin listener ([`serve_admin`]) runs the same connection code on the main runtime, with
//! its own cap (`admin_max_open`).
//!
//! Drain: when `shutdown` resolves the listener closes, every connection is told to finish
//! (HTTP/1 `Connection: close` after its current response, HTTP/2 GOAWAY), and connections still
//! open after `drain_timeout` are cut. `app::serve` turns `/readyz` to 503 before that.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::lifecycle::Lifecycle;

mod settings;
mod watchdog;

pub use settings::{Connections, Settings};

/// Most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 256;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running this code; 0 on any other thread (the main runtime,
/// tests), which then shares worker 0's pools.
pub fn worker_index() -> usize {
    current_worker().unwrap_or(0)
}

/// The index of the worker thread running this code, if it is one.
pub fn current_worker() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Serves `router` on `listener` with `settings.workers` single-threaded runtimes until
/// `shutdown` resolves; then the listener closes and each worker drains its connections (up
/// to `drain_timeout`) before its thread ends.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let workers = settings.workers.clamp(1, MAX_WORKERS);
    let streams = Arc::new(Semaphore::new(
        settings.connections.http2_max_open_streams.min(Semaphore::MAX_PERMITS),
    ));
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        // Built here, so a worker that cannot start fails startup instead of leaving a dead
        // queue that the acceptor would keep choosing (it has the fewest connections).
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        queues.push(Worker { tx, load: load.clone() });
        let incoming = Incoming { rx, load };
        let router = router.clone();
        let stopped = stopped.clone();
        let lifecycle = lifecycle.clone();
        let streams = streams.clone();
        let thread = std::thread::Builder::new()
            .name(format!("falgate-worker-{index}"))
            .spawn(move || {
                WORKER.with(|cell| cell.set(Some(index)));
                runtime.block_on(run_worker(incoming, router, settings, lifecycle, streams, stopped));
                // Connections still open past the drain timeout end here, and blocking work
                // left behind (a DNS lookup to fal) may not hold the exit long.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        threads.push(thread);
    }
    drop(stopped);
    let permits = Arc::new(Semaphore::new(
        settings.connections.max_open.min(Semaphore::MAX_PERMITS),
    ));
    tokio::select! {
        () = accept_loop(&listener, &queues, &permits, settings.connections.send_buffer_bytes) => {}
        () = shutdown => {}
    }
    // Stop accepting (the listener closes here) and let every worker drain.
    drop(listener);
    stop.send(true).ok();
    drop(queues);
    let joined: Vec<std::thread::Result<()>> =
        tokio::task::spawn_blocking(move || threads.into_iter().map(std::thread::JoinHandle::join).collect())
            .await
            .map_err(io::Error::other)?;
    if joined.iter().any(Result::is_err) {
        return Err(io::Error::other("a worker thread panicked"));
    }
    Ok(())
}

/// A worker's queue of new connections and its count of open ones.
struct Worker {
    tx: mpsc::UnboundedSender<Accepted>,
    load: Arc<AtomicUsize>,
}

/// A connection on its way to a worker, holding its place under `max_open`.
struct Accepted {
    stream: std::net::TcpStream,
    permit: OwnedSemaphorePermit,
}

/// The connection builder both listeners use: hyper's HTTP/1 and HTTP/2 settings, and HTTP/2
/// streams spawned under a watchdog (see [`watchdog`]).
fn builder(settings: &Settings) -> auto::Builder<watchdog::StreamExecutor> {
    let connections = &settings.connections;
    let mut builder = auto::Builder::new(watchdog::StreamExecutor {
        progress: watchdog::Progress::of(connections),
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        // Replaced by `Conn`'s own head and idle timers (see the module docs).
        .header_read_timeout(None)
        // Also bounds hyper's write queue (plus one frame of at most 64 KiB).
        .max_buf_size(settings.max_head_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(connections.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_head_bytes).unwrap_or(u32::MAX))
        // What h2 buffers per stream beyond the peer's window: 16 KiB, not hyper's 400 KiB
        // default (SECURITY.md, "What a stalled peer can hold").
        .max_send_buf_size(HTTP2_SEND_BUFFER)
        // hyper's defaults, stated: streams a peer may open and reset before they are
        // accepted (rapid reset), and streams reset for its errors, per connection.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(connections.http2_keep_alive_interval)
        .keep_alive_timeout(connections.http2_keep_alive_interval);
    builder
}

/// Bytes h2 may buffer per stream beyond what the peer's window lets out (plus the one chunk
/// hyper hands it at a time).
const HTTP2_SEND_BUFFER: usize = 16 * 1024;

/// What serving one connection needs besides the socket.
struct Serving {
    builder: auto::Builder<watchdog::StreamExecutor>,
    router: Router,
    lifecycle: Arc<Lifecycle>,
    graceful: GracefulShutdown,
    connections: Connections,
    /// HTTP/2 streams with a response in progress, all connections together
    /// (`http2_max_open_streams`).
    streams: Arc<Semaphore>,
}

impl Serving {
    /// Serves `stream` (holding `permit` under `max_open`) on a task of the current runtime.
    fn spawn(&self, stream: TcpStream, permit: OwnedSemaphorePermit, load: Option<LoadGuard>, peer: SocketAddr) {
        let io = Conn::new(stream, permit, load, self.connections);
        let requests = io.requests.clone();
        let router = self.router.clone();
        let lifecycle = self.lifecycle.clone();
        let streams = self.streams.clone();
        let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            // An HTTP/2 stream takes one of the process's stream places for as long as its
            // response is in progress; over the cap it is refused at once, without a body (a
            // body the peer does not take would itself be held).
            let place = match request.version() {
                http::Version::HTTP_2 => match streams.clone().try_acquire_owned() {
                    Ok(place) => Some(place),
                    Err(_) => return Either::Left(std::future::ready(Ok(streams_exhausted()))),
                },
                _ => None,
            };
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::begin(&requests);
            let response = router.clone().oneshot(request);
            let draining = lifecycle.clone();
            let kill_requests = requests.clone();
            Either::Right(async move {
                // Read here, not in the closure: an HTTP/2 stream runs this future on its own
                // task (and watch), an HTTP/1 connection on the connection's.
                let watch = watchdog::current();
                let mut response = response.await?;
                if draining.is_draining() {
                    // HTTP/1: the balancer drops this connection after the answer instead of
                    // sending the next call on it as the listener closes (hyper leaves the
                    // header out of HTTP/2, where graceful shutdown sends GOAWAY).
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                let bounds = response
                    .extensions()
                    .get::<crate::body::Bounds>()
                    .copied()
                    .unwrap_or_default();
                // The guards live as long as the response: a stream counts until its last byte
                // left (or the client went away, or the watchdog cut it).
                let guard = (in_flight, place);
                let kill: watchdog::Kill = Arc::new(move || kill_requests.kill());
                Ok::<_, std::convert::Infallible>(response.map(|body| match &watch {
                    Some(watch) => watch.wrap(body, bounds, guard, kill),
                    None => crate::body::held(body, guard),
                }))
            })
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service).into_owned();
        let connection = self.graceful.watch(connection);
        let task = async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
        };
        // HTTP/1 answers run on the connection's task: its watchdog closes the connection when
        // one is cut (HTTP/2 streams have their own, see `watchdog::StreamExecutor`).
        let progress = watchdog::Progress::of(&self.connections);
        tokio::spawn(watchdog::Watchdog::new(task, watchdog::Watch::new(progress)));
    }

    /// Lets the connections finish (HTTP/1 after their answer, HTTP/2 with GOAWAY) for up to
    /// `timeout`; the rest are cut when their runtime ends.
    async fn drain(self, timeout: Duration) {
        let open = self.graceful.count();
        if open > 0 {
            tracing::info!(open, "draining client connections");
        }
        if tokio::time::timeout(timeout, self.graceful.shutdown()).await.is_err() {
            tracing::warn!(
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "drain timeout reached: closing the connections still open"
            );
        }
    }
}

/// The answer to an HTTP/2 stream over `http2_max_open_streams`: 429 `concurrency_limited` in
/// the header only, so the stream ends with its headers and holds nothing.
fn streams_exhausted() -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert("x-falgate-error", http::HeaderValue::from_static("concurrency_limited"));
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

/// Serves the connections handed to this worker until `stopped`, then drains them.
async fn run_worker(
    mut incoming: Incoming,
    router: Router,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    streams: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let serving = Serving {
        builder: builder(&settings),
        router,
        lifecycle,
        graceful: GracefulShutdown::new(),
        connections: settings.connections,
        streams,
    };
    loop {
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            _ = stopped.wait_for(|stop| *stop) => None,
        };
        let Some((stream, permit, peer)) = accepted else { break };
        serving.spawn(stream, permit, Some(LoadGuard(incoming.load.clone())), peer);
    }
    serving.drain(settings.drain_timeout).await;
}

/// Serves the admin listener (`/metrics`) on the calling runtime until `shutdown` resolves, with
/// the public listener's timers and watchdog and at most `connections.admin_max_open`
/// connections (at the cap new ones wait in the backlog); then drains like a worker.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let serving = Serving {
        builder: builder(&settings),
        router,
        lifecycle,
        graceful: GracefulShutdown::new(),
        connections: settings.connections,
        streams: Arc::new(Semaphore::new(
            (settings.connections.admin_max_open)
                .saturating_mul(settings.connections.http2_max_concurrent_streams as usize)
                .min(Semaphore::MAX_PERMITS),
        )),
    };
    let permits = Arc::new(Semaphore::new(
        settings.connections.admin_max_open.min(Semaphore::MAX_PERMITS),
    ));
    let accept = async {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            stream.set_nodelay(true).ok();
            serving.spawn(stream, permit, None, peer);
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    drop(listener);
    serving.drain(settings.drain_timeout).await;
    Ok(())
}

/// Load given to a worker whose queue is closed, so it is never chosen again.
const GONE: usize = usize::MAX / 2;

/// Accepts until every worker is gone, each accept holding one of `permits` (`max_open`): at
/// the cap the loop waits for a connection to close. A connection the peer reset before accept
/// is skipped; other errors (out of descriptors) are logged and retried after a pause, so a full
/// process does not spin.
async fn accept_loop(listener: &TcpListener, workers: &[Worker], permits: &Arc<Semaphore>, send_buffer: usize) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small writes (event-stream chunks) go out at once.
        stream.set_nodelay(true).ok();
        if send_buffer > 0 {
            // A bounded send buffer, so a client that stops reading blocks our writes (and meets
            // the write timeout) after a few hundred KiB, not after the kernel's megabytes.
            socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer).ok();
        }
        // Out of this runtime's reactor: the worker registers it in its own, so the
        // connection's readiness never wakes this thread.
        let Ok(stream) = stream.into_std() else { continue };
        let mut accepted = Accepted { stream, permit };
        loop {
            let Some(worker) = workers.iter().min_by_key(|w| w.load.load(Ordering::Relaxed)) else {
                return;
            };
            if worker.load.load(Ordering::Relaxed) >= GONE {
                // Every worker has stopped: nothing can serve connections any more.
                return;
            }
            worker.load.fetch_add(1, Ordering::Relaxed);
            match worker.tx.send(accepted) {
                Ok(()) => break,
                Err(mpsc::error::SendError(returned)) => {
                    // That worker's thread ended: never choose it again, try the next one.
                    worker.load.store(GONE, Ordering::Relaxed);
                    accepted = returned;
                }
            }
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The worker side: connections handed over by the acceptor.
struct Incoming {
    rx: mpsc::UnboundedReceiver<Accepted>,
    load: Arc<AtomicUsize>,
}

impl Incoming {
    /// The next connection, registered in this worker's reactor; None once the acceptor stopped.
    async fn next(&mut self) -> Option<(TcpStream, OwnedSemaphorePermit, SocketAddr)> {
        loop {
            let Accepted { stream, permit } = self.rx.recv().await?;
            // A stream the reactor refuses, or whose peer already left, is closed (and counted
            // out of the load) here.
            let Ok(stream) = TcpStream::from_std(stream) else {
                self.load.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            let Ok(peer) = stream.peer_addr() else {
                self.load.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            return Some((stream, permit, peer));
        }
    }
}

/// Counts a connection out of its worker's load when dropped.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests in flight on one connection, and the connection's reader to wake when the count
/// drops to zero (its idle timer starts then).
#[derive(Default)]
struct Requests {
    in_flight: AtomicUsize,
    reader: AtomicWaker,
    /// Set by the watchdog to close the connection (see [`watchdog::Kill`]).
    killed: std::sync::atomic::AtomicBool,
}

impl Requests {
    /// Ends the connection at its next read or write (the reader is woken for it).
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took too little of a response (closed by the watchdog)",
    )
}

/// One request in flight, counted until its response body is dropped.
struct InFlight(Arc<Requests>);

impl InFlight {
    fn begin(requests: &Arc<Requests>) -> Self {
        requests.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// What the read side of a connection is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadPhase {
    /// Accepted, nothing read yet.
    Fresh,
    /// A request head has started arriving (at this instant).
    Head(Instant),
    /// No request in flight since this instant.
    Idle(Instant),
    /// A request is in flight: no read deadline here (the body has its own timeout, and a
    /// stream's client sends nothing while it listens).
    Busy,
}

/// A client connection: the socket, its place under `max_open` and in its worker's load, and
/// the head, idle and write timers (see the module docs).
pub struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// On the public listener: its place in its worker's load, and in `falgate_open_connections`.
    _load: Option<(LoadGuard, crate::telemetry::metrics::ConnectionGuard)>,
    requests: Arc<Requests>,
    limits: Connections,
    accepted: Instant,
    phase: ReadPhase,
    /// HTTP/2 (seen from the preface): frames such as pings arrive between requests, so bytes
    /// read while idle do not start a request head.
    http2: bool,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, load: Option<LoadGuard>, limits: Connections) -> Self {
        Self {
            stream,
            _permit: permit,
            _load: load.map(|load| (load, crate::telemetry::metrics::ConnectionGuard::open())),
            requests: Arc::default(),
            limits,
            accepted: Instant::now(),
            phase: ReadPhase::Fresh,
            http2: false,
            read_timer: None,
            write_timer: None,
        }
    }

    /// Moves the read phase on from what the request count says now.
    fn update_phase(&mut self) {
        let busy = self.requests.in_flight.load(Ordering::Acquire) > 0;
        self.phase = match (self.phase, busy) {
            (_, true) => ReadPhase::Busy,
            (ReadPhase::Busy, false) => ReadPhase::Idle(Instant::now()),
            (phase, false) => phase,
        };
    }

    /// When the read side gives up, in the current phase.
    fn read_deadline(&self) -> Option<Instant> {
        let limits = &self.limits;
        match self.phase {
            ReadPhase::Fresh => Some(self.accepted + limits.header_read_timeout),
            ReadPhase::Head(started) => Some(started + limits.header_read_timeout),
            ReadPhase::Idle(since) => Some(since + limits.keep_alive_timeout),
            ReadPhase::Busy => None,
        }
    }

    /// Bytes arrived: a head starts if none was in flight (HTTP/1 only).
    fn on_bytes(&mut self, bytes: &[u8]) {
        if matches!(self.phase, ReadPhase::Fresh) && bytes.starts_with(b"PRI * HTTP/2") {
            self.http2 = true;
        }
        if self.http2 {
            if self.phase == ReadPhase::Fresh {
                self.phase = ReadPhase::Idle(Instant::now());
            }
            return;
        }
        if matches!(self.phase, ReadPhase::Fresh | ReadPhase::Idle(_)) {
            self.phase = ReadPhase::Head(Instant::now());
        }
    }

    /// Polls the write timer after a write that could not proceed.
    fn poll_write_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limits.write_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (write timeout)",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The outcome of a write: progress resets the write timer; a blocked write runs it.
    fn on_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.requests.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        match polled {
            Poll::Pending => match self.poll_write_timer(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.requests.reader.register(cx.waker());
        if this.requests.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        this.update_phase();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_bytes(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some(deadline) = this.read_deadline() else {
                    this.read_timer = None;
                    return Poll::Pending;
                };
                let timer = match &mut this.read_timer {
                    Some((at, timer)) if *at == deadline => timer,
                    slot => &mut slot.insert((deadline, Box::pin(tokio::time::sleep_until(deadline)))).1,
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match this.phase {
                            ReadPhase::Idle(_) => "idle connection (keep-alive timeout)",
                            _ => "the request head did not arrive in time",
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
