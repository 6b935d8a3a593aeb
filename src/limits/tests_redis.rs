//! Redis backend tests against the Redis at 127.0.0.1:6379, each under its own key prefix.
//! Two `Limiter`s sharing one Redis stand for two replicas.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::redis::SlotOp;
use super::tests::{app, config, remaining, req};
use super::*;
use crate::error::OnTheWire;
use crate::redis::chaos::ChaosProxy;
use crate::redis::RedisConfig;

const REDIS: &str = "127.0.0.1:6379";

/// The store timeout of the replicas that count: so long that a slow answer on a loaded machine
/// only slows the test, and never turns into a refusal that changes a count.
const PATIENT_MS: u64 = 30_000;
/// The store timeout behind the chaos proxy, where a cut Redis must fail calls promptly.
const CUT_MS: u64 = 200;

fn store(addr: &str, prefix: &str, timeout_ms: u64) -> RedisStore {
    // The shared Redis (or the cluster the tests run on), or a chaos proxy in front of it.
    let config = match addr {
        REDIS => RedisConfig::for_tests(timeout_ms, prefix),
        _ => RedisConfig::single(format!("redis://{addr}")).with(timeout_ms, prefix),
    };
    RedisStore::connect(&config).unwrap()
}

/// The example config with every `pro` rate refilling at the slowest rate the config allows
/// (one call a minute): Redis counts rates on its own `TIME`, which no test can stop, so counts
/// are exact only while no refill can happen during a test. Bursts are unchanged.
fn no_refill() -> LimitsConfig {
    let mut config = config();
    let pro = config.tiers.get_mut("pro").unwrap();
    for rate in [&mut pro.submit, &mut pro.poll, &mut pro.cancel, &mut pro.upload] {
        if let Some(Limit::Max(rate)) = rate {
            rate.per_minute = 1;
        }
    }
    config
}

/// Bounds a burst of calls well under the one-minute refill of [`no_refill`], so a count read
/// after it cannot include a refilled call (a machine too slow for that fails here, by name).
async fn within_a_refill<T>(burst: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(45), burst)
        .await
        .expect("the burst ran into the next refill (one call a minute)")
}

pub(super) fn replicas(edit: impl Fn(&mut LimitsConfig)) -> (Arc<Limiter>, Arc<Limiter>) {
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let mut config = no_refill();
    edit(&mut config);
    let replica = || Arc::new(Limiter::new(config.clone(), Some(store(REDIS, &prefix, PATIENT_MS))).unwrap());
    (replica(), replica())
}

pub(super) const ALICE: Subject<'static> = Subject {
    principal: "iss|alice",
    tier: "pro",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_n_admits_exactly_n_across_two_replicas_under_concurrent_load() {
    let (a, b) = replicas(|_| {});
    let calls = (0..200).map(|n| {
        let replica = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { replica.admit(&ALICE, OpClass::Poll, None, 0).await.is_ok() })
    });
    let admitted = within_a_refill(futures_util::future::join_all(calls))
        .await
        .into_iter()
        .filter(|ok| *ok.as_ref().unwrap())
        .count();
    // pro poll: burst 120, and no refill within the burst.
    assert_eq!(admitted, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_credit_quota_is_exact_under_a_concurrent_burst() {
    let (a, b) = replicas(|config| {
        let pro = config.tiers.get_mut("pro").unwrap();
        (pro.submit, pro.max_inflight_jobs, pro.daily_credits) =
            (Some(Limit::Unlimited), Some(Limit::Unlimited), Some(Limit::Max(100)));
    });
    let calls = (0..120).map(|n| {
        let replica = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { replica.admit(&ALICE, OpClass::Submit, None, 3).await })
    });
    let results = within_a_refill(futures_util::future::join_all(calls)).await;
    let admitted = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    assert_eq!(admitted, 33);
    let refused = results.iter().find_map(|r| r.as_ref().unwrap().as_ref().err()).unwrap();
    assert_eq!(refused.code(), "quota_exceeded");
    // One credit is still left: a call costing 1 fits, and only on the shared store.
    b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    assert!(a.admit(&ALICE, OpClass::Submit, None, 1).await.is_err());
}

/// Issue 25: an endpoint's global rate is a second single-slot step beside the caller's own.
/// It admits exactly its burst across two replicas, and every call it refuses is undone on the
/// caller's side exactly: no place in the caller's rate, no request or credit of the day, no
/// slot in flight is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_rate_is_exact_and_the_calls_it_refuses_cost_the_caller_nothing() {
    let (a, b) = replicas(|config| {
        let pro = config.tiers.get_mut("pro").unwrap();
        pro.max_inflight_jobs = Some(Limit::Max(5));
        config.endpoint_rates.get_mut("fal-ai/flux/dev").unwrap().per_minute = 1;
    });
    let calls = (0..10).map(|n| {
        let replica = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { replica.admit(&ALICE, OpClass::Submit, Some("fal-ai/flux/dev"), 2).await })
    });
    let results = within_a_refill(futures_util::future::join_all(calls)).await;
    let admitted = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    // endpoint_rates."fal-ai/flux/dev": burst 4.
    assert_eq!(admitted, 4);
    // A call may also meet the slot of a concurrent call that is being undone (the one round
    // trip of extra strictness): refused, never admitted.
    let codes: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().unwrap().as_ref().err().map(LimitError::code))
        .collect();
    assert!(codes.contains(&"rate_limited"), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|code| ["rate_limited", "concurrency_limited"].contains(code)),
        "{codes:?}"
    );
    let usage = b.usage(&ALICE).await.unwrap();
    let left = |name: &str| usage.iter().find(|state| state.name == name).unwrap().remaining;
    assert_eq!(left("daily-requests"), 2000 - 4, "refused calls kept their request");
    assert_eq!(left("daily-credits"), 5000 - 8, "refused calls kept their credits");
    assert_eq!(left("inflight"), 5 - 4, "refused calls kept their slot");
    // The caller's own submit rate (burst 20) lost exactly the 4 admitted calls.
    let fifth = a.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    let header = fifth
        .headers()
        .into_iter()
        .find(|(name, _)| name == RATELIMIT)
        .unwrap()
        .1;
    assert_eq!(remaining(&header, "submit"), 20 - 5);
    let full = b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap_err();
    assert_eq!(full.code(), "concurrency_limited");
}

/// Issue 25: a restarted or newly promoted Redis has no scripts loaded; an admission still
/// runs (`NOSCRIPT`: the script is loaded, on every primary in Cluster mode, and run again).
#[tokio::test]
async fn an_admission_survives_a_redis_that_lost_its_scripts() {
    let (a, _) = replicas(|_| {});
    a.admit(&ALICE, OpClass::Submit, Some("fal-ai/flux/dev"), 1)
        .await
        .unwrap();
    let store = a.redis.as_ref().unwrap().store().clone();
    let mut connection = store.connection();
    ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let again = a
        .admit(&ALICE, OpClass::Submit, Some("fal-ai/flux/dev"), 1)
        .await
        .unwrap();
    // The second admission counted on the first: the same keys, through reloaded scripts.
    assert_eq!(
        remaining(&again.headers()[1].1, "submit"),
        20 - 2,
        "{:?}",
        again.headers()
    );
}

#[tokio::test]
async fn d61_replica_clock_skew_does_not_change_the_shared_count() {
    let (a, b) = replicas(|_| {});
    let skew = Duration::from_secs(90);
    let burst = async {
        let mut admitted = 0;
        for n in 0..30 {
            let (replica, now) = match n % 2 {
                0 => (&a, SystemTime::now() + skew),
                _ => (&b, SystemTime::now() - skew),
            };
            admitted += usize::from(replica.admit_at(&ALICE, OpClass::Cancel, None, 0, now).await.is_ok());
        }
        admitted
    };
    // pro cancel: burst 20, and no refill within the burst.
    assert_eq!(within_a_refill(burst).await, 20);
}

#[tokio::test]
async fn concurrency_slots_are_shared_and_freed_by_whichever_replica_sees_the_end() {
    let (a, b) = replicas(|config| config.tiers.get_mut("pro").unwrap().max_inflight_jobs = Some(Limit::Max(2)));
    let first = a.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    a.job_started(&first, &app(), &req(1)).await;
    let second = b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    assert_eq!(
        a.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap_err().code(),
        "concurrency_limited"
    );
    b.job_finished(&ALICE, &app(), &req(1)).await;
    a.job_finished(&ALICE, &app(), &req(1)).await;
    a.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    b.refund_inflight(&second).await;
    b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
}

#[tokio::test]
async fn an_idempotency_key_is_honoured_across_replicas() {
    let (a, b) = replicas(|_| {});
    let hash = Idempotency::body_hash(b"{\"prompt\":\"cat\"}");
    let (ia, ib) = (a.idempotency(), b.idempotency());
    assert_eq!(ia.begin("iss|alice", "key-1", &hash).await.unwrap(), IdemState::New);
    assert_eq!(
        ib.begin("iss|alice", "key-1", &hash).await.unwrap(),
        IdemState::InFlight
    );
    ia.complete("iss|alice", "key-1", 200, b"{\"request_id\":\"r1\"}").await;
    let replay = ib.begin("iss|alice", "key-1", &hash).await.unwrap();
    assert_eq!(
        replay,
        IdemState::Replay {
            status: 200,
            body: bytes::Bytes::from_static(b"{\"request_id\":\"r1\"}")
        }
    );
    let other = Idempotency::body_hash(b"{\"prompt\":\"dog\"}");
    assert_eq!(
        ib.begin("iss|alice", "key-1", &other).await.unwrap(),
        IdemState::Mismatch
    );
    assert_eq!(ib.begin("iss|bob", "key-1", &other).await.unwrap(), IdemState::New);
    ib.abandon("iss|bob", "key-1").await;
    assert_eq!(ia.begin("iss|bob", "key-1", &hash).await.unwrap(), IdemState::New);
}

async fn behind_proxy(mode: OnStoreError) -> (ChaosProxy, Limiter) {
    let proxy = ChaosProxy::start(REDIS.parse::<SocketAddr>().unwrap()).await.unwrap();
    let mut config = no_refill();
    config.on_store_error = mode;
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let limiter = Limiter::new(config, Some(store(&proxy.addr.to_string(), &prefix, CUT_MS))).unwrap();
    (proxy, limiter)
}

async fn until_ready(limiter: &Limiter) {
    for _ in 0..100 {
        if limiter.ready().await == Readiness::Ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the limiter did not recover after redis came back");
}

#[tokio::test]
async fn d59_redis_cut_with_deny_is_a_prompt_503_and_recovers_by_itself() {
    let (proxy, limiter) = behind_proxy(OnStoreError::Deny).await;
    limiter.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    assert_eq!(limiter.errors.seen(), 0);
    proxy.cut();
    // Prompt means bounded by the store timeout (200 ms) on every call, never a hang: the bound
    // here only turns a hang into a named failure, it measures nothing.
    for call in 1..=5 {
        let refused = tokio::time::timeout(Duration::from_secs(30), limiter.admit(&ALICE, OpClass::Submit, None, 1))
            .await
            .expect("an admission hung on a cut Redis instead of failing at the store timeout")
            .unwrap_err();
        assert_eq!(
            (refused.status().as_u16(), refused.code()),
            (503, "dependency_unavailable")
        );
        // The refusal is the store-error path's (`deny`): one store error per call, no more.
        assert_eq!(limiter.errors.seen(), call);
    }
    assert_eq!(limiter.ready().await, Readiness::Unavailable);
    proxy.restore();
    until_ready(&limiter).await;
    limiter.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
}

/// Issue 25: with `allow`, a rate-only call passes unmetered while Redis is down (never counted
/// in this replica's memory, which would multiply the limit by the replica count), and a call
/// with money-like state (pro submits: a day quota and a jobs cap) is refused 503 anyway.
#[tokio::test]
async fn d59_redis_cut_with_allow_lets_rates_through_unmetered_and_fails_money_closed() {
    let (proxy, limiter) = behind_proxy(OnStoreError::Allow).await;
    limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    proxy.cut();
    let now = SystemTime::now();
    let mut admitted = 0;
    for _ in 0..40 {
        admitted += usize::from(limiter.admit_at(&ALICE, OpClass::Cancel, None, 0, now).await.is_ok());
    }
    // Pro cancel burst is 20: all 40 pass, none of them counted anywhere.
    assert_eq!(admitted, 40);
    for class in [OpClass::Submit, OpClass::Upload] {
        let refused = limiter.admit(&ALICE, class, None, 1).await.unwrap_err();
        assert_eq!(
            (refused.status().as_u16(), refused.code()),
            (503, "dependency_unavailable")
        );
    }
    assert_eq!(
        limiter.usage(&ALICE).await.unwrap_err().code(),
        "dependency_unavailable"
    );
    assert_eq!(limiter.ready().await, Readiness::Degraded);
    proxy.restore();
    until_ready(&limiter).await;
    // Back on Redis, which saw one call before the cut and none during it.
    let admission = limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    let left = remaining(&admission.headers()[1].1, "cancel");
    assert_eq!(left, 18);
}

#[tokio::test]
async fn a_precheck_on_redis_consumes_nothing_and_sees_the_other_replicas_spend() {
    let (a, b) = replicas(|_| {});
    for _ in 0..50 {
        a.precheck(&ALICE, OpClass::Cancel, None).await.unwrap();
    }
    // pro cancel: burst 20, shared.
    for n in 0..20 {
        let replica = if n % 2 == 0 { &a } else { &b };
        replica.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    }
    assert_eq!(
        b.precheck(&ALICE, OpClass::Cancel, None).await.unwrap_err().code(),
        "rate_limited"
    );
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    for _ in 0..10 {
        a.precheck_unauthenticated(ip).await.unwrap();
    }
    // burst 2, shared.
    a.admit_unauthenticated(ip).await.unwrap();
    b.admit_unauthenticated(ip).await.unwrap();
    assert_eq!(b.precheck_unauthenticated(ip).await.unwrap_err().code(), "rate_limited");
}

#[tokio::test]
async fn a_precheck_on_redis_counts_jobs_in_flight_without_reserving() {
    let (a, b) = replicas(|config| config.tiers.get_mut("pro").unwrap().max_inflight_jobs = Some(Limit::Max(1)));
    a.precheck(&ALICE, OpClass::Submit, None).await.unwrap();
    a.precheck(&ALICE, OpClass::Submit, None).await.unwrap();
    let first = b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    assert_eq!(
        a.precheck(&ALICE, OpClass::Submit, None).await.unwrap_err().code(),
        "concurrency_limited"
    );
    b.refund_inflight(&first).await;
    a.precheck(&ALICE, OpClass::Submit, None).await.unwrap();
}

#[tokio::test]
async fn stream_slots_are_shared_by_replicas_and_freed_when_dropped() {
    let (a, b) = replicas(|config| config.streams_per_caller = 2);
    let on_a = a.open_slot(&ALICE, SlotKind::Stream).await.unwrap();
    let _on_b = b.open_slot(&ALICE, SlotKind::Stream).await.unwrap();
    let refused = a.open_slot(&ALICE, SlotKind::Stream).await.unwrap_err();
    assert_eq!(refused.code(), "concurrency_limited");
    // Another caller, and the other kind, are counted apart.
    let bob = Subject {
        principal: "iss|bob",
        tier: "pro",
    };
    let _bobs = b.open_slot(&bob, SlotKind::Stream).await.unwrap();
    let _relay = a.open_slot(&ALICE, SlotKind::Relay).await.unwrap();
    drop(on_a);
    // The keeper task closes the slot on Redis; poll for it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let _again = loop {
        match b.open_slot(&ALICE, SlotKind::Stream).await {
            Ok(slot) => break slot,
            Err(_) if std::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(err) => panic!("the dropped slot was never closed: {err}"),
        }
    };
    assert_eq!(a.open_slots().2, 0, "with Redis, callers are not counted in process");
}

#[tokio::test]
async fn a_dead_replicas_slots_lapse_after_the_slot_ttl() {
    let (a, _) = replicas(|_| {});
    let redis = a.redis.as_ref().unwrap().slots();
    let key = redis.key("test-caller", "streams");
    let ttl = slots::ttl_ms();
    let t0 = micros(SystemTime::now()) / 1000;
    for id in ["s1", "s2"] {
        assert!(redis
            .run(&key, id, SlotOp::Open { max: 2 }, ttl, Some(t0))
            .await
            .unwrap());
    }
    assert!(!redis
        .run(&key, "s3", SlotOp::Open { max: 2 }, ttl, Some(t0 + ttl - 1))
        .await
        .unwrap());
    // s2 is refreshed by its (live) replica; s1's replica died.
    redis
        .run(&key, "s2", SlotOp::Refresh, ttl, Some(t0 + ttl - 1))
        .await
        .unwrap();
    assert!(redis
        .run(&key, "s3", SlotOp::Open { max: 2 }, ttl, Some(t0 + ttl))
        .await
        .unwrap());
    assert!(!redis
        .run(&key, "s4", SlotOp::Open { max: 2 }, ttl, Some(t0 + ttl))
        .await
        .unwrap());
}

/// A TCP proxy to Redis that counts the `PING` commands passing through it.
async fn counting_pings() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let counted = pings.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(REDIS).await else {
                    return;
                };
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut redis_read, mut redis_write) = outbound.into_split();
                let up = async move {
                    // The tail of the last read, so a command split across reads is still seen.
                    let (mut seen, mut buf) = (Vec::new(), vec![0u8; 4096]);
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        let needle = b"$4\r\nPING\r\n";
                        let found = seen.windows(needle.len()).filter(|w| w == needle).count();
                        counted.fetch_add(found, Ordering::SeqCst);
                        let keep = seen.len().min(needle.len() - 1);
                        seen.drain(..seen.len() - keep);
                        if redis_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut redis_read, &mut client_write);
                tokio::select! {
                    () = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, pings)
}

/// Issue 20: `/readyz` is public and unrated; a flood of readiness checks makes one `PING` per
/// `READY_FOR` (time from the injectable clock), not one per check.
#[tokio::test]
async fn a_flood_of_readiness_checks_pings_redis_once_per_interval() {
    use std::sync::atomic::Ordering;
    let (addr, pings) = counting_pings().await;
    let clock = crate::clock::ManualClock::new();
    let limiter = Limiter::with_clock(
        config(),
        Some(store(&addr.to_string(), "ready", PATIENT_MS)),
        clock.clock(),
    )
    .unwrap();
    assert_eq!(limiter.ready().await, Readiness::Ready);
    // The connection may ping on its own while it connects: count from the first answer on.
    let first = pings.load(Ordering::SeqCst);
    assert!(first >= 1, "the first check made no PING");
    let checks = (0..50).map(|_| limiter.ready());
    let answers = futures_util::future::join_all(checks).await;
    assert!(answers.iter().all(|r| *r == Readiness::Ready), "{answers:?}");
    for _ in 0..50 {
        assert_eq!(limiter.ready().await, Readiness::Ready);
    }
    assert_eq!(
        pings.load(Ordering::SeqCst),
        first,
        "PINGs for 100 checks within one interval"
    );
    clock.advance(READY_FOR);
    for _ in 0..50 {
        assert_eq!(limiter.ready().await, Readiness::Ready);
    }
    assert_eq!(
        pings.load(Ordering::SeqCst),
        first + 1,
        "PINGs after the interval passed"
    );
}
