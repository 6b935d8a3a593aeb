//! The log sink: request threads append formatted lines to one shared buffer; a writer thread
//! takes the whole buffer and writes it with one `write(2)`.
//!
//! The writer thread is woken only when it has gone idle (an empty buffer) or a batch is full;
//! under load it writes what gathered every [`GATHER`], so a log line costs a memcpy under an
//! uncontended lock instead of a cross-thread wake-up per line (the channel of
//! `tracing_appender::non_blocking` woke its thread for almost every line: a futex and a
//! context switch per request in `bench/run`). Not lossy: past [`MAX_PENDING`] bytes (8 MiB, a
//! stderr that stopped draining) the logging thread waits for the writer rather than drop lines,
//! which stalls that server worker too. Dropping the [`LogGuard`] flushes everything.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long lines gather under load before the next write.
const GATHER: Duration = Duration::from_millis(20);
/// A batch this large is written at once.
const BATCH: usize = 64 * 1024;
/// Past this many unwritten bytes, request threads wait for the writer.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A batch buffer that grew past this in a burst is given back after the write.
const KEEP_CAPACITY: usize = 256 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread waits for a first line (no timer running).
    idle: bool,
    /// The writer thread was told to write now.
    urged: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread.
    wake: Condvar,
    /// Wakes request threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `MakeWriter` given to the subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`.
pub fn batch_writer(out: impl Write + Send + 'static) -> (BatchWriter, LogGuard) {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("falgate-log".into())
        .spawn({
            let shared = shared.clone();
            move || write_loop(&shared, out)
        })
        .ok();
    if thread.is_none() {
        // No thread for the writer: lines would pile up unseen; write them inline instead.
        shared.lock().closed = true;
    }
    (BatchWriter { shared: shared.clone() }, LogGuard { shared, thread })
}

fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.closed {
            state.idle = true;
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        std::mem::swap(&mut state.pending, &mut batch);
        state.urged = false;
        let closed = state.closed;
        drop(state);
        shared.room.notify_all();
        // Nothing useful can be done about a failed log write.
        out.write_all(&batch).and_then(|()| out.flush()).ok();
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
        if closed {
            let leftover = std::mem::take(&mut shared.lock().pending);
            out.write_all(&leftover).and_then(|()| out.flush()).ok();
            return;
        }
        // Let lines gather (unless a full batch or shutdown calls sooner).
        let state = shared.lock();
        drop(
            shared
                .wake
                .wait_timeout_while(state, GATHER, |s| !s.urged && !s.closed)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a Self;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Write for &BatchWriter {
    /// Called once per formatted line by the subscriber.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.closed {
            // After shutdown (or without a writer thread) lines go out inline.
            drop(state);
            return std::io::stderr().write(line);
        }
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state.urged = true;
            shared.wake.notify_one();
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.closed {
            // Shut down while this line waited for room: the writer thread may be gone.
            drop(state);
            return std::io::stderr().write(line);
        }
        state.pending.extend_from_slice(line);
        let wake = if state.idle {
            state.idle = false;
            true
        } else if state.pending.len() >= BATCH && !state.urged {
            state.urged = true;
            true
        } else {
            false
        };
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer thread holds the other end.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_a_batch() {
        let sink = Sink::default();
        let (writer, _guard) = batch_writer(sink.clone());
        (&writer).write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the idle writer was not woken");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one line\n");
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_and_in_order_per_thread() {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        (&writer).write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let prefix = format!("t{t} line ");
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..20_000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 80_000);
    }
}
