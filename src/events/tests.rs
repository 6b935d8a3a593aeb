use std::time::Duration;

use super::*;
use crate::clock::Clock;
use crate::config::OwnershipConfig;
use crate::fal::EndpointId;
use crate::ownership::redis::RedisOwnership;
use crate::redis::{tag_of, RedisConfig, RedisStore};

fn ownership(shared: Option<RedisStore>) -> Arc<Ownership> {
    let config = OwnershipConfig {
        ttl: Duration::from_secs(600),
        max_entries: 1_000,
        per_caller: 10,
        list_limit: 20,
        list_max: 100,
    };
    Arc::new(Ownership::with_clock(
        config,
        shared.map(RedisOwnership::new),
        OnStoreError::Deny,
        Clock::system(),
    ))
}

fn hub(history: usize, shared: Option<RedisStore>) -> Arc<Events> {
    let config = EventsConfig {
        history,
        ..EventsConfig::default()
    };
    let events = shared.clone().map(RedisEvents::new);
    Arc::new(Events::new(config, ownership(shared), events, OnStoreError::Deny))
}

fn id(n: u32) -> FalRequestId {
    FalRequestId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).unwrap()
}

async fn submit(events: &Events, principal: &str, n: u32) {
    let endpoint = EndpointId::parse("fal-ai/flux/dev").unwrap();
    let summary = events.ownership.record(principal, &endpoint, &id(n)).await;
    events.submitted(&tag_of(principal), &summary).await;
}

fn kinds(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.body.kind.clone(), e.body.request_id[24..].to_owned()))
        .collect()
}

#[test]
fn event_ids_parse_only_in_their_own_shape() {
    assert_eq!("17-3".parse(), Ok(EventId { ms: 17, seq: 3 }));
    assert_eq!(EventId { ms: 17, seq: 3 }.to_string(), "17-3");
    for bad in [
        "",
        "17",
        "-3",
        "17-",
        "a-1",
        "1-2-3",
        "+1-2",
        "99999999999999999999999-1",
    ] {
        assert!(bad.parse::<EventId>().is_err(), "{bad}");
    }
    assert!(EventId { ms: 2, seq: 0 } > EventId { ms: 1, seq: 9 });
}

/// The owner's history holds its submits and the first end of each; another caller's is empty.
async fn owner_sees_submitted_and_finished_once(events: &Events) {
    let alice = tag_of("iss|alice");
    submit(events, "iss|alice", 1).await;
    assert!(events.finished(&alice, &id(1), Outcome::Ok).await, "first end is news");
    assert!(
        !events.finished(&alice, &id(1), Outcome::Unknown).await,
        "the second is not"
    );
    assert!(
        !events.finished(&tag_of("iss|bob"), &id(1), Outcome::Ok).await,
        "bob cannot end alice's"
    );
    let seen = events.since(&alice, EventId::ZERO).await.unwrap();
    assert_eq!(
        kinds(&seen),
        [
            ("submitted".into(), "000000000001".into()),
            ("finished".into(), "000000000001".into())
        ]
    );
    assert_eq!(seen[1].body.outcome.as_deref(), Some("ok"));
    assert_eq!(seen[1].body.endpoint, "fal-ai/flux/dev");
    assert!(seen[0].id < seen[1].id);
    assert!(events
        .since(&tag_of("iss|bob"), EventId::ZERO)
        .await
        .unwrap()
        .is_empty());
    // Resuming after the first gives the second only; the latest id is the last one.
    assert_eq!(events.since(&alice, seen[0].id).await.unwrap(), seen[1..]);
    assert_eq!(events.latest(&alice).await.unwrap(), seen[1].id);
}

#[tokio::test]
async fn in_process_the_owner_sees_submitted_and_finished_once() {
    owner_sees_submitted_and_finished_once(&hub(10, None)).await;
}

#[tokio::test]
async fn through_redis_the_owner_sees_submitted_and_finished_once() {
    owner_sees_submitted_and_finished_once(&hub(10, Some(store(&prefix())))).await;
}

fn prefix() -> String {
    format!("test-events-{}", uuid::Uuid::new_v4())
}

fn store(prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisConfig::for_tests(500, prefix)).unwrap()
}

#[tokio::test]
async fn the_history_is_bounded_per_caller() {
    for events in [hub(3, None), hub(3, Some(store(&prefix())))] {
        for n in 0..8 {
            submit(&events, "iss|alice", n).await;
        }
        let seen = events.since(&tag_of("iss|alice"), EventId::ZERO).await.unwrap();
        let ids: Vec<_> = kinds(&seen).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["000000000005", "000000000006", "000000000007"]);
    }
}

#[tokio::test]
async fn in_process_the_callers_held_are_bounded() {
    let config = EventsConfig {
        max_callers: 2,
        ..EventsConfig::default()
    };
    let events = Events::new(config, ownership(None), None, OnStoreError::Deny);
    for n in 0..5 {
        submit(&events, &format!("iss|caller{n}"), n).await;
    }
    assert_eq!(events.lock().callers.len(), 2);
    assert!(events
        .since(&tag_of("iss|caller0"), EventId::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        events.since(&tag_of("iss|caller4"), EventId::ZERO).await.unwrap().len(),
        1
    );
}

/// Two replicas on one Redis: an end learned by replica A wakes replica B's subscribers (through
/// the feed) with the owner's tag, and B reads the event from the shared history.
#[tokio::test]
async fn an_event_published_on_one_replica_wakes_the_other() {
    let prefix = prefix();
    let (a, b) = (hub(10, Some(store(&prefix))), hub(10, Some(store(&prefix))));
    let mut wake = b.subscribe();
    b.start();
    submit(&a, "iss|alice", 1).await;
    let woken = tokio::time::timeout(Duration::from_secs(5), wake.recv())
        .await
        .expect("B is woken within the bound")
        .unwrap();
    assert_eq!(&*woken, tag_of("iss|alice"));
    let seen = b.since(&tag_of("iss|alice"), EventId::ZERO).await.unwrap();
    assert_eq!(kinds(&seen), [("submitted".into(), "000000000001".into())]);
}
