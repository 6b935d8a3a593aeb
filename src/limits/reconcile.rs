//! Jobs in flight, reconciled with fal: a job's concurrency slot (`max_inflight_jobs`) is freed
//! only when falgate learns from fal that the job ended — a poll that sees `COMPLETED` or is
//! served the result, a cancel fal answers `ALREADY_COMPLETED` (pipeline), or a pass of the
//! reconciler here. A cancel fal accepts (2xx) frees nothing: for a running job it is a request
//! the app may take its time to honour (`shared/fal-protocol.md` §3.5).
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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use redis::Script;

use super::{micros, Admission, Limiter};
use crate::fal::{AppId, FalRequestId};
use crate::redis::{RedisStore, StoreError};

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

/// One job in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    tag: String,
    app: AppId,
    id: FalRequestId,
}

/// The index of jobs in flight, and this process's name in the lease. Lives for the process.
pub(crate) struct Jobs {
    /// This replica's lease value.
    replica: String,
    /// In process (no `[redis]`): (caller tag, request id) → (app, due at, µs).
    memory: Mutex<HashMap<(String, String), (AppId, u64)>>,
    redis: Option<RedisJobs>,
}

struct RedisJobs {
    store: RedisStore,
    lease: Script,
}

impl Jobs {
    pub(crate) fn new(redis: Option<RedisStore>) -> Self {
        Self {
            replica: uuid::Uuid::new_v4().to_string(),
            memory: Mutex::default(),
            redis: redis.map(|store| RedisJobs {
                store,
                lease: Script::new(include_str!("lease.lua")),
            }),
        }
    }
}

impl RedisJobs {
    fn index(&self) -> String {
        self.store.tagged("reconcile", "jobs")
    }

    fn lease_key(&self) -> String {
        self.store.tagged("reconcile", "lease")
    }

    /// Runs one command with the store's timeout.
    async fn query<T: redis::FromRedisValue>(&self, op: &'static str, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.store.connection();
        self.store.timed_as(op, command.query_async(&mut connection)).await
    }

    async fn track(&self, job: &Job, due_ms: u64) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZADD");
        command.arg(self.index()).arg(due_ms).arg(member(job));
        self.query::<i64>("zadd", &command).await.map(drop)
    }

    async fn forget(&self, job: &Job) -> Result<(), StoreError> {
        self.remove(&member(job)).await
    }

    async fn remove(&self, member: &str) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZREM");
        command.arg(self.index()).arg(member);
        self.query::<i64>("zrem", &command).await.map(drop)
    }

    /// Puts a job still running back at the end of the line; not if a poll forgot it meanwhile.
    async fn postpone(&self, job: &Job, due_ms: u64) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZADD");
        command.arg(self.index()).arg("XX").arg(due_ms).arg(member(job));
        self.query::<i64>("zadd", &command).await.map(drop)
    }

    async fn due(&self, now_ms: u64, batch: u32) -> Result<Vec<Job>, StoreError> {
        let mut command = redis::cmd("ZRANGEBYSCORE");
        command
            .arg(self.index())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(batch);
        let members: Vec<String> = self.query("zrange", &command).await?;
        let mut jobs = Vec::with_capacity(members.len());
        for raw in members {
            match parse_member(&raw) {
                Some(job) => jobs.push(job),
                // Not written by falgate: drop it rather than trip over it every pass.
                None => self.remove(&raw).await?,
            }
        }
        Ok(jobs)
    }

    /// When the caller's slot for the job started (µs, Redis time), if it is still held.
    async fn slot_start(&self, job: &Job) -> Result<Option<u64>, StoreError> {
        let mut command = redis::cmd("ZSCORE");
        command
            .arg(self.store.tagged(&job.tag, "inflight"))
            .arg(job.id.as_str());
        let score: Option<f64> = self.query("zscore", &command).await?;
        // Scores are whole microseconds written by `admit.lua`.
        Ok(score.map(|score| score as u64))
    }

    /// Takes or renews the lease for `ttl`; false when another replica holds it.
    async fn lease(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(self.lease_key())
            .arg("take")
            .arg(replica)
            .arg(millis(ttl));
        let mut connection = self.store.connection();
        let held: i64 = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(held == 1)
    }

    /// Gives the lease up, if this replica holds it.
    async fn resign(&self, replica: &str) -> Result<(), StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation.key(self.lease_key()).arg("give").arg(replica).arg(0);
        let mut connection = self.store.connection();
        self.store
            .timed(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }
}

/// `<tag> <app> <id>`: none of the three contains a space (hex; plain segments; a UUID).
fn member(job: &Job) -> String {
    format!("{} {} {}", job.tag, job.app, job.id)
}

/// The job a member names, re-checked as if it came from outside.
fn parse_member(raw: &str) -> Option<Job> {
    let mut parts = raw.split(' ');
    let (tag, app, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Job {
        tag: tag.to_owned(),
        app: AppId::from_segments(&app.split('/').collect::<Vec<_>>()).ok()?,
        id: FalRequestId::parse(id).ok()?,
    })
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
        self.release(&admission.tag, reservation, Some(request_id.as_str()), None)
            .await;
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
                if let Err(err) = redis.track(&job, due_us / 1000).await {
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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::tests::{app, config, req};
    use super::super::{OpClass, Subject};
    use super::*;
    use crate::redis::RedisConfig;

    /// fal as a test sees it: each job's state by request id, and who was asked.
    #[derive(Default)]
    struct Fal {
        states: Mutex<HashMap<String, JobState>>,
        asked: AtomicUsize,
    }

    impl Fal {
        fn set(&self, id: &FalRequestId, state: JobState) {
            lock(&self.states).insert(id.as_str().to_owned(), state);
        }

        fn asked(&self) -> usize {
            self.asked.swap(0, Ordering::SeqCst)
        }
    }

    impl JobStatus for Fal {
        fn status(&self, _app: &AppId, id: &FalRequestId) -> impl Future<Output = JobState> + Send {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let state = lock(&self.states)
                .get(id.as_str())
                .copied()
                .unwrap_or(JobState::Unknown);
            std::future::ready(state)
        }
    }

    const CAROL: Subject<'static> = Subject {
        principal: "iss|carol",
        tier: "free",
    };

    /// 2025-01-01T00:00:00Z plus `seconds`.
    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600 + seconds)
    }

    fn redis_limiter(prefix: &str) -> Limiter {
        let store = RedisStore::connect(&RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 500,
            key_prefix: prefix.into(),
        })
        .unwrap();
        Limiter::new(config(), Some(store)).unwrap()
    }

    /// Fills CAROL's two slots (tier `free`) with jobs 1 and 2 started at `start`.
    async fn two_jobs(limiter: &Limiter, start: SystemTime) {
        for n in [1, 2] {
            let admission = limiter.admit_at(&CAROL, OpClass::Submit, None, 1, start).await.unwrap();
            limiter.job_started_at(&admission, &app(), &req(n), start).await;
        }
    }

    async fn full(limiter: &Limiter, now: SystemTime) -> bool {
        let refused = limiter.precheck_at(&CAROL, OpClass::Submit, None, now).await;
        refused.is_err_and(|err| err.code() == "concurrency_limited")
    }

    /// Jobs nobody polled are asked about once idle, and only those fal says ended are freed.
    async fn ended_jobs_free_their_slots(limiter: &Limiter, start: SystemTime, later: impl Fn(u64) -> SystemTime) {
        let fal = Fal::default();
        two_jobs(limiter, start).await;
        assert!(full(limiter, later(0)).await);
        fal.set(&req(1), JobState::Ended);
        fal.set(&req(2), JobState::Running);
        assert_eq!(
            limiter.reconcile_once_at(&fal, later(29)).await,
            Pass::Ran { asked: 0, freed: 0 },
            "asked before reconcile_idle_ms"
        );
        assert_eq!(fal.asked(), 0);
        assert_eq!(
            limiter.reconcile_once_at(&fal, later(31)).await,
            Pass::Ran { asked: 2, freed: 1 }
        );
        assert!(!full(limiter, later(31)).await, "the ended job still holds its slot");
        // The running job is asked about again only after another idle period.
        assert_eq!(
            limiter.reconcile_once_at(&fal, later(40)).await,
            Pass::Ran { asked: 0, freed: 0 }
        );
        fal.set(&req(2), JobState::Ended);
        assert_eq!(
            limiter.reconcile_once_at(&fal, later(62)).await,
            Pass::Ran { asked: 1, freed: 1 }
        );
        // Nothing is left to ask about.
        assert_eq!(
            limiter.reconcile_once_at(&fal, later(200)).await,
            Pass::Ran { asked: 0, freed: 0 }
        );
    }

    #[tokio::test]
    async fn in_process_a_job_that_ended_unobserved_frees_its_slot_in_one_pass() {
        let limiter = Limiter::new(config(), None).unwrap();
        ended_jobs_free_their_slots(&limiter, at(0), at).await;
    }

    #[tokio::test]
    async fn with_redis_a_job_that_ended_unobserved_frees_its_slot_in_one_pass() {
        let limiter = redis_limiter(&format!("test-{}", uuid::Uuid::new_v4()));
        // Redis times the slots itself: run the test's clock from now.
        let start = SystemTime::now();
        ended_jobs_free_their_slots(&limiter, start, |s| start + Duration::from_secs(s)).await;
    }

    #[tokio::test]
    async fn a_job_a_poll_saw_end_or_whose_slot_expired_is_dropped_without_asking_fal() {
        let limiter = Limiter::new(config(), None).unwrap();
        let fal = Fal::default();
        two_jobs(&limiter, at(0)).await;
        limiter.job_finished(&CAROL, &app(), &req(1)).await;
        assert_eq!(
            limiter.reconcile_once_at(&fal, at(31)).await,
            Pass::Ran { asked: 1, freed: 0 }
        );
        // Past inflight_ttl_seconds the slot is gone anyway: the index forgets it unasked.
        assert_eq!(
            limiter.reconcile_once_at(&fal, at(3700)).await,
            Pass::Ran { asked: 0, freed: 0 }
        );
        assert!(lock(&limiter.jobs.memory).is_empty());
        assert_eq!(fal.asked(), 1);
    }

    #[tokio::test]
    async fn a_pass_asks_at_most_reconcile_batch_jobs_and_none_when_off() {
        let mut config = config();
        config.reconcile_batch = 1;
        let limiter = Limiter::new(config.clone(), None).unwrap();
        let fal = Fal::default();
        two_jobs(&limiter, at(0)).await;
        assert_eq!(
            limiter.reconcile_once_at(&fal, at(31)).await,
            Pass::Ran { asked: 1, freed: 0 }
        );
        assert_eq!(
            limiter.reconcile_once_at(&fal, at(31)).await,
            Pass::Ran { asked: 1, freed: 0 }
        );
        config.reconcile_interval_ms = 0;
        let off = limiter.reconfigured(config).unwrap();
        assert_eq!(off.reconcile_once_at(&fal, at(100)).await, Pass::Off);
        assert_eq!(fal.asked(), 2);
    }

    #[tokio::test]
    async fn two_replicas_on_one_redis_run_one_reconciler_the_lease_holder() {
        let prefix = format!("test-{}", uuid::Uuid::new_v4());
        let (a, b) = (redis_limiter(&prefix), redis_limiter(&prefix));
        let fal = Fal::default();
        let start = SystemTime::now();
        two_jobs(&a, start).await;
        fal.set(&req(1), JobState::Ended);
        fal.set(&req(2), JobState::Ended);
        let later = start + Duration::from_secs(31);
        assert_eq!(a.reconcile_once_at(&fal, later).await, Pass::Ran { asked: 2, freed: 2 });
        assert_eq!(b.reconcile_once_at(&fal, later).await, Pass::Standby);
        assert_eq!(
            a.reconcile_once_at(&fal, later).await,
            Pass::Ran { asked: 0, freed: 0 },
            "renewed"
        );
        assert_eq!(b.reconcile_once_at(&fal, later).await, Pass::Standby);
        assert_eq!(fal.asked(), 2);
        // The holder drains: the other replica takes over at its next pass.
        a.resign().await;
        assert_eq!(b.reconcile_once_at(&fal, later).await, Pass::Ran { asked: 0, freed: 0 });
        assert_eq!(a.reconcile_once_at(&fal, later).await, Pass::Standby);
    }

    /// fal answering one status call at a time, each taking `step` of time: the limiter's
    /// clock moves on by `step`, and so does the lease in Redis (its TTL shortened as real
    /// time would, the key gone once it runs out).
    struct SlowFal {
        clock: crate::clock::ManualClock,
        store: RedisStore,
        lease_key: String,
        step: Duration,
        one_at_a_time: tokio::sync::Mutex<()>,
    }

    impl JobStatus for SlowFal {
        async fn status(&self, _app: &AppId, _id: &FalRequestId) -> JobState {
            let _turn = self.one_at_a_time.lock().await;
            self.clock.advance(self.step);
            let mut redis = self.store.connection();
            let left: i64 = redis::cmd("PTTL")
                .arg(&self.lease_key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let step = i64::try_from(self.step.as_millis()).unwrap();
            let aged = match left - step {
                left if left > 0 => redis::cmd("PEXPIRE").arg(&self.lease_key).arg(left).clone(),
                _ => redis::cmd("DEL").arg(&self.lease_key).clone(),
            };
            let _: i64 = aged.query_async(&mut redis).await.unwrap();
            JobState::Running
        }
    }

    /// Issue 20: a pass slower than the lease (four status calls of one interval each, the
    /// lease three intervals) renews it as it goes, so no other replica takes over mid-pass.
    #[tokio::test]
    async fn a_pass_longer_than_the_lease_keeps_it() {
        let prefix = format!("test-{}", uuid::Uuid::new_v4());
        let clock = crate::clock::ManualClock::new();
        let store = RedisStore::connect(&RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 500,
            key_prefix: prefix.clone(),
        })
        .unwrap();
        let a = Limiter::with_clock(config(), Some(store.clone()), clock.clock()).unwrap();
        let b = redis_limiter(&prefix);
        let start = SystemTime::now();
        let dave = Subject {
            principal: "iss|dave",
            tier: "free",
        };
        for (n, who) in [(1, &CAROL), (2, &CAROL), (3, &dave), (4, &dave)] {
            let admission = a.admit_at(who, OpClass::Submit, None, 1, start).await.unwrap();
            a.job_started_at(&admission, &app(), &req(n), start).await;
        }
        let fal = SlowFal {
            clock,
            lease_key: a.jobs.redis.as_ref().unwrap().lease_key(),
            store,
            step: a.reconcile_interval().unwrap(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        };
        let later = start + Duration::from_secs(31);
        assert_eq!(a.reconcile_once_at(&fal, later).await, Pass::Ran { asked: 4, freed: 0 });
        assert_eq!(
            b.reconcile_once_at(&Fal::default(), later).await,
            Pass::Standby,
            "the lease lapsed during the pass"
        );
    }

    #[test]
    fn a_batch_of_zero_is_refused() {
        let mut config = config();
        config.reconcile_batch = 0;
        let err = Limiter::new(config, None).err().unwrap();
        assert!(err.to_string().contains("limits.reconcile_batch"), "{err}");
    }

    #[test]
    fn index_members_round_trip_and_foreign_members_are_refused() {
        let job = Job {
            tag: "0123abcd".into(),
            app: app(),
            id: req(3),
        };
        assert_eq!(parse_member(&member(&job)), Some(job));
        for bad in [
            "",
            "x fal-ai/flux 00000000-0000-4000-8000-000000000003",
            "0123 fal-ai 00000000-0000-4000-8000-000000000003",
            "0123 fal-ai/flux nope",
            "0123 fal-ai/flux 00000000-0000-4000-8000-000000000003 extra",
        ] {
            assert_eq!(parse_member(bad), None, "{bad:?}");
        }
    }
}
