//! The early admission (`limits::early`): one round trip where two were paid, undone exactly.
//! Against the Redis at 127.0.0.1:6379 (or the test cluster), each test under its own prefix.

use std::time::Duration;

use super::tests_redis::{replicas, ALICE};
use super::*;
use crate::error::OnTheWire;

/// What is left of each of ALICE's limits, by policy name.
async fn left(limiter: &Limiter) -> impl Fn(&str) -> u64 {
    let usage = limiter.usage(&ALICE).await.unwrap();
    move |name: &str| usage.iter().find(|state| state.name == name).unwrap().remaining
}

fn round_trips(limiter: &Limiter) -> u64 {
    limiter.redis.as_ref().unwrap().store().round_trips()
}

/// A fixed-price submit: admitted at the precheck.
async fn early_submit(limiter: &Limiter) -> Result<Prechecked, LimitError> {
    limiter
        .precheck_or_admit(&ALICE, OpClass::Submit, None, 1, Some(1))
        .await
}

#[tokio::test]
async fn a_fixed_price_call_is_admitted_in_one_round_trip_at_the_precheck() {
    let (a, _) = replicas(|_| {});
    let before = round_trips(&a);
    let early = early_submit(&a)
        .await
        .unwrap()
        .admitted()
        .expect("admitted early on Redis");
    let admission = early.into_admission();
    assert_eq!(round_trips(&a) - before, 1, "precheck and admission in one round trip");
    assert!(
        admission.reservation.is_some(),
        "pro has a job cap: the submit holds a reservation"
    );
    let left = left(&a).await;
    assert_eq!(left("daily-requests"), 2000 - 1);
    assert_eq!(left("daily-credits"), 5000 - 1);
    assert_eq!(left("inflight"), 10 - 1);
    assert_eq!(left("submit"), 20 - 1);
}

#[tokio::test]
async fn an_undone_early_admission_gives_back_everything_it_took() {
    let (a, b) = replicas(|_| {});
    let early = early_submit(&a).await.unwrap().admitted().unwrap();
    let before = round_trips(&a);
    early.undo(Undo::Everything).await;
    assert_eq!(round_trips(&a) - before, 1);
    // Read on the other replica: the undo is in Redis, not in a's memory.
    let left = left(&b).await;
    assert_eq!(left("daily-requests"), 2000);
    assert_eq!(left("daily-credits"), 5000);
    assert_eq!(left("inflight"), 10);
    assert_eq!(left("submit"), 20, "the call's place in its rate is given back");
}

#[tokio::test]
async fn a_timed_out_body_keeps_its_rate_spent_and_gives_back_the_rest() {
    let (a, b) = replicas(|_| {});
    let early = early_submit(&a).await.unwrap().admitted().unwrap();
    early.undo(Undo::KeepRate).await;
    let left = left(&b).await;
    assert_eq!(left("daily-requests"), 2000);
    assert_eq!(left("daily-credits"), 5000);
    assert_eq!(left("inflight"), 10);
    assert_eq!(left("submit"), 20 - 1, "the rate stays spent");
}

#[tokio::test]
async fn an_early_admission_dropped_unsettled_is_undone() {
    let (a, b) = replicas(|_| {});
    drop(early_submit(&a).await.unwrap().admitted().unwrap());
    // The undo runs on a spawned task: wait for it, bounded.
    let undone = async {
        loop {
            if left(&b).await("inflight") == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), undone)
        .await
        .expect("the dropped early admission was never undone");
    let left = left(&b).await;
    assert_eq!((left("daily-requests"), left("submit")), (2000, 20));
}

#[tokio::test]
async fn an_early_refusal_is_the_admissions_and_consumes_nothing() {
    // pro: 10 jobs in flight. Ten held on the other replica: the early admission is refused.
    let (a, b) = replicas(|_| {});
    for _ in 0..10 {
        b.admit(&ALICE, OpClass::Submit, None, 1).await.unwrap();
    }
    let before = round_trips(&a);
    let refused = early_submit(&a).await.err().expect("refused at the precheck");
    assert_eq!(refused.code(), "concurrency_limited");
    assert_eq!(round_trips(&a) - before, 1);
    let left = left(&b).await;
    assert_eq!((left("daily-requests"), left("submit")), (2000 - 10, 20 - 10));
}

#[tokio::test]
async fn calls_whose_price_or_steps_are_unknown_before_the_body_are_only_checked() {
    let (a, _) = replicas(|_| {});
    // Priced by its input (`model`), with an endpoint-wide rate, or without a fixed price.
    let cases = [
        (
            Some("fal-ai/video-prompt-generator"),
            a.fixed_credits(Some("fal-ai/video-prompt-generator")),
        ),
        (Some("fal-ai/flux/dev"), a.fixed_credits(Some("fal-ai/flux/dev"))),
        (None, None),
    ];
    assert_eq!(cases[0].1, None, "the model field changes the price");
    assert_eq!(cases[1].1, Some(2));
    for (endpoint, fixed) in cases {
        let prechecked = a
            .precheck_or_admit(&ALICE, OpClass::Submit, endpoint, 1, fixed)
            .await
            .unwrap();
        assert!(matches!(prechecked, Prechecked::Checked), "{endpoint:?}");
    }
    let left = left(&a).await;
    assert_eq!(
        (left("daily-requests"), left("inflight"), left("submit")),
        (2000, 10, 20)
    );
}

#[tokio::test]
async fn in_process_limits_check_at_the_precheck_and_consume_nothing() {
    let limiter = Limiter::new(super::tests::config(), None).unwrap();
    let prechecked = limiter
        .precheck_or_admit(&ALICE, OpClass::Submit, None, 1, Some(1))
        .await
        .unwrap();
    assert!(matches!(prechecked, Prechecked::Checked));
    let left = left(&limiter).await;
    assert_eq!(
        (left("daily-requests"), left("inflight"), left("submit")),
        (2000, 10, 20)
    );
}

/// A price is fixed when the input cannot change it: no `field` rule, or a rule whose every
/// value costs what the endpoint costs; a value priced otherwise makes it the input's. No
/// endpoint (a status, a cancel) costs nothing; an endpoint not listed costs the default.
#[test]
fn a_price_is_fixed_unless_a_value_of_its_field_is_priced_otherwise() {
    let mut config = super::tests::config();
    let rule = |values: &[(&str, u64)]| super::config::EndpointCredits {
        cost: 3,
        field: Some("model".into()),
        values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    config
        .credits
        .endpoints
        .insert("fal-ai/alike".into(), rule(&[("a", 3), ("b", 3)]));
    config
        .credits
        .endpoints
        .insert("fal-ai/unlike".into(), rule(&[("a", 3), ("b", 4)]));
    config.credits.endpoints.insert("fal-ai/novalues".into(), rule(&[]));
    let limiter = Limiter::new(config, None).unwrap();
    assert_eq!(limiter.fixed_credits(Some("fal-ai/alike")), Some(3));
    assert_eq!(limiter.fixed_credits(Some("fal-ai/novalues")), Some(3));
    assert_eq!(limiter.fixed_credits(Some("fal-ai/unlike")), None);
    assert_eq!(limiter.fixed_credits(Some("fal-ai/video-prompt-generator")), None);
    assert_eq!(limiter.fixed_credits(Some("fal-ai/flux/dev")), Some(2));
    assert_eq!(limiter.fixed_credits(Some("fal-ai/unlisted")), Some(1));
    assert_eq!(limiter.fixed_credits(None), Some(0));
}
