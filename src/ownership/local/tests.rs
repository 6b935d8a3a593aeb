use super::*;
use crate::clock::ManualClock;

fn app(name: &str) -> AppId {
    AppId::from_segments(&["fal-ai", name]).unwrap()
}

fn id(n: u32) -> FalRequestId {
    FalRequestId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).unwrap()
}

#[test]
fn uuid_bits_are_the_ids_hex_digits() {
    assert_eq!(
        uuid_bits("764cabcf-b745-4b3e-ae38-1200304cf45b"),
        0x764c_abcf_b745_4b3e_ae38_1200_304c_f45b
    );
}

#[test]
fn a_record_answers_for_its_owner_app_and_id_only() {
    let store = LocalRecords::new(100, Duration::from_secs(60), Clock::system());
    store.insert("default|alice", &app("flux"), &id(1));
    assert!(store.owned_by("default|alice", &app("flux"), &id(1)));
    assert!(!store.owned_by("default|bob", &app("flux"), &id(1)));
    assert!(!store.owned_by("default|alice", &app("other"), &id(1)));
    assert!(!store.owned_by("default|alice", &app("flux"), &id(2)));
}

#[test]
fn records_expire_after_the_ttl() {
    let manual = ManualClock::new();
    let store = LocalRecords::new(100, Duration::from_secs(30), manual.clock());
    store.insert("default|alice", &app("flux"), &id(1));
    manual.advance(Duration::from_secs(30) - Duration::from_micros(1));
    assert!(
        store.owned_by("default|alice", &app("flux"), &id(1)),
        "live until its ttl"
    );
    manual.advance(Duration::from_micros(1));
    assert!(
        !store.owned_by("default|alice", &app("flux"), &id(1)),
        "expired at its ttl"
    );
    // Expired records are dropped by later writes to their shard: memory does not keep them.
    // Fill every shard below its bound (100 / 16 → 7 each), so only expiry can drop it.
    for n in 2..40 {
        store.insert("default|alice", &app("flux"), &id(n));
    }
    assert_eq!(store.len(), 38, "the expired record is still held");
}

#[test]
fn the_store_is_bounded_and_drops_the_oldest_first() {
    let store = LocalRecords::new(160, Duration::from_secs(60), Clock::system());
    for n in 0..10_000 {
        store.insert("default|alice", &app("flux"), &id(n));
    }
    assert!(store.len() <= 160, "{} records for a bound of 160", store.len());
    assert!(store.owned_by("default|alice", &app("flux"), &id(9_999)), "newest kept");
    assert!(!store.owned_by("default|alice", &app("flux"), &id(0)), "oldest dropped");
}

#[test]
fn a_record_its_owner_keeps_polling_survives_a_flood_of_new_submits() {
    let store = LocalRecords::new(160, Duration::from_secs(60), Clock::system());
    store.insert("default|alice", &app("flux"), &id(0));
    for n in 1..10_000 {
        // Alice polls her long job now and then while others submit.
        if n % 50 == 0 {
            assert!(store.owned_by("default|alice", &app("flux"), &id(0)), "evicted at {n}");
        }
        store.insert("default|bob", &app("flux"), &id(n));
    }
    assert!(store.owned_by("default|alice", &app("flux"), &id(0)));
    assert!(store.len() <= 160, "{} records for a bound of 160", store.len());
    assert!(
        !store.owned_by("default|bob", &app("flux"), &id(1)),
        "unread old records go"
    );
}

#[test]
fn writing_a_key_again_keeps_the_newer_record() {
    let manual = ManualClock::new();
    let store = LocalRecords::new(100_000, Duration::from_secs(10), manual.clock());
    store.insert("default|alice", &app("flux"), &id(1));
    manual.advance(Duration::from_secs(6));
    store.insert("default|alice", &app("flux"), &id(1));
    manual.advance(Duration::from_secs(6));
    // The first write has expired (its queue entry goes with the next writes to its shard);
    // the second, 4 s from expiry, must stay.
    for n in 2..2_000 {
        store.insert("default|alice", &app("flux"), &id(n));
    }
    assert!(store.owned_by("default|alice", &app("flux"), &id(1)));
    manual.advance(Duration::from_secs(4));
    assert!(
        !store.owned_by("default|alice", &app("flux"), &id(1)),
        "the second write expires too"
    );
}
