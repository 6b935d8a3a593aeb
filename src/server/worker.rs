//! A worker: serves the connections handed to it on its single-threaded runtime, with hyper's
//! HTTP/1 and HTTP/2 settings and the process-wide HTTP/2 stream cap, then drains them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::future::Either;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::acceptor::{Incoming, LoadGuard};
use super::conn::{Conn, InFlight, Protocol};
use super::{watchdog, Connections, Settings};
use crate::lifecycle::Lifecycle;

/// The connection builders both listeners use: hyper-util's auto builder, and the same one
/// pinned to each protocol. A connection's first bytes are peeked ([`Conn::protocol`]) and it is
/// served by the builder of the protocol they announce: hyper-util's own version check reads
/// them and hands them back to hyper in a first read of 24 bytes, after which hyper's 8 KiB read
/// buffer no longer fits its next read and doubles (16 KiB per connection, and per open event
/// stream, issue 23). The auto builder serves what the peek cannot decide (an HTTP/2 preface
/// still arriving, a client that closed).
pub(super) struct Builders {
    any: auto::Builder<watchdog::StreamExecutor>,
    http1: auto::Builder<watchdog::StreamExecutor>,
    http2: auto::Builder<watchdog::StreamExecutor>,
}

impl Builders {
    pub(super) fn new(settings: &Settings) -> Self {
        let any = builder(settings);
        Self {
            http1: any.clone().http1_only(),
            http2: any.clone().http2_only(),
            any,
        }
    }

    fn of(&self, protocol: Protocol) -> &auto::Builder<watchdog::StreamExecutor> {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
            Protocol::Undecided => &self.any,
        }
    }
}

/// The connection builder: hyper's HTTP/1 and HTTP/2 settings, and HTTP/2 streams spawned under
/// a watchdog (see [`watchdog`]).
pub(super) fn builder(settings: &Settings) -> auto::Builder<watchdog::StreamExecutor> {
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
pub(super) const HTTP2_SEND_BUFFER: usize = 16 * 1024;

/// What serving one connection needs besides the socket.
pub(super) struct Serving {
    pub(super) builders: Arc<Builders>,
    pub(super) router: Router,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) graceful: GracefulShutdown,
    /// Set when the drain begins: closes the connections whose first bytes have not arrived
    /// (hyper's graceful shutdown reaches only the connections it serves).
    pub(super) closing: watch::Sender<bool>,
    pub(super) connections: Connections,
    /// HTTP/2 streams with a response in progress, all connections together
    /// (`http2_max_open_streams`).
    pub(super) streams: Arc<Semaphore>,
}

impl Serving {
    /// Serves `stream` (holding `permit` under `max_open`) on a task of the current runtime.
    pub(super) fn spawn(
        &self,
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        load: Option<LoadGuard>,
        peer: SocketAddr,
    ) {
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
        // Watched from now (the drain counts and waits for it), served once its first bytes
        // tell which builder serves it.
        let watcher = self.graceful.watcher();
        let builders = self.builders.clone();
        let mut closing = self.closing.subscribe();
        let task = async move {
            let mut io = io;
            let protocol = tokio::select! {
                protocol = io.protocol() => protocol,
                // Closed unserved, as hyper closes an idle connection when the drain begins.
                _ = closing.wait_for(|closing| *closing) => return,
            };
            let served = match protocol {
                Ok(protocol) => {
                    let connection = builders.of(protocol).serve_connection(TokioIo::new(io), service);
                    watcher.watch(connection).await
                }
                Err(err) => Err(err.into()),
            };
            if let Err(err) = served {
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
    pub(super) async fn drain(self, timeout: Duration) {
        self.closing.send_replace(true);
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
pub(super) fn streams_exhausted() -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert("x-falgate-error", http::HeaderValue::from_static("concurrency_limited"));
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

/// Serves the connections handed to this worker until `stopped`, then drains them.
pub(super) async fn run_worker(
    mut incoming: Incoming,
    router: Router,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    streams: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let serving = Serving {
        builders: Arc::new(Builders::new(&settings)),
        router,
        lifecycle,
        graceful: GracefulShutdown::new(),
        closing: watch::channel(false).0,
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
