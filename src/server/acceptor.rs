//! The acceptor: one loop on the main runtime takes each connection (holding a place under
//! `max_open`) and hands it to the worker with the fewest open ones; the worker side registers
//! it in its own reactor and reads the peer address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A worker's queue of new connections and its count of open ones.
pub(super) struct Worker {
    pub(super) tx: mpsc::UnboundedSender<Accepted>,
    pub(super) load: Arc<AtomicUsize>,
}

/// A connection on its way to a worker, holding its place under `max_open`.
pub(super) struct Accepted {
    stream: std::net::TcpStream,
    permit: OwnedSemaphorePermit,
}

/// Load given to a worker whose queue is closed, so it is never chosen again.
pub(super) const GONE: usize = usize::MAX / 2;

/// Accepts until every worker is gone, each accept holding one of `permits` (`max_open`): at
/// the cap the loop waits for a connection to close. Errors are [`next_connection`]'s.
pub(super) async fn accept_loop(
    listener: &TcpListener,
    workers: &[Worker],
    permits: &Arc<Semaphore>,
    send_buffer: usize,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _peer) = next_connection(listener, "public").await;
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

/// How long an accept loop pauses after an error that is not the peer's (out of descriptors):
/// retrying at once would spin a full process.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A listener as the accept loops see it: a trait only so a test can hand them errors no real
/// socket produces on demand (out of descriptors).
pub(super) trait Listen {
    type Conn;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listen for TcpListener {
    type Conn = (TcpStream, SocketAddr);
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send {
        Self::accept(self)
    }
}

/// The next connection `listener` (`"public"` or `"admin"`, for the log) accepts. A connection
/// its peer reset before the accept is skipped at once; any other error (out of descriptors)
/// is logged and retried after [`ACCEPT_PAUSE`].
pub(super) async fn next_connection<L: Listen>(listener: &L, name: &'static str) -> L::Conn {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                tracing::warn!(error = %err, listener = name, "accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// A connection its peer gave up on before it was accepted: nothing to do but take the next.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The worker side: connections handed over by the acceptor.
pub(super) struct Incoming {
    pub(super) rx: mpsc::UnboundedReceiver<Accepted>,
    pub(super) load: Arc<AtomicUsize>,
}

impl Incoming {
    /// The next connection, registered in this worker's reactor; None once the acceptor stopped.
    pub(super) async fn next(&mut self) -> Option<(TcpStream, OwnedSemaphorePermit, SocketAddr)> {
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
pub(super) struct LoadGuard(pub(super) Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;
    use crate::telemetry::captured::Captured;

    /// A listener that answers from a script, then never again.
    struct Scripted(Mutex<VecDeque<io::Result<u32>>>);

    impl Scripted {
        fn new(script: impl IntoIterator<Item = io::Result<u32>>) -> Self {
            Self(Mutex::new(script.into_iter().collect()))
        }
    }

    impl Listen for Scripted {
        type Conn = u32;
        fn accept(&self) -> impl Future<Output = io::Result<u32>> + Send {
            let next = self.0.lock().unwrap().pop_front();
            async move {
                match next {
                    Some(result) => result,
                    None => std::future::pending().await,
                }
            }
        }
    }

    fn errors(kinds: &[io::ErrorKind]) -> Vec<io::Result<u32>> {
        kinds.iter().map(|kind| Err(io::Error::from(*kind))).collect()
    }

    /// A peer that reset, aborted or refused before the accept is skipped at once, unlogged.
    #[tokio::test(start_paused = true)]
    async fn a_connection_its_peer_gave_up_on_is_skipped_at_once() {
        let (captured, _log) = Captured::on_this_thread();
        let mut script = errors(&[
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionRefused,
        ]);
        script.push(Ok(7));
        let started = Instant::now();
        assert_eq!(next_connection(&Scripted::new(script), "public").await, 7);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(captured.text(), "");
    }

    /// Any other error (out of descriptors) is logged with the listener's name and the loop
    /// pauses exactly [`ACCEPT_PAUSE`] (100 ms) before the next accept, each time.
    #[tokio::test(start_paused = true)]
    async fn another_error_is_logged_and_pauses_the_loop_before_the_next_accept() {
        let (captured, _log) = Captured::on_this_thread();
        let mut script = vec![Err(io::Error::from_raw_os_error(24)), Err(io::Error::other("odd"))];
        script.push(Ok(9));
        let started = Instant::now();
        assert_eq!(next_connection(&Scripted::new(script), "admin").await, 9);
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        let text = captured.text();
        assert_eq!(text.matches("accept failed").count(), 2, "{text}");
        assert!(
            text.contains("listener=\"admin\"") || text.contains("listener=admin"),
            "{text}"
        );
        assert!(text.contains("(os error 24)"), "{text}");
    }

    /// The send buffer of a connection accepted by [`accept_loop`] with `send_buffer`.
    async fn accepted_send_buffer(send_buffer: usize) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let workers = [Worker {
            tx,
            load: Arc::default(),
        }];
        let permits = Arc::new(Semaphore::new(1));
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let accepted = tokio::select! {
            () = accept_loop(&listener, &workers, &permits, send_buffer) => panic!("the accept loop ended"),
            accepted = rx.recv() => accepted.expect("a connection handed to the worker"),
        };
        assert_eq!(
            workers[0].load.load(Ordering::Relaxed),
            1,
            "counted in the worker's load"
        );
        socket2::SockRef::from(&accepted.stream).send_buffer_size().unwrap()
    }

    /// `send_buffer` is set on each accepted connection (Linux doubles what it is given, for
    /// its own bookkeeping); 0 leaves the kernel's default, as a plain accept has it.
    #[tokio::test]
    async fn the_configured_send_buffer_is_set_on_each_connection_and_zero_leaves_the_kernels() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (plain, _) = listener.accept().await.unwrap();
        let kernels = socket2::SockRef::from(&plain).send_buffer_size().unwrap();
        assert_eq!(accepted_send_buffer(0).await, kernels);
        assert_eq!(accepted_send_buffer(40_000).await, 80_000);
    }
}
