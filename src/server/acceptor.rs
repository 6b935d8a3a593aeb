//! The acceptor: one loop on the main runtime takes each connection (holding a place under
//! `max_open`) and hands it to the worker with the fewest open ones; the worker side registers
//! it in its own reactor and reads the peer address.

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
/// the cap the loop waits for a connection to close. A connection the peer reset before accept
/// is skipped; other errors (out of descriptors) are logged and retried after a pause, so a full
/// process does not spin.
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

pub(super) fn is_connection_error(err: &io::Error) -> bool {
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
