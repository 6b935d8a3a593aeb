//! In-process backend tests, with the clock passed in.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::clock::ManualClock;
use crate::error::OnTheWire;

/// The app of the test jobs.
pub(super) fn app() -> crate::fal::AppId {
    crate::fal::AppId::from_segments(&["fal-ai", "flux"]).unwrap()
}

/// Test job `n`'s request id.
pub(super) fn req(n: u8) -> crate::fal::FalRequestId {
    crate::fal::FalRequestId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap()
}

pub(super) const EXAMPLE: &str = r#"
default_tier = "free"
trusted_proxies = ["10.0.0.0/8"]
idempotency_ttl_seconds = 86400
on_store_error = "deny"

[tiers.free]
submit = { burst = 3, per_minute = 6 }
poll = { burst = 30, per_minute = 120 }
cancel = { burst = 5, per_minute = 20 }
upload = { burst = 5, per_minute = 10 }
max_inflight_jobs = 2
daily_requests = 50
daily_credits = 10

[tiers.pro]
submit = { burst = 20, per_minute = 60 }
poll = { burst = 120, per_minute = 600 }
cancel = { burst = 20, per_minute = 60 }
upload = { burst = 20, per_minute = 60 }
max_inflight_jobs = 10
daily_requests = 2000
daily_credits = 5000

[endpoint_rates."fal-ai/flux/dev"]
burst = 4
per_minute = 60

[unauthenticated_ip_rate]
burst = 2
per_minute = 6

[credits]
default_cost = 1

[credits.endpoints."fal-ai/flux/dev"]
cost = 2

[credits.endpoints."fal-ai/video-prompt-generator"]
cost = 1
field = "model"
values = { "anthropic/claude-3.5-sonnet" = 5, "google/gemini-flash-1.5" = 1 }
"#;

pub(super) fn config() -> LimitsConfig {
    toml::from_str(EXAMPLE).unwrap()
}

/// The `r` of policy `name` in a `RateLimit` value, parsed (a prefix match would read `r=10`
/// as `r=1`).
pub(super) fn remaining(value: &HeaderValue, name: &str) -> u64 {
    let value = value.to_str().unwrap();
    let item = value
        .split(", ")
        .find(|item| item.split(';').next() == Some(&format!("\"{name}\"")))
        .unwrap_or_else(|| panic!("no {name} in {value}"));
    item.split(';')
        .find_map(|param| param.strip_prefix("r="))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no r in {item}"))
}

#[test]
fn remaining_reads_the_whole_number() {
    let value = HeaderValue::from_static(r#""submit";r=10;t=3, "daily-credits";r=7;t=9"#);
    assert_eq!(remaining(&value, "submit"), 10);
    assert_eq!(remaining(&value, "daily-credits"), 7);
}

fn limiter() -> Limiter {
    Limiter::new(config(), None).unwrap()
}

/// 2025-01-01T00:00:00Z plus `seconds`.
fn at(seconds: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600) + Duration::from_secs_f64(seconds)
}

const ALICE: Subject<'static> = Subject {
    principal: "iss|alice",
    tier: "free",
};
const BOB: Subject<'static> = Subject {
    principal: "iss|bob",
    tier: "free",
};

async fn poll(limiter: &Limiter, who: &Subject<'_>, now: SystemTime) -> Result<Admission, LimitError> {
    limiter.admit_at(who, OpClass::Poll, None, 0, now).await
}

#[tokio::test]
async fn a_burst_is_admitted_then_429_with_retry_after_and_ratelimit_headers() {
    let limiter = limiter();
    for _ in 0..3 {
        limiter
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
            .await
            .unwrap();
    }
    let ok = limiter.admit_at(&BOB, OpClass::Cancel, None, 0, at(0.0)).await.unwrap();
    assert_eq!(ok.headers()[1].1, r#""cancel";r=4;t=3"#);
    for _ in 3..5 {
        limiter
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
            .await
            .unwrap();
    }
    let refused = limiter
        .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
        .await
        .unwrap_err();
    assert_eq!((refused.status().as_u16(), refused.code()), (429, "rate_limited"));
    let headers = refused.headers();
    assert_eq!(headers[0], (http::header::RETRY_AFTER, HeaderValue::from(3u64)));
    assert_eq!(headers[1].1, r#""cancel";q=5;w=15"#);
    assert_eq!(headers[2].1, r#""cancel";r=0;t=3"#);
}

#[tokio::test]
async fn refused_calls_consume_nothing_so_retries_are_not_counted_twice() {
    let limiter = limiter();
    for _ in 0..5 {
        limiter
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
            .await
            .unwrap();
    }
    for _ in 0..100 {
        assert!(limiter
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(1.0))
            .await
            .is_err());
    }
    limiter
        .admit_at(&ALICE, OpClass::Cancel, None, 0, at(3.0))
        .await
        .unwrap();
    assert!(limiter
        .admit_at(&ALICE, OpClass::Cancel, None, 0, at(3.0))
        .await
        .is_err());
}

#[tokio::test]
async fn d60_window_edge_bursts_never_exceed_burst_plus_rate_in_any_minute() {
    let limiter = limiter();
    let mut admitted = Vec::new();
    for tenth in 0..1200 {
        let t = f64::from(tenth) / 10.0;
        if poll(&limiter, &ALICE, at(59.9 + t / 20.0)).await.is_ok() {
            admitted.push(t / 20.0);
        }
    }
    // 120/min with burst 30: any 60 s window holds at most 30 + 120. The calls span 5.995 s, so
    // the burst and one call per 0.5 s after it: 30 + 11 (at most 12, were the edges inclusive).
    assert!((41..=42).contains(&admitted.len()), "{}", admitted.len());
}

#[tokio::test]
async fn d55_every_token_of_one_principal_shares_one_bucket() {
    let limiter = limiter();
    for _ in 0..3 {
        let who = Subject {
            principal: &String::from("iss|alice"),
            tier: "free",
        };
        limiter.admit_at(&who, OpClass::Submit, None, 1, at(0.0)).await.ok();
    }
    assert!(limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(0.0))
        .await
        .is_err());
}

#[tokio::test]
async fn the_credit_quota_is_403_until_the_utc_day_resets() {
    let limiter = limiter();
    let mut spent = 0;
    let mut now = 0.0;
    while let Ok(admission) = limiter.admit_at(&ALICE, OpClass::Submit, None, 3, at(now)).await {
        limiter.job_finished(&ALICE, &app(), &req(9)).await;
        limiter
            .refund_inflight(&Admission {
                refund: None,
                ..admission
            })
            .await;
        spent += 3;
        now += 20.0;
    }
    assert_eq!(spent, 9);
    let refused = limiter
        .admit_at(&ALICE, OpClass::Submit, None, 3, at(now))
        .await
        .unwrap_err();
    assert_eq!((refused.status().as_u16(), refused.code()), (403, "quota_exceeded"));
    let reset = 86_400 - now as u64;
    assert_eq!(refused.headers()[0].1, HeaderValue::from(reset));
    limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(now))
        .await
        .unwrap();
    limiter
        .admit_at(&ALICE, OpClass::Submit, None, 3, at(86_400.0))
        .await
        .unwrap();
}

#[tokio::test]
async fn d62_polls_and_cancels_never_spend_the_paid_quota() {
    let limiter = limiter();
    for second in 0..60 {
        poll(&limiter, &ALICE, at(f64::from(second))).await.unwrap();
    }
    let admission = limiter
        .admit_at(&ALICE, OpClass::Upload, None, 10, at(60.0))
        .await
        .unwrap();
    assert_eq!(remaining(&admission.headers()[1].1, "daily-requests"), 49);
}

#[tokio::test]
async fn jobs_in_flight_are_capped_and_freed_once_per_request_id() {
    let limiter = limiter();
    let first = limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(0.0))
        .await
        .unwrap();
    limiter.job_started(&first, &app(), &req(1)).await;
    let second = limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(10.0))
        .await
        .unwrap();
    let refused = limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(20.0))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status().as_u16(), refused.code()),
        (429, "concurrency_limited")
    );
    limiter.job_finished(&ALICE, &app(), &req(1)).await;
    limiter.job_finished(&ALICE, &app(), &req(1)).await;
    limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(30.0))
        .await
        .unwrap();
    assert!(limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(40.0))
        .await
        .is_err());
    limiter.refund_inflight(&second).await;
    let third = limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(50.0))
        .await
        .unwrap();
    assert_eq!(remaining(&third.headers()[1].1, "daily-credits"), 7);
}

#[tokio::test]
async fn a_job_never_seen_finishing_frees_its_slot_after_the_inflight_ttl() {
    let limiter = limiter();
    for second in [0.0, 10.0] {
        limiter
            .admit_at(&ALICE, OpClass::Submit, None, 1, at(second))
            .await
            .unwrap();
    }
    assert!(limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(3599.0))
        .await
        .is_err());
    limiter
        .admit_at(&ALICE, OpClass::Submit, None, 1, at(3601.0))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_endpoint_rate_is_shared_by_all_callers() {
    let limiter = limiter();
    let flux = Some("fal-ai/flux/dev");
    for who in [ALICE, ALICE, BOB, BOB] {
        limiter.job_finished(&who, &app(), &req(8)).await;
        let admitted = limiter.admit_at(&who, OpClass::Submit, flux, 2, at(0.0)).await;
        if let Ok(admission) = admitted {
            limiter.refund_inflight(&admission).await;
        }
    }
    let carol = Subject {
        principal: "iss|carol",
        tier: "pro",
    };
    let refused = limiter
        .admit_at(&carol, OpClass::Submit, flux, 2, at(0.0))
        .await
        .unwrap_err();
    assert!(refused.headers()[1].1.to_str().unwrap().starts_with(r#""endpoint""#));
    limiter
        .admit_at(&carol, OpClass::Submit, Some("fal-ai/other"), 1, at(0.0))
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_authentication_is_rate_limited_per_ip_and_per_ipv6_64() {
    let limiter = limiter();
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    limiter
        .admit_unauthenticated_at(ip("2001:db8::1"), at(0.0))
        .await
        .unwrap();
    limiter
        .admit_unauthenticated_at(ip("2001:db8::ffff"), at(0.0))
        .await
        .unwrap();
    let refused = limiter
        .admit_unauthenticated_at(ip("2001:db8::42"), at(0.0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "rate_limited");
    limiter
        .admit_unauthenticated_at(ip("2001:db8:0:1::1"), at(0.0))
        .await
        .unwrap();
    limiter
        .admit_unauthenticated_at(ip("192.0.2.1"), at(0.0))
        .await
        .unwrap();
}

#[tokio::test]
async fn d56_a_flood_of_distinct_callers_stays_within_the_tracked_bound() {
    let mut config = config();
    config.max_tracked_callers = 1_000;
    let limiter = Limiter::new(config, None).unwrap();
    for n in 0..20_000 {
        let principal = format!("iss|{n}");
        let who = Subject {
            principal: &principal,
            tier: "free",
        };
        poll(&limiter, &who, at(0.0)).await.unwrap();
    }
    assert!(limiter.tracked_callers() <= 1_100, "{}", limiter.tracked_callers());
}

#[test]
fn credits_come_from_the_field_value_then_the_endpoint_then_the_default() {
    let limiter = limiter();
    let vpg = "fal-ai/video-prompt-generator";
    assert_eq!(
        limiter.credits_for(vpg, &json!({"model": "anthropic/claude-3.5-sonnet"})),
        5
    );
    assert_eq!(limiter.credits_for(vpg, &json!({"model": "unknown"})), 1);
    assert_eq!(limiter.credits_for(vpg, &json!({})), 1);
    assert_eq!(limiter.credits_for("fal-ai/flux/dev", &json!({"model": "x"})), 2);
    assert_eq!(limiter.credits_for("fal-ai/anything", &json!(null)), 1);
}

#[test]
fn unknown_config_keys_and_a_missing_default_tier_are_refused() {
    assert!(toml::from_str::<LimitsConfig>(&format!("{EXAMPLE}\nburst_per_hour = 3")).is_err());
    let mut config = config();
    config.default_tier = "gold".into();
    assert!(Limiter::new(config, None).is_err());
}

#[test]
fn a_client_token_may_live_at_most_fals_default_of_120_seconds() {
    for (seconds, ok) in [(0, false), (1, true), (120, true), (121, false)] {
        let mut config = config();
        config.client_token_max_seconds = seconds;
        assert_eq!(Limiter::new(config, None).is_ok(), ok, "{seconds}");
    }
}

#[tokio::test]
async fn idempotent_submits_replay_refuse_other_bodies_and_expire() {
    let manual = ManualClock::new();
    let idem = Idempotency::with_clock(Duration::from_secs(600), 100, None, manual.clock());
    let begin = |who, key, hash| idem.begin(who, key, hash);
    assert_eq!(begin("iss|alice", "k1", "h1").await.unwrap(), IdemState::New);
    assert_eq!(begin("iss|alice", "k1", "h1").await.unwrap(), IdemState::InFlight);
    assert_eq!(begin("iss|alice", "k1", "h2").await.unwrap(), IdemState::Mismatch);
    assert_eq!(begin("iss|bob", "k1", "h2").await.unwrap(), IdemState::New);
    // Completed late in its pending time: the answer is kept `ttl` from its completion.
    manual.advance(Duration::from_secs(200));
    idem.complete("iss|alice", "k1", 200, b"{\"request_id\":\"r\"}").await;
    let replay = IdemState::Replay {
        status: 200,
        body: bytes::Bytes::from_static(b"{\"request_id\":\"r\"}"),
    };
    assert_eq!(begin("iss|alice", "k1", "h1").await.unwrap(), replay);
    manual.advance(Duration::from_secs(599));
    assert!(idem.answered("iss|alice", "k1").await);
    assert_eq!(
        begin("iss|alice", "k1", "h1").await.unwrap(),
        replay,
        "kept for its ttl"
    );
    manual.advance(Duration::from_secs(1));
    assert!(!idem.answered("iss|alice", "k1").await);
    assert_eq!(begin("iss|alice", "k1", "h2").await.unwrap(), IdemState::New, "expired");
}

/// A submit that never completes (its replica died) frees its key after `PENDING_TTL`.
#[tokio::test]
async fn a_pending_idempotency_key_is_freed_after_the_pending_ttl() {
    let manual = ManualClock::new();
    let idem = Idempotency::with_clock(Duration::from_secs(86_400), 100, None, manual.clock());
    assert_eq!(idem.begin("iss|alice", "k", "h").await.unwrap(), IdemState::New);
    manual.advance(PENDING_TTL - Duration::from_micros(1));
    assert_eq!(idem.begin("iss|alice", "k", "h").await.unwrap(), IdemState::InFlight);
    manual.advance(Duration::from_micros(1));
    assert_eq!(idem.begin("iss|alice", "k", "h").await.unwrap(), IdemState::New);
}

/// The limiter reads its clock: a rate refills as the injected clock moves, not the machine's.
#[tokio::test]
async fn the_in_process_limits_run_on_the_injected_clock() {
    let manual = ManualClock::new();
    let limiter = Limiter::with_clock(config(), None, manual.clock()).unwrap();
    // free: cancel burst 5, 20 per minute (one every 3 s).
    for _ in 0..5 {
        limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    }
    assert!(limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.is_err());
    assert!(limiter.precheck(&ALICE, OpClass::Cancel, None).await.is_err());
    manual.advance(Duration::from_millis(2_999));
    assert!(limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.is_err());
    manual.advance(Duration::from_millis(1));
    limiter.precheck(&ALICE, OpClass::Cancel, None).await.unwrap();
    limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    assert!(limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.is_err());
    // The failed-auth rate per IP (burst 2, 6 per minute) too.
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    limiter.admit_unauthenticated(ip).await.unwrap();
    limiter.admit_unauthenticated(ip).await.unwrap();
    assert!(limiter.precheck_unauthenticated(ip).await.is_err());
    manual.advance(Duration::from_secs(10));
    limiter.precheck_unauthenticated(ip).await.unwrap();
}

#[tokio::test]
async fn a_precheck_consumes_nothing_and_refuses_what_admit_would() {
    let limiter = limiter();
    limiter.precheck_at(&BOB, OpClass::Cancel, None, at(0.0)).await.unwrap();
    assert_eq!(limiter.tracked_callers(), 0, "a precheck grew the caller cache");
    limiter
        .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
        .await
        .unwrap();
    for _ in 0..100 {
        limiter
            .precheck_at(&ALICE, OpClass::Cancel, None, at(0.0))
            .await
            .unwrap();
    }
    for _ in 1..5 {
        limiter
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
            .await
            .unwrap();
    }
    let refused = limiter
        .precheck_at(&ALICE, OpClass::Cancel, None, at(0.0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.headers()[0].1, HeaderValue::from(3u64));
    limiter.precheck_at(&BOB, OpClass::Cancel, None, at(0.0)).await.unwrap();
}

#[tokio::test]
async fn a_precheck_assumes_the_cheapest_price_and_counts_jobs_in_flight() {
    let limiter = limiter();
    let vpg = Some("fal-ai/video-prompt-generator");
    assert_eq!(limiter.min_credits(vpg), 1);
    assert_eq!(limiter.min_credits(Some("fal-ai/flux/dev")), 2);
    assert_eq!(limiter.min_credits(Some("fal-ai/unlisted")), 1);
    assert_eq!(limiter.min_credits(None), 0);
    // free: 10 credits, 2 jobs in flight.
    let first = limiter
        .admit_at(&ALICE, OpClass::Submit, vpg, 5, at(0.0))
        .await
        .unwrap();
    limiter.job_started(&first, &app(), &req(1)).await;
    limiter
        .admit_at(&ALICE, OpClass::Submit, vpg, 4, at(10.0))
        .await
        .unwrap();
    let full = limiter
        .precheck_at(&ALICE, OpClass::Submit, vpg, at(20.0))
        .await
        .unwrap_err();
    assert_eq!(full.code(), "concurrency_limited");
    limiter.job_finished(&ALICE, &app(), &req(1)).await;
    // 9 of 10 credits spent: the cheapest call (1) fits, flux (2) does not.
    limiter
        .precheck_at(&ALICE, OpClass::Submit, vpg, at(20.0))
        .await
        .unwrap();
    let poor = limiter
        .precheck_at(&ALICE, OpClass::Submit, Some("fal-ai/flux/dev"), at(20.0))
        .await
        .unwrap_err();
    assert_eq!(poor.code(), "quota_exceeded");
    // The precheck reserved nothing: the one free slot and the last credit are still there.
    limiter
        .admit_at(&ALICE, OpClass::Submit, vpg, 1, at(30.0))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_failed_authentication_precheck_consumes_nothing() {
    let limiter = limiter();
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    for _ in 0..50 {
        limiter.precheck_unauthenticated_at(ip, at(0.0)).await.unwrap();
    }
    limiter.admit_unauthenticated_at(ip, at(0.0)).await.unwrap();
    limiter.admit_unauthenticated_at(ip, at(0.0)).await.unwrap();
    let refused = limiter.precheck_unauthenticated_at(ip, at(0.0)).await.unwrap_err();
    assert_eq!(refused.code(), "rate_limited");
    // One call refills every 10 s.
    limiter.precheck_unauthenticated_at(ip, at(10.0)).await.unwrap();
}

#[tokio::test]
async fn stream_and_relay_slots_are_capped_per_caller_per_tier_and_per_replica() {
    let mut config = config();
    config.streams_per_caller = 2;
    config.max_relays = 3;
    config.tiers.get_mut("pro").unwrap().streams_per_caller = Some(4);
    let limiter = Limiter::new(config, None).unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(limiter.open_slot(&ALICE, SlotKind::Stream).await.unwrap());
    }
    let refused = limiter.open_slot(&ALICE, SlotKind::Stream).await.unwrap_err();
    assert_eq!(
        (refused.status().as_u16(), refused.code()),
        (429, "concurrency_limited")
    );
    assert!(refused.to_string().contains("2 status streams"), "{refused}");
    let headers = refused.headers();
    assert_eq!(headers[0].0, http::header::RETRY_AFTER);
    assert_eq!(headers[1].1, r#""streams";q=2;qu="concurrent-requests""#);
    let pro = Subject {
        principal: "iss|pat",
        tier: "pro",
    };
    for _ in 0..4 {
        held.push(limiter.open_slot(&pro, SlotKind::Stream).await.unwrap());
    }
    assert!(
        limiter.open_slot(&pro, SlotKind::Stream).await.is_err(),
        "pro's cap is 4"
    );
    for who in [ALICE, BOB, pro] {
        held.push(limiter.open_slot(&who, SlotKind::Relay).await.unwrap());
    }
    let replica = limiter.open_slot(&BOB, SlotKind::Relay).await.unwrap_err();
    assert_eq!(replica.code(), "concurrency_limited");
    assert!(replica.to_string().contains("maximum of 3 results"), "{replica}");
    held.remove(0);
    limiter.open_slot(&ALICE, SlotKind::Stream).await.unwrap();
    drop(held);
    assert_eq!(limiter.open_slots(), (0, 0, 0));
}

#[test]
fn a_limits_section_with_only_slot_caps_is_valid_and_zero_caps_are_refused() {
    let caps: LimitsConfig = toml::from_str("streams_per_caller = 3").unwrap();
    assert_eq!((caps.streams_per_caller, caps.relays_per_caller), (3, 8));
    assert_eq!((caps.max_streams, caps.max_relays), (2048, 256));
    Limiter::new(caps, None).unwrap();
    let zero: LimitsConfig = toml::from_str("max_relays = 0").unwrap();
    assert!(Limiter::new(zero, None).is_err());
    let mut tier_zero = config();
    tier_zero.tiers.get_mut("free").unwrap().relays_per_caller = Some(0);
    assert!(Limiter::new(tier_zero, None).is_err());
}

#[test]
fn only_an_answered_idempotency_key_counts_as_answered() {
    let idem = Idempotency::new(Duration::from_secs(600), 100, None);
    let now = at(0.0);
    assert!(!idem.answered_at("iss|alice", "k1", now));
    assert_eq!(idem.begin_at("iss|alice", "k1", "h1", now), IdemState::New);
    assert!(!idem.answered_at("iss|alice", "k1", now), "pending is not answered");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(idem.complete("iss|alice", "k1", 200, b"{}"));
    assert!(idem.answered_at("iss|alice", "k1", SystemTime::now()));
    assert!(!idem.answered_at("iss|bob", "k1", SystemTime::now()));
    assert!(!idem.answered_at("iss|alice", "k1", SystemTime::now() + Duration::from_secs(601)));
}

/// A reload builds a limiter with new settings over the same stores: what was spent before
/// still counts, and the new rates and quotas apply at once.
#[tokio::test]
async fn a_reconfigured_limiter_keeps_what_was_spent_under_the_new_settings() {
    let before = limiter();
    // free: cancel burst 5.
    for _ in 0..4 {
        before
            .admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0))
            .await
            .unwrap();
    }
    let mut changed_elsewhere = config();
    changed_elsewhere.tiers.get_mut("pro").unwrap().cancel = Some(Limit::Max(RateConfig {
        burst: 1,
        per_minute: 1,
    }));
    let after = before.reconfigured(changed_elsewhere).unwrap();
    after.admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0)).await.unwrap();
    let refused = after.admit_at(&ALICE, OpClass::Cancel, None, 0, at(0.0)).await;
    assert_eq!(refused.unwrap_err().code(), "rate_limited");

    // A lower daily quota counts the requests already made today.
    before.admit_at(&BOB, OpClass::Upload, None, 1, at(0.0)).await.unwrap();
    before.admit_at(&BOB, OpClass::Upload, None, 1, at(0.0)).await.unwrap();
    let mut lower = config();
    lower.tiers.get_mut("free").unwrap().daily_requests = Some(Limit::Max(2));
    let after = before.reconfigured(lower).unwrap();
    let refused = after.admit_at(&BOB, OpClass::Upload, None, 1, at(0.0)).await;
    assert_eq!(refused.unwrap_err().code(), "quota_exceeded");

    // An unusable config is refused, as at startup.
    let mut broken = config();
    broken.default_tier = "gold".into();
    assert!(before.reconfigured(broken).is_err());
}
