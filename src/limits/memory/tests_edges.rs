//! Edges of the in-process backend that the limiter tests (`limits/tests.rs`) do not pin, each
//! found by mutation testing (`scripts/mutants limits-memory`, see TESTING.md). They drive the
//! store directly with explicit times, so every bound is crossed by exactly one microsecond.

use super::*;
use crate::limits::plan::{InflightPlan, QuotaPlan};
use crate::limits::OpClass;

const TTL_US: u64 = 10_000_000;

fn submit<'a>(tag: &'a str, reservation: &'a str, max: u64) -> Plan<'a> {
    Plan {
        tag,
        class: OpClass::Submit,
        rate: None,
        endpoint: None,
        quota: None,
        inflight: Some(InflightPlan {
            max,
            ttl_us: TTL_US,
            reservation,
        }),
    }
}

fn paid<'a>(tag: &'a str, requests: u64) -> Plan<'a> {
    Plan {
        tag,
        class: OpClass::Submit,
        rate: None,
        endpoint: None,
        quota: Some(QuotaPlan {
            requests: Some(requests),
            credits: None,
            cost: 1,
            day_offset_us: 0,
        }),
        inflight: None,
    }
}

fn granted(outcome: Verdict) -> Granted {
    match outcome {
        Verdict::Admitted(granted) => granted,
        Verdict::Refused(refusal) => panic!("refused: {refusal:?}"),
    }
}

/// The idle expiry cannot be waited for in a test (moka keeps its own clock), so the
/// requirement it encodes is asserted: a caller idle for a whole quota day must still find the
/// day's spend, or a day quota could be reset by pausing for a few hours.
#[test]
fn a_caller_idle_for_a_whole_quota_day_keeps_its_state() {
    let day = Duration::from_secs(24 * 3600);
    assert!(CALLER_IDLE > day, "{CALLER_IDLE:?}");
    assert!(RATE_IDLE >= Duration::from_secs(60), "{RATE_IDLE:?}");
}

/// The daily request quota admits exactly `requests` calls.
#[test]
fn the_day_quota_admits_exactly_its_number_of_requests() {
    let store = MemoryStore::new(16);
    for n in 1..=3 {
        let quota = granted(store.admit(&paid("alice", 3), 1_000)).quota.unwrap();
        assert_eq!(quota.requests, n);
    }
    assert!(matches!(
        store.admit(&paid("alice", 3), 1_000),
        Verdict::Refused(Exceeded::Requests { .. })
    ));
}

/// The count of jobs in flight granted includes the one just admitted.
#[test]
fn the_inflight_count_granted_includes_the_job_just_admitted() {
    let store = MemoryStore::new(16);
    assert_eq!(granted(store.admit(&submit("alice", "r1", 3), 1_000)).inflight, Some(1));
    assert_eq!(granted(store.admit(&submit("alice", "r2", 3), 1_000)).inflight, Some(2));
}

/// A slot started at `t` holds until `t + ttl - 1` and is free at exactly `t + ttl`, for the
/// admission and for the usage read alike.
#[test]
fn a_slot_expires_at_exactly_the_inflight_ttl_for_admission_and_usage() {
    let start = 1_000_000;
    let store = MemoryStore::new(16);
    granted(store.admit(&submit("alice", "r1", 1), start));

    assert_eq!(store.peek("alice", start + TTL_US - 1, TTL_US).inflight, 1);
    assert_eq!(store.peek("alice", start + TTL_US, TTL_US).inflight, 0);

    let last_held = start + TTL_US - 1;
    assert!(matches!(
        store.precheck(&submit("alice", "r2", 1), last_held),
        Verdict::Refused(Exceeded::Inflight { count: 1 })
    ));
    assert_eq!(
        granted(store.admit(&submit("alice", "r2", 1), start + TTL_US)).inflight,
        Some(1)
    );
}

/// `tracked_callers` counts the callers the store holds (the gauge of the caller bound).
#[test]
fn tracked_callers_counts_each_caller_once() {
    let store = MemoryStore::new(16);
    for tag in ["alice", "bob", "carol", "alice"] {
        granted(store.admit(&paid(tag, 10), 1_000));
    }
    assert_eq!(store.tracked_callers(), 3);
}
