//! The request queue: each job's phase is a pure function of the time since its submit
//! (`IN_QUEUE` for `queue_ms`, `IN_PROGRESS` for `progress_ms`, then `COMPLETED`), and request
//! ids are scoped to their app, so an id is unknown under any other app.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::time::Instant;

use super::model::ModelResult;
use super::{lock, EmulatorConfig};

/// The phase a job is in at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    InQueue,
    InProgress,
    Completed,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InQueue => "IN_QUEUE",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
        }
    }
}

/// A job as seen at one instant.
#[derive(Clone, Debug)]
pub(crate) struct JobView {
    pub(crate) phase: Phase,
    /// Earlier jobs of the same app still waiting (0 = next); meaningful in `IN_QUEUE` only.
    pub(crate) queue_position: usize,
    /// Log entries emitted so far, oldest first.
    pub(crate) logs: Vec<Value>,
    pub(crate) cancelled: bool,
    pub(crate) outcome: ModelResult,
    /// Seconds spent in progress, known once completed normally.
    pub(crate) inference_time: Option<f64>,
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelResult {
    Requested,
    AlreadyCompleted,
    NotFound,
}

/// All jobs, keyed by `(app, request id)`.
/// How long a request stays known after its submit.
const RETENTION: Duration = Duration::from_secs(6 * 3600);

pub(crate) struct Queue {
    queue: Duration,
    progress: Duration,
    log_lines: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    jobs: HashMap<(String, String), Job>,
}

struct Job {
    seq: u64,
    submitted: Instant,
    submitted_at: SystemTime,
    cancelled: Option<Instant>,
    outcome: ModelResult,
}

impl Queue {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        Self {
            queue: Duration::from_millis(config.queue_ms),
            progress: Duration::from_millis(config.progress_ms),
            log_lines: config.log_lines,
            state: Mutex::new(State::default()),
        }
    }

    /// Enqueues a job whose eventual result is `outcome`; returns its id and queue position.
    pub(crate) fn submit(&self, app: &str, outcome: ModelResult) -> (String, usize) {
        let id = uuid::Uuid::new_v4().to_string();
        let now = Instant::now();
        let mut state = lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        let job = Job {
            seq,
            submitted: now,
            submitted_at: SystemTime::now(),
            cancelled: None,
            outcome,
        };
        state.jobs.insert((app.to_owned(), id.clone()), job);
        // Like fal, forget old requests, so a long `falgate dev` session stays bounded in memory.
        if seq.is_multiple_of(1024) {
            state
                .jobs
                .retain(|_, job| now.duration_since(job.submitted) < RETENTION);
        }
        let position = self.position(&state, app, seq, now);
        (id, position)
    }

    /// The job's state now, or `None` if `id` is unknown under `app`.
    pub(crate) fn snapshot(&self, app: &str, id: &str) -> Option<JobView> {
        let now = Instant::now();
        let state = lock(&self.state);
        let job = state.jobs.get(&(app.to_owned(), id.to_owned()))?;
        let phase = self.phase(job, now);
        let until = job.cancelled.unwrap_or(now);
        let completed_normally = phase == Phase::Completed && job.cancelled.is_none();
        Some(JobView {
            phase,
            queue_position: self.position(&state, app, job.seq, now),
            logs: self.logs(job, until),
            cancelled: job.cancelled.is_some(),
            outcome: job.outcome.clone(),
            inference_time: completed_normally.then_some(self.progress.as_secs_f64()),
        })
    }

    /// Cancels a queued or running job; a cancelled job counts as completed from then on.
    pub(crate) fn cancel(&self, app: &str, id: &str) -> CancelResult {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let Some(job) = state.jobs.get_mut(&(app.to_owned(), id.to_owned())) else {
            return CancelResult::NotFound;
        };
        if self.phase(job, now) == Phase::Completed {
            return CancelResult::AlreadyCompleted;
        }
        job.cancelled = Some(now);
        CancelResult::Requested
    }

    fn phase(&self, job: &Job, now: Instant) -> Phase {
        let elapsed = now.saturating_duration_since(job.submitted);
        if job.cancelled.is_some() || elapsed >= self.queue + self.progress {
            Phase::Completed
        } else if elapsed >= self.queue {
            Phase::InProgress
        } else {
            Phase::InQueue
        }
    }

    /// Counts earlier, uncancelled jobs of `app` that have not started yet.
    fn position(&self, state: &State, app: &str, seq: u64, now: Instant) -> usize {
        state
            .jobs
            .iter()
            .filter(|((job_app, _), job)| job_app == app && job.seq < seq)
            .filter(|(_, job)| self.phase(job, now) == Phase::InQueue)
            .count()
    }

    /// Log line `i` appears at `queue + progress * i / log_lines`, so all lines are out by completion.
    fn logs(&self, job: &Job, until: Instant) -> Vec<Value> {
        let lines = u32::try_from(self.log_lines).unwrap_or(u32::MAX);
        (0..lines)
            .map(|index| (index, self.queue + self.progress * index / lines))
            .take_while(|(_, offset)| until.saturating_duration_since(job.submitted) >= *offset)
            .map(|(index, offset)| log_entry(index + 1, lines, job.submitted_at + offset))
            .collect()
    }
}

fn log_entry(number: u32, total: u32, at: SystemTime) -> Value {
    json!({
        "message": format!("Running step {number}/{total}"),
        "level": "INFO",
        "source": "USER",
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        Queue::new(&EmulatorConfig {
            queue_ms: 100,
            progress_ms: 300,
            log_lines: 3,
            stream_interval_ms: 10,
        })
    }

    fn ok() -> ModelResult {
        ModelResult::Output(json!({}))
    }

    #[tokio::test(start_paused = true)]
    async fn logs_appear_gradually_during_progress() {
        let queue = queue();
        let (id, _) = queue.submit("a/b", ok());
        let count = |queue: &Queue| queue.snapshot("a/b", &id).map(|s| s.logs.len());
        assert_eq!(count(&queue), Some(0));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(count(&queue), Some(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(count(&queue), Some(2));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(count(&queue), Some(3));
        let snapshot = queue.snapshot("a/b", &id).expect("known");
        assert_eq!((snapshot.phase, snapshot.inference_time), (Phase::Completed, Some(0.3)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_freezes_logs_and_completes() {
        let queue = queue();
        let (id, _) = queue.submit("a/b", ok());
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(queue.cancel("a/b", &id), CancelResult::Requested);
        tokio::time::advance(Duration::from_millis(500)).await;
        let snapshot = queue.snapshot("a/b", &id).expect("known");
        assert!(snapshot.cancelled && snapshot.phase == Phase::Completed);
        assert_eq!((snapshot.logs.len(), snapshot.inference_time), (1, None));
        assert_eq!(queue.cancel("a/b", &id), CancelResult::AlreadyCompleted);
        assert_eq!(queue.cancel("a/c", &id), CancelResult::NotFound);
    }
}
