//! Deadlines that do not depend on the peer: every response is watched by a timer that runs
//! outside its body, so a client that takes nothing (an HTTP/2 stream window of zero, a socket
//! read a byte at a time) cannot keep a response, its slots and its budget charges alive by
//! making hyper stop polling the body.
//!
//! Why by hand: hyper polls a response body only when the peer can take more (HTTP/2: stream
//! window; HTTP/1: room in its write buffer). Timers inside the body (stream lifetime, fal's
//! idle timeout) therefore stop with it, and neither hyper nor h2 has a per-stream send
//! deadline (hyper's `http2_keep_alive` only checks that the peer answers pings, which a stalled
//! peer does).
//!
//! How: each task that runs responses is wrapped in a [`Watchdog`]: on HTTP/2 the task hyper
//! spawns per stream ([`StreamExecutor`]), on HTTP/1 the connection's own task. The service
//! finds the task's [`Watch`] in a task-local and wraps the response body in [`Watched`], which
//! records what hyper takes. The watchdog's timer checks the response's bounds and, when one
//! passes, drops the task it wraps: h2 then resets the stream (`RST_STREAM(CANCEL)`, its buffered
//! data freed), an HTTP/1 connection is closed; the body, and every slot and budget charge it
//! holds, are dropped with it.
//!
//! The bounds of one response:
//! - **progress** (every response): while the body has data ready that hyper has not come back
//!   for, each `write_timeout` window must see at least `min_send_bytes_per_second ×
//!   write_timeout` bytes taken (at least one frame). The clock stops while the body waits for
//!   its source (fal), so a quiet stream is not cut by this rule;
//! - **lifetime** (relayed streams, [`Bounds::lifetime`]): open at most this long plus
//!   [`GRACE`] (the body ends a status stream cleanly at the lifetime itself when hyper polls it);
//! - **movement** (relayed streams, [`Bounds::idle`]): no frame moved from fal to the client for
//!   this long plus [`GRACE`], whoever is slow (fal's silence is caught by the body's own idle
//!   timer first, which ends the stream with an error the client sees).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use tokio::time::{Instant, Sleep};

mod body;

use self::body::{Completion, Gave, Watched};
use super::Connections;
use crate::body::Bounds;

/// How long after a body's own deadline (lifetime, fal's idle timeout) the watchdog cuts, so a
/// body that is polled ends the way it means to (a clean end, an error) before it is reset.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The watch of the task running this code (a stream's on HTTP/2, a connection's on HTTP/1).
    static WATCH: Watch;
}

/// The watch of the task running this code, if it runs under a [`Watchdog`].
pub(crate) fn current() -> Option<Watch> {
    WATCH.try_with(Watch::clone).ok()
}

/// The progress rule's parameters, from `[connections]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    /// The window: `write_timeout`.
    window: Duration,
    /// Bytes each window of waiting must see taken (at least 1).
    min_bytes: u64,
}

impl Progress {
    pub(crate) fn of(connections: &Connections) -> Self {
        let per_window =
            (u128::from(connections.min_send_bytes_per_second) * connections.write_timeout.as_millis()).div_ceil(1000);
        Self {
            window: connections.write_timeout,
            min_bytes: u64::try_from(per_window).unwrap_or(u64::MAX).max(1),
        }
    }
}

/// The state shared by a task's watchdog and the response bodies it runs.
#[derive(Clone)]
pub(crate) struct Watch(Arc<Mutex<State>>);

struct State {
    progress: Progress,
    /// The watchdog's task, woken when the response completes on another task (h2 releases a
    /// stream's last chunk on the connection's task).
    waker: Option<std::task::Waker>,
    /// Closes the whole connection: for a response whose stream already ended on our side but
    /// whose last chunks wait in h2 for a window that never comes (no stream left to reset).
    kill: Option<Kill>,
    /// Counts responses begun on this task; a body touches the state only while it is current.
    generation: u64,
    response: Option<Tracked>,
}

/// Closes the connection a response runs on.
pub(crate) type Kill = Arc<dyn Fn() + Send + Sync>;

/// One watched response.
struct Tracked {
    generation: u64,
    started: Instant,
    bounds: Bounds,
    /// When a frame last moved from the body to hyper.
    moved: Instant,
    phase: Phase,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The body has data ready (or has not been asked yet) and waits for hyper: the current
    /// progress window began at `window`, and `taken` bytes were taken since; `handed` bytes
    /// were handed to hyper and are counted once it comes back.
    Owed { window: Instant, taken: u64, handed: u64 },
    /// The body waits for its source (fal): no progress owed.
    Source,
}

/// Why a response was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    Progress,
    Lifetime,
    Movement,
}

impl Cut {
    fn reason(self) -> &'static str {
        match self {
            Self::Progress => "the client took too little of the response (write timeout / minimum send rate)",
            Self::Lifetime => "the stream reached its lifetime",
            Self::Movement => "nothing moved through the stream within the upstream idle timeout",
        }
    }
}

impl Tracked {
    /// The bound that has passed at `now`, or the next instant one could.
    fn check(&mut self, progress: Progress, now: Instant) -> Result<Option<Instant>, Cut> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant, cut: Cut| -> Result<(), Cut> {
            if now >= at {
                return Err(cut);
            }
            next = Some(next.map_or(at, |n| n.min(at)));
            Ok(())
        };
        if let Some(lifetime) = self.bounds.lifetime {
            consider(self.started + lifetime + GRACE, Cut::Lifetime)?;
        }
        if let Some(idle) = self.bounds.idle {
            consider(self.moved + idle + GRACE, Cut::Movement)?;
        }
        if let Phase::Owed { window, taken, .. } = &mut self.phase {
            let mut end = *window + progress.window;
            if now >= end && *taken >= progress.min_bytes {
                // Enough was taken in that window: the next one starts now.
                *window = now;
                *taken = 0;
                end = now + progress.window;
            }
            consider(end, Cut::Progress)?;
        }
        Ok(next)
    }
}

impl Watch {
    pub(crate) fn new(progress: Progress) -> Self {
        Self(Arc::new(Mutex::new(State {
            progress,
            waker: None,
            kill: None,
            generation: 0,
            response: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `body` with `bounds` (replacing any response this task watched before).
    /// `guard` lives until the response is complete: the body dropped and every chunk it gave
    /// released by hyper (written to the socket, or discarded by a reset or close). An empty
    /// body is not watched. `kill` closes the connection (see [`State::kill`]).
    pub(crate) fn wrap<G: Send + 'static>(&self, body: Body, bounds: Bounds, guard: G, kill: Kill) -> Body {
        use http_body::Body as _;
        if body.is_end_stream() {
            return crate::body::held(body, guard);
        }
        let now = Instant::now();
        let generation = {
            let mut state = self.lock();
            state.kill = Some(kill);
            state.generation += 1;
            state.response = Some(Tracked {
                generation: state.generation,
                started: now,
                bounds,
                moved: now,
                phase: Phase::Owed {
                    window: now,
                    taken: 0,
                    handed: 0,
                },
            });
            state.generation
        };
        Body::new(Watched {
            body,
            completion: Arc::new(Completion {
                watch: self.clone(),
                generation,
                _guard: Mutex::new(guard),
                ended: Mutex::new(None),
            }),
        })
    }

    /// Records a poll of the current response's body and what it gave.
    fn polled(&self, generation: u64, gave: Gave) {
        let mut state = self.lock();
        let Some(response) = state.response.as_mut().filter(|r| r.generation == generation) else {
            return;
        };
        let now = Instant::now();
        // Hyper came back: whatever was handed to it before is taken.
        let (window, taken) = match response.phase {
            Phase::Owed { window, taken, handed } => (window, taken + handed),
            Phase::Source => (now, 0),
        };
        response.phase = match gave {
            Gave::Data(len) => {
                response.moved = now;
                Phase::Owed {
                    window,
                    taken,
                    handed: len,
                }
            }
            Gave::Nothing => Phase::Source,
            // The body is done; its last chunks may still wait in hyper: the clock runs on
            // until they are released.
            Gave::End => Phase::Owed {
                window,
                taken,
                handed: 0,
            },
        };
    }

    /// The response `generation` is complete.
    fn ended(&self, generation: u64) {
        let mut state = self.lock();
        if state.response.as_ref().is_some_and(|r| r.generation == generation) {
            state.response = None;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }

    /// Whether a response is being watched.
    fn watching(&self) -> bool {
        self.lock().response.is_some()
    }

    fn register(&self, waker: &std::task::Waker) {
        let mut state = self.lock();
        match &state.waker {
            Some(held) if held.will_wake(waker) => {}
            _ => state.waker = Some(waker.clone()),
        }
    }

    /// Closes the connection of the last response watched.
    fn kill(&self) {
        let kill = self.lock().kill.clone();
        if let Some(kill) = kill {
            kill();
        }
    }

    /// The bound that has passed at `now`, or when to look again.
    fn check(&self, now: Instant) -> Result<Option<Instant>, Cut> {
        let mut state = self.lock();
        let progress = state.progress;
        match state.response.as_mut() {
            Some(response) => response.check(progress, now),
            None => Ok(None),
        }
    }
}

/// A task (an HTTP/2 stream, or an HTTP/1 connection) whose responses are watched: it ends,
/// dropping what it runs, when the current response's bounds pass.
pub(crate) struct Watchdog {
    /// None once it has ended (a stream's last chunks may still be watched).
    task: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    watch: Watch,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Watchdog {
    pub(crate) fn new(task: impl Future<Output = ()> + Send + 'static, watch: Watch) -> Self {
        Self {
            task: Some(Box::pin(WATCH.scope(watch.clone(), task))),
            watch,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl Future for Watchdog {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(task) = self.task.as_mut() {
            if task.as_mut().poll(cx).is_ready() {
                self.task = None;
            }
        }
        if self.task.is_none() {
            self.watch.register(cx.waker());
            if !self.watch.watching() {
                return Poll::Ready(());
            }
        }
        loop {
            match self.watch.check(Instant::now()) {
                Err(cut) => {
                    tracing::debug!(reason = cut.reason(), "response cut");
                    if self.task.is_none() {
                        // Nothing left to reset: the chunks wait in the connection's buffers.
                        self.watch.kill();
                    }
                    // Dropping the task resets an HTTP/2 stream or closes an HTTP/1 connection.
                    return Poll::Ready(());
                }
                Ok(None) => {
                    if self.task.is_none() {
                        return Poll::Ready(());
                    }
                    // A timer still armed for an earlier deadline only makes us look again.
                    return Poll::Pending;
                }
                Ok(Some(at)) => {
                    // Only moved earlier: a later deadline (the next answer on a kept-alive
                    // connection) is found when the armed timer fires, so a busy connection
                    // resets its timer about once per window, not once per answer.
                    if self.armed.is_none_or(|armed| armed > at) {
                        self.timer.as_mut().reset(at);
                        self.armed = Some(at);
                    }
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The timer fired: look again (the bound passed, a window rolled over, or
                    // the deadline moved on) and arm it anew.
                    self.armed = None;
                }
            }
        }
    }
}

/// The executor hyper spawns each HTTP/2 stream on: every stream runs under its own
/// [`Watchdog`], so a stalled stream is reset without touching the others.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamExecutor {
    pub(crate) progress: Progress,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Watchdog::new(task, Watch::new(self.progress)));
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_edges;
