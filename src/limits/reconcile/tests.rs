use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::tests::{app, config, req};
use super::super::{OpClass, Subject};
use super::*;
use crate::error::OnTheWire;
use std::collections::HashMap;

use crate::redis::{RedisConfig, RedisStore};

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
    let store = RedisStore::connect(&RedisConfig::for_tests(500, prefix)).unwrap();
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
    let store = RedisStore::connect(&RedisConfig::for_tests(500, prefix.clone())).unwrap();
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

/// The reconciler's task, one tick at a time (`app` runs it): on, a pass runs and the next
/// tick is an interval away; off, nothing is asked and it looks again after `OFF_RECHECK`; once
/// the drain began, the task ends.
#[tokio::test]
async fn a_tick_runs_a_pass_when_on_rechecks_when_off_and_ends_with_the_drain() {
    let clock = crate::clock::ManualClock::new();
    let limiter = Limiter::with_clock(config(), None, clock.clock()).unwrap();
    let fal = Fal::default();
    two_jobs(&limiter, clock.clock().now()).await;
    clock.advance(Duration::from_secs(31));
    assert_eq!(tick(&limiter, &fal, false).await, Some(Duration::from_secs(15)));
    assert_eq!(fal.asked(), 2, "the tick ran a pass");
    // The jobs are due again: only an enabled, undrained tick asks about them.
    clock.advance(Duration::from_secs(31));
    assert_eq!(tick(&limiter, &fal, true).await, None);
    assert_eq!(fal.asked(), 0, "a draining tick runs no pass");
    let mut off = config();
    off.reconcile_interval_ms = 0;
    let off = limiter.reconfigured(off).unwrap();
    assert_eq!(tick(&off, &fal, false).await, Some(OFF_RECHECK));
    assert_eq!(fal.asked(), 0);
}

/// In process, the index holds at most four jobs per tracked caller (`max_tracked_callers`):
/// past it a job is not indexed (its slot frees at its TTL), at it the job still is.
#[tokio::test]
async fn the_in_process_index_holds_exactly_four_jobs_per_tracked_caller() {
    let mut config = config();
    config.max_tracked_callers = 1;
    let limiter = Limiter::new(config, None).unwrap();
    let principals = ["iss|1", "iss|2", "iss|3", "iss|4", "iss|5"];
    for (n, principal) in (1..).zip(principals) {
        let who = Subject {
            principal,
            tier: "free",
        };
        let admission = limiter.admit_at(&who, OpClass::Submit, None, 1, at(0)).await.unwrap();
        assert!(admission.reservation.is_some());
        limiter.job_started_at(&admission, &app(), &req(n), at(0)).await;
        assert_eq!(lock(&limiter.jobs.memory).len(), usize::from(n.min(4)), "after job {n}");
    }
}

/// A slot started exactly `inflight_ttl_seconds` ago has expired (as admission counts it): the
/// job is dropped unasked; a microsecond earlier it is still held, and fal is asked.
#[tokio::test]
async fn a_slot_expires_for_the_reconciler_exactly_at_the_inflight_ttl() {
    let ttl = Duration::from_secs(3600);
    for (now, asked) in [(at(0) + ttl, 0), (at(0) + ttl - Duration::from_micros(1), 2)] {
        let limiter = Limiter::new(config(), None).unwrap();
        let fal = Fal::default();
        two_jobs(&limiter, at(0)).await;
        assert_eq!(
            limiter.reconcile_once_at(&fal, now).await,
            Pass::Ran { asked, freed: 0 },
            "{now:?}"
        );
        assert_eq!(fal.asked(), asked);
    }
}

/// The lease lasts three intervals (45 s here) and a pass renews it as an answer arrives once an
/// interval (15 s) has passed since the last renewal, not before: an answer that took 2 s
/// leaves it 2 s shorter, one that took exactly an interval renews it.
#[tokio::test]
async fn the_lease_lasts_three_intervals_and_is_renewed_once_an_interval_passed() {
    for (step, left) in [(2, 43_000), (15, 45_000)] {
        let prefix = format!("test-{}", uuid::Uuid::new_v4());
        let clock = crate::clock::ManualClock::new();
        let store = RedisStore::connect(&RedisConfig::for_tests(500, prefix.clone())).unwrap();
        let a = Limiter::with_clock(config(), Some(store.clone()), clock.clock()).unwrap();
        let start = SystemTime::now();
        let admission = a.admit_at(&CAROL, OpClass::Submit, None, 1, start).await.unwrap();
        a.job_started_at(&admission, &app(), &req(1), start).await;
        let lease_key = a.jobs.redis.as_ref().unwrap().lease_key();
        let fal = SlowFal {
            clock,
            lease_key: lease_key.clone(),
            store: store.clone(),
            step: Duration::from_secs(step),
            one_at_a_time: tokio::sync::Mutex::new(()),
        };
        let later = start + Duration::from_secs(31);
        assert_eq!(a.reconcile_once_at(&fal, later).await, Pass::Ran { asked: 1, freed: 0 });
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&lease_key)
            .query_async(&mut store.connection())
            .await
            .unwrap();
        assert!(
            (left - 1000..=left).contains(&pttl),
            "an answer after {step} s: the lease has {pttl} ms left, not about {left}"
        );
    }
}

async fn members(store: &RedisStore, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut store.connection())
        .await
        .unwrap()
}

/// With Redis the index is the sorted set `<prefix>:{reconcile}:jobs` (the module docs), one per
/// prefix: a pass under another prefix never touches it, a job leaves it once a poll saw its end
/// or a pass freed it, and a member falgate did not write is dropped.
#[tokio::test]
async fn on_redis_the_index_holds_the_prefixes_jobs_in_flight_only() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let a = redis_limiter(&prefix);
    let elsewhere = redis_limiter(&format!("test-{}", uuid::Uuid::new_v4()));
    let store = RedisStore::connect(&RedisConfig::for_tests(500, prefix.clone())).unwrap();
    let index = format!("{prefix}:{{reconcile}}:jobs");
    let fal = Fal::default();
    let start = SystemTime::now();
    two_jobs(&a, start).await;
    assert_eq!(members(&store, &index).await.len(), 2);
    let later = start + Duration::from_secs(31);
    assert_eq!(
        elsewhere.reconcile_once_at(&fal, later).await,
        Pass::Ran { asked: 0, freed: 0 }
    );
    assert_eq!(
        members(&store, &index).await.len(),
        2,
        "another prefix's pass took them"
    );
    a.job_finished(&CAROL, &app(), &req(1)).await;
    let left = members(&store, &index).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(req(2).as_str()), "{left:?}");
    let _: i64 = redis::cmd("ZADD")
        .arg(&index)
        .arg(0)
        .arg("not a job")
        .query_async(&mut store.connection())
        .await
        .unwrap();
    fal.set(&req(2), JobState::Ended);
    assert_eq!(a.reconcile_once_at(&fal, later).await, Pass::Ran { asked: 1, freed: 1 });
    assert_eq!(members(&store, &index).await, Vec::<String>::new());
}
