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
//! each worker serves its connections with hyper's HTTP/1 or HTTP/2 builder, chosen from the
//! connection's first bytes, peeked (`conn::Protocol`; hyper-util's auto builder when they do not
//! decide it).
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
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::lifecycle::Lifecycle;

mod acceptor;
mod admin;
mod conn;
mod settings;
mod watchdog;
mod worker;

pub use admin::serve_admin;
pub use conn::Conn;
pub use settings::{Connections, Settings};

use acceptor::{accept_loop, Incoming, Worker};
use worker::run_worker;

/// Most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// What each worker thread runs every [`UPKEEP_EVERY`] on its own runtime, set by the binary
/// before [`serve`] ([`set_worker_upkeep`]); nothing when unset (tests, an embedding
/// application).
static WORKER_UPKEEP: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// How often each worker runs its upkeep.
pub const UPKEEP_EVERY: Duration = Duration::from_millis(250);

/// Sets what each worker thread runs every [`UPKEEP_EVERY`], on the thread itself: the binary's
/// allocator collection (`main.rs`: mimalloc hands back what a thread freed only when that
/// thread allocates or collects, so an idle worker would keep a spike's memory). The first call
/// wins.
pub fn set_worker_upkeep(upkeep: fn()) {
    let _ = WORKER_UPKEEP.set(upkeep);
}

/// Runs `task` every `period` on the current runtime, forever (until the runtime ends).
pub async fn every(period: Duration, task: fn()) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        task();
    }
}

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
                runtime.block_on(async move {
                    if let Some(&upkeep) = WORKER_UPKEEP.get() {
                        tokio::spawn(every(UPKEEP_EVERY, upkeep));
                    }
                    run_worker(incoming, router, settings, lifecycle, streams, stopped).await;
                });
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_streams;
