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
//! the worker side is still `axum::serve`, over a [`Listener`] fed by the acceptor.
//!
//! The admin listener, the acceptor and background tasks (JWKS refresh) stay on the main
//! runtime. Each worker opens its own Redis connection (`redis::RedisStore::connection`).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

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

/// Serves `router` on `listener` with `workers` single-threaded runtimes until `shutdown`
/// resolves; each worker then finishes its in-flight requests before its thread ends.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    workers: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers.clamp(1, MAX_WORKERS) {
        // Built here, so a worker that cannot start fails startup instead of leaving a dead
        // queue that the acceptor would keep choosing (it has the fewest connections).
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        queues.push(Worker { tx, load: load.clone() });
        let incoming = Incoming { rx, load, local_addr };
        let router = router.clone();
        let stopped = stopped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("falgate-worker-{index}"))
            .spawn(move || {
                let served = run_worker(index, &runtime, incoming, router, stopped);
                // Blocking work left behind (a DNS lookup to fal) may not hold the exit long.
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
                served
            })?;
        threads.push(thread);
    }
    drop(stopped);
    tokio::select! {
        () = accept_loop(&listener, &queues) => {}
        () = shutdown => {}
    }
    // Stop accepting (the listener closes here) and let every worker drain.
    drop(listener);
    stop.send(true).ok();
    drop(queues);
    let joined = tokio::task::spawn_blocking(move || threads.into_iter().map(std::thread::JoinHandle::join).collect())
        .await
        .map_err(io::Error::other)?;
    let results: Vec<std::thread::Result<io::Result<()>>> = joined;
    for result in results {
        result.map_err(|_| io::Error::other("a worker thread panicked"))??;
    }
    Ok(())
}

/// A worker's queue of new connections and its count of open ones.
struct Worker {
    tx: mpsc::UnboundedSender<std::net::TcpStream>,
    load: Arc<AtomicUsize>,
}

fn run_worker(
    index: usize,
    runtime: &tokio::runtime::Runtime,
    incoming: Incoming,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    WORKER.with(|cell| cell.set(Some(index)));
    runtime.block_on(async move {
        // Connect info gives the limiter the peer address (client IP behind trusted proxies).
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        // `tap_io` changes nothing on the stream; axum implements `ConnectInfo<SocketAddr>` for
        // tapped listeners of any kind, but for a bare listener only for its own `TcpListener`.
        axum::serve(incoming.tap_io(|_| {}), service)
            .with_graceful_shutdown(async move {
                stopped.wait_for(|stop| *stop).await.ok();
            })
            .await
    })
}

/// Load given to a worker whose queue is closed, so it is never chosen again.
const GONE: usize = usize::MAX / 2;

/// Accepts until every worker is gone. A connection the peer reset before accept is skipped;
/// other errors (out of descriptors) are logged and retried after a pause, so a full process
/// does not spin.
async fn accept_loop(listener: &TcpListener, workers: &[Worker]) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small writes (event-stream chunks) go out at once.
        stream.set_nodelay(true).ok();
        // Out of this runtime's reactor: the worker registers it in its own, so the
        // connection's readiness never wakes this thread.
        let Ok(mut stream) = stream.into_std() else { continue };
        loop {
            let Some(worker) = workers.iter().min_by_key(|w| w.load.load(Ordering::Relaxed)) else {
                return;
            };
            if worker.load.load(Ordering::Relaxed) >= GONE {
                // Every worker has stopped: nothing can serve connections any more.
                return;
            }
            worker.load.fetch_add(1, Ordering::Relaxed);
            match worker.tx.send(stream) {
                Ok(()) => break,
                Err(mpsc::error::SendError(returned)) => {
                    // That worker's thread ended: never choose it again, try the next one.
                    worker.load.store(GONE, Ordering::Relaxed);
                    stream = returned;
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
    rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    load: Arc<AtomicUsize>,
    local_addr: SocketAddr,
}

impl Listener for Incoming {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(stream) = self.rx.recv().await else {
                // The acceptor stopped: no more connections; graceful shutdown ends the server.
                return std::future::pending().await;
            };
            let load = LoadGuard(self.load.clone());
            // Into this worker's reactor. A stream it refuses, or whose peer already left, is
            // closed (and counted out) here.
            let Ok(stream) = TcpStream::from_std(stream) else {
                continue;
            };
            let Ok(peer) = stream.peer_addr() else { continue };
            return (Counted { stream, _load: load }, peer);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// A worker's connection, counted in its load while open.
pub struct Counted {
    stream: TcpStream,
    _load: LoadGuard,
}

/// Counts a connection out of its worker's load when dropped.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

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
        let server = tokio::spawn(serve(listener, router, 3, async move {
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
}
