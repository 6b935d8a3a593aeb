//! Jobs in flight, reconciled with fal: a job's concurrency slot (`max_inflight_jobs`) is freed
//! only when falgate learns from fal that the job ended — a poll that sees `COMPLETED` or is
//! served the result, a cancel fal answers `ALREADY_COMPLETED` (pipeline), or a pass of the
//! reconciler here. A cancel fal accepts (2xx) frees nothing: for a running job it is a request
//! the app may take its time to honour (fal's docs: a running job's app receives a cancel signal,
//! <https://docs.fal.ai/documentation/development/handle-cancellations>).
//!
//! Where the concern lives: each submit that holds a slot is also written to an index of jobs in
//! flight, with the app id that addresses its status (`[ns/]owner/alias`) and the time it is next
//! due to be asked about: in process (a map here) or, with `[redis]`, one sorted set
//! `<prefix>:{reconcile}:jobs` (member `<caller tag> <app> <request id>`, score = due time in
//! ms) shared by every replica. The slots themselves stay where admission counts them
//! (`memory.rs`, `admit.lua`); the index only says which to ask about. A poll that sees the end
//! removes the job from the index; an entry whose slot is gone anyway (expired after
//! `inflight_ttl_seconds`, or freed elsewhere) is dropped at its next pass without asking fal.
//!
//! The reconciler is one task per process, run by `app`: on each tick it reads the snapshot in
//! force and hands its limiter and status source to [`tick`] (so a reload changes its settings and
//! never stops it); it ends when the drain begins.
//! Every `reconcile_interval_ms` it takes up to `reconcile_batch` jobs nobody learned about for
//! `reconcile_idle_ms`, asks fal for their status with the server-held key (at most
//! [`CONCURRENCY`] at once), frees the slots of those `COMPLETED` and puts the others back at the
//! end of the line. With `[redis]`, only the replica holding the lease key
//! `<prefix>:{reconcile}:lease` (`SET NX PX`, renewed each pass, `lease.lua`) runs a pass, so fal
//! is asked once per job whatever the number of replicas; a replica that dies loses the lease
//! after three intervals. A pass may take longer than that (a batch of slow status calls), so it
//! renews the lease while it runs: whenever an interval has passed since the last renewal (on
//! the limiter's clock, checked as each answer arrives) and at least once per interval of
//! waiting (a timer), so the lease always has two intervals left. A pass that finds the lease
//! taken by another replica stops acting on its answers. Tests drive
//! [`Limiter::reconcile_once_at`] with their own clock and status source.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

mod jobs;

use self::jobs::Job;
pub(crate) use self::jobs::Jobs;
#[cfg(test)]
use self::jobs::{member, parse_member};
use super::{micros, Admission, Limiter};
use crate::fal::{AppId, FalRequestId};
use crate::redis::StoreError;

/// Status calls to fal in flight at once during one pass.
pub const CONCURRENCY: usize = 8;
/// How often a disabled reconciler looks whether a reload enabled it.
const OFF_RECHECK: Duration = Duration::from_secs(5);
/// The shortest lease, whatever the interval: a pass must fit in it.
const MIN_LEASE: Duration = Duration::from_secs(5);

/// What fal said about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// `COMPLETED` (succeeded, failed or cancelled): its slot is free.
    Ended,
    /// Queued or running.
    Running,
    /// No usable answer (fal unreachable, an error status): asked again later.
    Unknown,
}

/// Where a pass learns what a job is doing: fal (`upstream` implements it for its `Upstream`),
/// or a test's stand-in. Defined here so that `limits` needs nothing of `upstream`.
pub trait JobStatus: Sync {
    /// The state of request `id` of app `app`.
    fn status(&self, app: &AppId, id: &FalRequestId) -> impl Future<Output = JobState> + Send;

    /// Told when a pass learned that request `id` of the caller tagged `tag` ended (its slot
    /// freed): the gate records the end and tells the owner's event stream (`crate::events`).
    fn ended(&self, tag: &str, id: &FalRequestId) -> impl Future<Output = ()> + Send {
        let _ = (tag, id);
        std::future::ready(())
    }
}

/// What a submitted job spent of its caller's day quota: the quota day it was counted in and
/// its credits (one request with them), kept to give back if fal reports it failed on its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobSpend {
    pub day: i64,
    pub credits: u64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `reconcile_interval_ms = 0`.
    Off,
    /// Another replica holds the lease.
    Standby,
    /// The store did not answer; nothing was freed.
    Failed,
    /// Jobs asked about, and slots freed.
    Ran { asked: usize, freed: usize },
}

/// The lease a pass holds: its length, how often it is renewed, and when it last was.
struct Lease {
    ttl: Duration,
    renew_every: Duration,
    renewed: std::time::Instant,
}

impl Limiter {
    /// A submit fal accepted: its concurrency slot (if its tier has one) now belongs to
    /// `request_id`, and the job is indexed for the reconciler under `app`.
    pub async fn job_started(&self, admission: &Admission, app: &AppId, request_id: &FalRequestId) {
        self.job_started_at(admission, app, request_id, self.clock.now()).await;
    }

    /// [`Self::job_started`] at `now` (when the job is first due is counted from it).
    pub async fn job_started_at(&self, admission: &Admission, app: &AppId, request_id: &FalRequestId, now: SystemTime) {
        let Some(reservation) = &admission.reservation else {
            return;
        };
        // The slot renamed and the job indexed: independent, sent at once.
        let renamed = self.release(&admission.tag, reservation, Some(request_id.as_str()), None);
        tokio::join!(renamed, self.track_job(admission, app, request_id, now));
    }

    /// Indexes a started job for the reconciler (nothing when it is off).
    async fn track_job(&self, admission: &Admission, app: &AppId, request_id: &FalRequestId, now: SystemTime) {
        if self.config.reconcile_interval_ms == 0 {
            return;
        }
        let job = Job {
            tag: admission.tag.clone(),
            app: app.clone(),
            id: request_id.clone(),
        };
        let due_us = micros(now).saturating_add(self.config.reconcile_idle_ms.saturating_mul(1000));
        match &self.jobs.redis {
            Some(redis) => {
                // Unindexed, the slot still frees on a poll that sees the end, or at its TTL.
                if let Err(err) = Box::pin(redis.track(&job, due_us / 1000)).await {
                    self.errors.log(&err);
                }
            }
            None => {
                let mut memory = lock(&self.jobs.memory);
                // Bounded like the callers it belongs to; past it, the slot frees at its TTL.
                if (memory.len() as u64) < self.config.max_tracked_callers.saturating_mul(4) {
                    memory.insert((job.tag, job.id.as_str().to_owned()), (job.app, due_us));
                }
            }
        }
    }

    /// Fal said job `request_id` of app `app` ended (a poll saw it): free its slot and drop it
    /// from the reconciler's index. Idempotent, so every replica that sees the end may call it.
    pub async fn job_finished(&self, who: &super::Subject<'_>, app: &AppId, request_id: &FalRequestId) {
        let tag = super::tag_of(who.principal);
        self.release(&tag, request_id.as_str(), None, None).await;
        let job = Job {
            tag,
            app: app.clone(),
            id: request_id.clone(),
        };
        self.forget(&job).await;
    }

    /// fal said in a verified webhook (`webhooks::apply`) that job `request_id` of app `app`,
    /// held by the caller whose hash tag is `tag`, ended: free its slot, drop it from the
    /// reconciler's index and, with `spend` (the job's quota day and credits), give back its
    /// request and credits. Call it once per job (deliveries are deduplicated): a refund is
    /// not idempotent.
    pub async fn job_ended(&self, tag: &str, app: &AppId, request_id: &FalRequestId, spend: Option<JobSpend>) {
        let refund = spend.map(|spend| (spend.day, spend.credits));
        self.release(tag, request_id.as_str(), None, refund).await;
        let job = Job {
            tag: tag.to_owned(),
            app: app.clone(),
            id: request_id.clone(),
        };
        self.forget(&job).await;
    }

    /// Whether `[limits] refund_failed_jobs` is on.
    pub fn refunds_failed_jobs(&self) -> bool {
        self.config.refund_failed_jobs
    }

    /// How long the reconciler waits between passes; `None` when it is off.
    pub fn reconcile_interval(&self) -> Option<Duration> {
        (self.config.reconcile_interval_ms > 0).then(|| Duration::from_millis(self.config.reconcile_interval_ms))
    }

    /// One pass of the reconciler now, asking `fal`.
    pub async fn reconcile_once(&self, fal: &impl JobStatus) -> Pass {
        self.reconcile_once_at(fal, self.clock.now()).await
    }

    /// One pass at `now` (the replica's clock; with Redis, slots' start times are Redis's).
    pub async fn reconcile_once_at(&self, fal: &impl JobStatus, now: SystemTime) -> Pass {
        let Some(interval) = self.reconcile_interval() else {
            return Pass::Off;
        };
        let now_us = micros(now);
        let mut lease = Lease {
            ttl: (interval * 3).max(MIN_LEASE),
            renew_every: (interval * 3).max(MIN_LEASE) / 3,
            renewed: self.clock.instant(),
        };
        let due = match &self.jobs.redis {
            Some(redis) => {
                match redis.lease(&self.jobs.replica, lease.ttl).await {
                    Ok(true) => {}
                    Ok(false) => return Pass::Standby,
                    Err(err) => return self.failed(&err),
                }
                match redis.due(now_us / 1000, self.config.reconcile_batch).await {
                    Ok(due) => due,
                    Err(err) => return self.failed(&err),
                }
            }
            None => self.due_in_memory(now_us),
        };
        // Only jobs whose slot is still held and not past its TTL are worth a call to fal.
        let oldest = now_us.saturating_sub(self.config.inflight_ttl_seconds.saturating_mul(1_000_000));
        let mut held = Vec::with_capacity(due.len());
        for job in due {
            let start = match &self.jobs.redis {
                Some(redis) => match redis.slot_start(&job).await {
                    Ok(start) => start,
                    Err(err) => return self.failed(&err),
                },
                None => self.memory.slot_start(&job.tag, job.id.as_str()),
            };
            match start {
                Some(start) if start > oldest => held.push(job),
                _ => self.forget(&job).await,
            }
        }
        let asked = held.len();
        let mut answers = futures_util::stream::iter(held)
            .map(|job| async move {
                let state = fal.status(&job.app, &job.id).await;
                (job, state)
            })
            .buffer_unordered(CONCURRENCY);
        let next_due_us = now_us.saturating_add(self.config.reconcile_idle_ms.saturating_mul(1000));
        let mut freed = 0;
        // While answers are slow to come, the lease is renewed on a timer too.
        let mut waiting = tokio::time::interval_at(tokio::time::Instant::now() + lease.renew_every, lease.renew_every);
        // A renewal that came late is not made up for by a burst of them.
        waiting.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                next = answers.next() => next,
                _ = waiting.tick() => {
                    if let Err(pass) = self.keep_lease(&mut lease, true).await {
                        return pass;
                    }
                    continue;
                }
            };
            let Some((job, state)) = next else { break };
            if let Err(pass) = self.keep_lease(&mut lease, false).await {
                return pass;
            }
            match state {
                JobState::Ended => {
                    self.release(&job.tag, job.id.as_str(), None, None).await;
                    self.forget(&job).await;
                    fal.ended(&job.tag, &job.id).await;
                    freed += 1;
                }
                JobState::Running | JobState::Unknown => self.postpone(&job, next_due_us).await,
            }
        }
        crate::telemetry::metrics::inflight_reconciled(freed);
        Pass::Ran { asked, freed }
    }

    /// Renews the pass's lease when `force` or when `renew_every` passed since the last renewal
    /// (in-process passes hold none). Errs with what the pass is to report: `Standby` when
    /// another replica holds the lease now, `Failed` when the store did not answer.
    async fn keep_lease(&self, lease: &mut Lease, force: bool) -> Result<(), Pass> {
        let Some(redis) = &self.jobs.redis else {
            return Ok(());
        };
        let now = self.clock.instant();
        if !force && now.saturating_duration_since(lease.renewed) < lease.renew_every {
            return Ok(());
        }
        match redis.lease(&self.jobs.replica, lease.ttl).await {
            Ok(true) => {
                lease.renewed = now;
                Ok(())
            }
            Ok(false) => Err(Pass::Standby),
            Err(err) => Err(self.failed(&err)),
        }
    }

    /// Gives the lease up (the drain began), so another replica takes over at once.
    pub async fn resign(&self) {
        if let Some(redis) = &self.jobs.redis {
            if let Err(err) = redis.resign(&self.jobs.replica).await {
                self.errors.log(&err);
            }
        }
    }

    fn failed(&self, err: &StoreError) -> Pass {
        self.errors.log(err);
        Pass::Failed
    }

    fn due_in_memory(&self, now_us: u64) -> Vec<Job> {
        let memory = lock(&self.jobs.memory);
        let mut due: Vec<(u64, Job)> = memory
            .iter()
            .filter(|(_, (_, due))| *due <= now_us)
            .map(|((tag, id), (app, due))| {
                // Keys were written from a parsed id.
                let id = FalRequestId::parse(id).ok()?;
                Some((
                    *due,
                    Job {
                        tag: tag.clone(),
                        app: app.clone(),
                        id,
                    },
                ))
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        // The longest waiting first, as the sorted set gives them.
        due.sort_by_key(|(due, _)| *due);
        due.truncate(self.config.reconcile_batch as usize);
        due.into_iter().map(|(_, job)| job).collect()
    }

    async fn forget(&self, job: &Job) {
        match &self.jobs.redis {
            Some(redis) => {
                if let Err(err) = redis.forget(job).await {
                    self.errors.log(&err);
                }
            }
            None => {
                lock(&self.jobs.memory).remove(&(job.tag.clone(), job.id.as_str().to_owned()));
            }
        }
    }

    async fn postpone(&self, job: &Job, due_us: u64) {
        match &self.jobs.redis {
            Some(redis) => {
                if let Err(err) = redis.postpone(job, due_us / 1000).await {
                    self.errors.log(&err);
                }
            }
            None => {
                if let Some(entry) = lock(&self.jobs.memory).get_mut(&(job.tag.clone(), job.id.as_str().to_owned())) {
                    entry.1 = due_us;
                }
            }
        }
    }
}

/// What the reconciler's task does on each tick, with the snapshot in force (`app` runs the task,
/// one per process, and passes this snapshot's limiter and status source): gives the lease up
/// once the drain began (`None`: the task ends), else runs one pass when the reconciler is on,
/// and says how long to wait before the next tick (`reconcile_interval_ms`, or a recheck for a
/// reload that turns it on).
pub async fn tick(limiter: &Limiter, fal: &impl JobStatus, draining: bool) -> Option<Duration> {
    if draining {
        limiter.resign().await;
        return None;
    }
    let interval = limiter.reconcile_interval();
    if interval.is_some() {
        let pass = limiter.reconcile_once(fal).await;
        if let Pass::Ran { asked, freed } = pass {
            tracing::debug!(asked, freed, "reconciled jobs in flight with fal");
        }
    }
    Some(interval.unwrap_or(OFF_RECHECK))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A poisoned lock only means a thread panicked mid-update of the index; keep serving.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
