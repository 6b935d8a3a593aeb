//! Edges of the Redis glue that the replica tests (`limits/tests_redis.rs`) do not pin, found by
//! mutation testing (`scripts/mutants limits-redis`, see TESTING.md): the "none" placeholders
//! the scripts read, and the parsing of their replies. The admissions run against the Redis on
//! 127.0.0.1:6379, each test under its own key prefix.

use super::*;
use crate::limits::plan::{InflightPlan, QuotaPlan};
use crate::redis::RedisConfig;

fn limits() -> RedisLimits {
    let config = RedisConfig::for_tests(500, format!("test-edges-{}", uuid::Uuid::new_v4()));
    RedisLimits::new(RedisStore::connect(&config).unwrap())
}

fn plan<'a>(quota: Option<QuotaPlan>, inflight: Option<InflightPlan<'a>>) -> Plan<'a> {
    Plan {
        tag: "alice",
        class: OpClass::Submit,
        rate: None,
        endpoint: None,
        quota,
        inflight,
    }
}

/// A submit reserving slot `r1` of at most 5, for a minute.
const SUBMIT: InflightPlan<'static> = InflightPlan {
    max: 5,
    ttl_us: 60_000_000,
    reservation: "r1",
};

fn quota(requests: Option<u64>, credits: Option<u64>) -> Option<QuotaPlan> {
    Some(QuotaPlan {
        requests,
        credits,
        cost: 1,
        day_offset_us: 0,
    })
}

fn admitted(outcome: Result<Verdict, StoreError>) -> Granted {
    match outcome.expect("Redis answers") {
        Verdict::Admitted(granted) => granted,
        Verdict::Refused(refusal) => panic!("refused: {refusal:?}"),
    }
}

/// A quota without a request cap is capped by credits alone, and the other way round.
#[tokio::test]
async fn a_quota_left_without_requests_or_credits_is_not_capped_by_them() {
    let redis = limits();
    for n in 1..=3 {
        let granted = admitted(redis.admit(&plan(quota(None, Some(3)), None), Mode::Consume).await);
        assert_eq!(granted.quota.unwrap().credits, n);
    }
    let refused = redis.admit(&plan(quota(None, Some(3)), None), Mode::Consume).await;
    assert!(
        matches!(refused, Ok(Verdict::Refused(Exceeded::Credits { .. }))),
        "{refused:?}"
    );

    let redis = limits();
    for _ in 0..3 {
        admitted(redis.admit(&plan(quota(Some(3), None), None), Mode::Consume).await);
    }
    let refused = redis.admit(&plan(quota(Some(3), None), None), Mode::Consume).await;
    assert!(
        matches!(refused, Ok(Verdict::Refused(Exceeded::Requests { .. }))),
        "{refused:?}"
    );
}

/// A call with no concurrency cap (a poll) is admitted while the caller has jobs in flight.
#[tokio::test]
async fn a_call_without_a_concurrency_cap_ignores_the_jobs_in_flight() {
    let redis = limits();
    assert_eq!(
        admitted(redis.admit(&plan(None, Some(SUBMIT)), Mode::Consume).await).inflight,
        Some(1)
    );
    let poll = admitted(redis.admit(&plan(None, None), Mode::Consume).await);
    assert_eq!(poll.inflight, None);
    assert_eq!(redis.usage("alice", 60_000_000).await.unwrap().inflight, 1);
}

/// A release without a refund leaves the day's spend as it was.
#[tokio::test]
async fn a_release_without_a_refund_keeps_the_spend() {
    let redis = limits();
    admitted(
        redis
            .admit(&plan(quota(Some(5), None), Some(SUBMIT)), Mode::Consume)
            .await,
    );
    redis.release("alice", "r1", None, None).await.unwrap();
    let spent = redis.usage("alice", 60_000_000).await.unwrap();
    assert_eq!((spent.requests, spent.inflight), (1, 0));
}

#[test]
fn an_admission_reply_is_read_field_by_field() {
    let reply = [0, 11, 12, 13, 14, 20_000, 2, 7, 99, 3];
    let Verdict::Admitted(granted) = parse_admit(&reply).unwrap() else {
        panic!("admitted")
    };
    assert_eq!(
        granted.rate,
        Some(Gauge {
            remaining: 11,
            reset_us: 12
        })
    );
    assert_eq!(
        granted.endpoint,
        Some(Gauge {
            remaining: 13,
            reset_us: 14
        })
    );
    let quota = granted.quota.unwrap();
    assert_eq!(
        (quota.day, quota.requests, quota.credits, quota.reset_us),
        (20_000, 2, 7, 99)
    );
    assert_eq!(granted.inflight, Some(3));

    // -1: the limit does not apply to this call.
    let Verdict::Admitted(none) = parse_admit(&[0, -1, -1, -1, -1, -1, -1, -1, -1, -1]).unwrap() else {
        panic!("admitted")
    };
    assert_eq!(none, Granted::default());
}

#[test]
fn each_refusal_code_is_its_own_refusal() {
    for (code, refusal) in [
        (1, Exceeded::Rate { retry_us: 5 }),
        (2, Exceeded::Endpoint { retry_us: 5 }),
        (3, Exceeded::Requests { reset_us: 5 }),
        (4, Exceeded::Credits { reset_us: 5 }),
        (5, Exceeded::Inflight { count: 5 }),
    ] {
        assert_eq!(
            parse_admit(&[code, 5]).unwrap(),
            Verdict::Refused(refusal),
            "code {code}"
        );
    }
    for bad in [&[][..], &[0, 1], &[6, 5], &[1], &[1, -5]] {
        assert!(matches!(parse_admit(bad), Err(StoreError::Protocol(_))), "{bad:?}");
    }
}

#[test]
fn a_usage_reply_is_exactly_twelve_numbers_read_in_order() {
    let reply = [1_000, 11, 12, 13, 14, 15, 20_000, 2, 7, 3, 1, 4];
    let spent = parse_usage(&reply).unwrap();
    assert_eq!(
        spent,
        Spent {
            now_us: 1_000,
            tats: [11, 12, 13, 14, 15],
            day: 20_000,
            requests: 2,
            credits: 7,
            inflight: 3,
            streams: 1,
            relays: 4,
        }
    );
    assert!(matches!(parse_usage(&reply[..11]), Err(StoreError::Protocol(_))));
    let mut longer = reply.to_vec();
    longer.push(0);
    assert!(matches!(parse_usage(&longer), Err(StoreError::Protocol(_))));
    let mut negative = reply;
    negative[7] = -1;
    assert!(matches!(parse_usage(&negative), Err(StoreError::Protocol(_))));
}
