//! In-process admission and slot edges found by mutation (TESTING.md): each slot refusal's own
//! message and retry, the exact slot counts, a caller's count kept while any slot is open, a run
//! guard that frees only when dropped armed, a rate spent alone, and the small accessors.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;

use super::tests::config;
use super::*;
use crate::clock::ManualClock;
use crate::error::OnTheWire;

fn who(principal: &'static str) -> Subject<'static> {
    Subject {
        principal,
        tier: "free",
    }
}

/// Streams: 1 per caller, 2 per replica; relays: 2 per caller, 3 per replica.
fn slots_limiter() -> Limiter {
    let mut config = config();
    (config.streams_per_caller, config.max_streams) = (1, 2);
    (config.relays_per_caller, config.max_relays) = (2, 3);
    Limiter::new(config, None).unwrap()
}

/// The message and `Retry-After` of a slot refusal.
fn refusal(err: &LimitError) -> (String, String) {
    assert_eq!((err.status().as_u16(), err.code()), (429, "concurrency_limited"));
    let retry = err
        .headers()
        .into_iter()
        .find(|(name, _)| name == RETRY_AFTER)
        .map(|(_, value)| value.to_str().unwrap().to_owned())
        .unwrap();
    (err.to_string(), retry)
}

/// What `usage` says is left of policy `name`.
async fn left(limiter: &Limiter, who: &Subject<'_>, name: &str) -> u64 {
    let usage = limiter.usage(who).await.unwrap();
    usage.iter().find(|state| state.name == name).unwrap().remaining
}

#[tokio::test]
async fn each_slot_refusal_names_its_own_cap_and_retry() {
    let limiter = slots_limiter();
    let (alice, bob, carol) = (who("iss|alice"), who("iss|bob"), who("iss|carol"));
    let mut held = vec![limiter.open_slot(&alice, SlotKind::Stream).await.unwrap()];
    let caller = limiter.open_slot(&alice, SlotKind::Stream).await.unwrap_err();
    assert_eq!(
        refusal(&caller),
        (
            "at most 1 status streams or streaming runs may be open per caller; close one first".into(),
            "5".into()
        )
    );
    held.push(limiter.open_slot(&bob, SlotKind::Stream).await.unwrap());
    let replica = limiter.open_slot(&carol, SlotKind::Stream).await.unwrap_err();
    assert_eq!(
        refusal(&replica),
        (
            "this server holds its maximum of 2 status streams or streaming runs; try again shortly".into(),
            "1".into()
        )
    );
    for _ in 0..2 {
        held.push(limiter.open_slot(&alice, SlotKind::Relay).await.unwrap());
    }
    let caller = limiter.open_slot(&alice, SlotKind::Relay).await.unwrap_err();
    assert_eq!(
        refusal(&caller),
        (
            "at most 2 results may be relayed to one caller at once; wait for one to finish".into(),
            "5".into()
        )
    );
    held.push(limiter.open_slot(&bob, SlotKind::Relay).await.unwrap());
    let replica = limiter.open_slot(&carol, SlotKind::Relay).await.unwrap_err();
    assert_eq!(
        refusal(&replica),
        (
            "this server is relaying its maximum of 3 results; try again shortly".into(),
            "1".into()
        )
    );
    // Open: 2 streams, 3 relays; counted per (kind, caller): alice and bob, twice each.
    assert_eq!(limiter.open_slots(), (2, 3, 4));
    assert_eq!(left(&limiter, &alice, "streams").await, 0);
    assert_eq!(left(&limiter, &alice, "relays").await, 0);
    assert_eq!(left(&limiter, &bob, "relays").await, 1);
    assert_eq!(left(&limiter, &carol, "relays").await, 2);
    drop(held);
    assert_eq!(limiter.open_slots(), (0, 0, 0));
}

#[tokio::test]
async fn a_callers_count_is_kept_while_any_of_their_slots_is_open() {
    let mut config = config();
    (config.relays_per_caller, config.max_relays) = (2, 10);
    let limiter = Limiter::new(config, None).unwrap();
    let alice = who("iss|alice");
    let first = limiter.open_slot(&alice, SlotKind::Relay).await.unwrap();
    let _second = limiter.open_slot(&alice, SlotKind::Relay).await.unwrap();
    drop(first);
    // One is still open: one more fits, not two.
    let _third = limiter.open_slot(&alice, SlotKind::Relay).await.unwrap();
    assert!(limiter.open_slot(&alice, SlotKind::Relay).await.is_err());
    assert_eq!(limiter.open_slots(), (0, 2, 1));
}

/// 2025-01-01T00:00:00Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

#[tokio::test]
async fn a_run_guard_frees_the_reservation_only_when_dropped_armed() {
    let mut config = config();
    config.tiers.get_mut("free").unwrap().max_inflight_jobs = Some(Limit::Max(1));
    let limiter = Limiter::new(config, None).unwrap();
    let alice = who("iss|alice");
    let first = limiter.admit_at(&alice, OpClass::Submit, None, 1, t0()).await.unwrap();
    // The client went away before fal answered: the guard drops armed and frees the slot.
    drop(limiter.run_guard(&first));
    let second = limiter.admit_at(&alice, OpClass::Submit, None, 1, t0()).await.unwrap();
    // The bookkeeping ran: a disarmed guard leaves the reservation to it.
    limiter.run_guard(&second).disarm();
    let refused = limiter
        .admit_at(&alice, OpClass::Submit, None, 1, t0())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "concurrency_limited");
}

#[tokio::test]
async fn spending_a_rate_spends_one_call_of_it_and_nothing_else() {
    let manual = ManualClock::new();
    let limiter = Limiter::with_clock(config(), None, manual.clock()).unwrap();
    let alice = who("iss|alice");
    // free submit: burst 3; daily requests 50; two jobs in flight.
    limiter.spend_rate(&alice, OpClass::Submit).await;
    limiter
        .spend_rate_at(&alice, OpClass::Submit, manual.clock().now())
        .await;
    let admitted = limiter.admit(&alice, OpClass::Submit, None, 1).await.unwrap();
    let headers = admitted.headers();
    let remaining = |name| super::tests::remaining(&headers[1].1, name);
    assert_eq!(remaining("submit"), 0, "the two spent calls and this one");
    assert_eq!(remaining("daily-requests"), 49, "only the admitted call is a request");
    assert_eq!(remaining("inflight"), 1, "only the admitted call holds a job");
    assert_eq!(
        limiter
            .admit(&alice, OpClass::Submit, None, 1)
            .await
            .unwrap_err()
            .code(),
        "rate_limited"
    );
}

#[test]
fn only_an_unavailable_store_is_not_ready() {
    assert!(Readiness::Ready.is_ready());
    assert!(Readiness::Degraded.is_ready());
    assert!(!Readiness::Unavailable.is_ready());
}

#[tokio::test]
async fn the_small_accessors_read_the_config_and_the_stores() {
    let mut config = config();
    config.credits.client_token_cost = 7;
    config.client_token_max_seconds = 90;
    let limiter = Limiter::new(config, None).unwrap();
    assert_eq!(limiter.client_token_terms(), (7, 90));
    assert_eq!(
        limiter.trusted_proxies(),
        &["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    for principal in ["iss|a", "iss|b", "iss|c"] {
        limiter
            .admit_at(&who(principal), OpClass::Poll, None, 0, t0())
            .await
            .unwrap();
    }
    assert_eq!(limiter.tracked_callers(), 3);
}

#[test]
fn ipv6_clients_are_keyed_by_their_64_bit_prefix_and_ipv4_by_address() {
    let key = |ip: &str| unauthenticated::ip_key(ip.parse::<IpAddr>().unwrap()).to_string();
    assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
    assert_eq!(key("192.0.2.77"), "192.0.2.77");
}

#[tokio::test]
async fn only_a_submit_precheck_counts_the_jobs_in_flight() {
    let mut config = config();
    config.tiers.get_mut("free").unwrap().max_inflight_jobs = Some(Limit::Max(1));
    let limiter = Limiter::new(config, None).unwrap();
    let alice = who("iss|alice");
    let _held = limiter.admit_at(&alice, OpClass::Submit, None, 1, t0()).await.unwrap();
    let refused = limiter
        .precheck_at(&alice, OpClass::Submit, None, t0())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "concurrency_limited");
    // A poll or a cancel of the running job is not a new job.
    limiter.precheck_at(&alice, OpClass::Poll, None, t0()).await.unwrap();
    limiter.precheck_at(&alice, OpClass::Cancel, None, t0()).await.unwrap();
}

#[tokio::test]
async fn a_priced_precheck_refuses_a_call_costing_more_than_the_credits_left() {
    let manual = ManualClock::new();
    let limiter = Limiter::with_clock(config(), None, manual.clock()).unwrap();
    let alice = who("iss|alice");
    // free: 10 credits a day.
    limiter.precheck_priced(&alice, OpClass::Token, None, 10).await.unwrap();
    let refused = limiter
        .precheck_priced(&alice, OpClass::Token, None, 11)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "quota_exceeded");
}

#[test]
fn the_cheapest_price_of_an_endpoint_is_its_lowest_cost() {
    let mut config = config();
    config.credits.endpoints.insert(
        "fal-ai/priced".into(),
        EndpointCredits {
            cost: 4,
            field: Some("size".into()),
            values: [("small".to_owned(), 3), ("large".to_owned(), 7)].into_iter().collect(),
        },
    );
    let limiter = Limiter::new(config, None).unwrap();
    assert_eq!(limiter.min_credits(None), 0, "a call to no endpoint");
    assert_eq!(limiter.min_credits(Some("fal-ai/flux/dev")), 2);
    assert_eq!(
        limiter.min_credits(Some("fal-ai/flux/dev/sub")),
        2,
        "a sub path shares its key"
    );
    assert_eq!(limiter.min_credits(Some("fal-ai/priced")), 3);
    assert_eq!(limiter.min_credits(Some("fal-ai/other")), 1, "the default cost");
}

#[test]
fn a_shared_slot_lives_a_minute_without_a_refresh_and_is_refreshed_well_within_it() {
    // The Redis scripts take the TTL in milliseconds.
    assert_eq!(slots::ttl_ms(), 60_000);
    assert!(slots::SLOT_TTL >= Duration::from_secs(60));
}
