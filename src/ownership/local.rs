//! This replica's own ownership records: bounded, expiring, second-chance (CLOCK) eviction.
//!
//! Written by hand instead of a general cache (moka, used before): an ownership record is
//! written once per submit and expires `ttl` after it, so a queue in write order per shard finds
//! the expired ones in O(1). When the store is full the oldest record goes, unless it was read
//! since it last reached the front of the queue: a request its owner is still polling (a long
//! job) gets a second chance and goes to the back, so a flood of new submits cannot evict it.
//! moka's admission and frequency bookkeeping cost 3–9 µs per insert (`cargo bench --bench
//! parse`, ownership_record) and about 530 bytes per record, for the same outcome here.
//!
//! Keys are compact: the request id's 128 bits (fal ids are UUIDs) and a keyed hash of the app,
//! so a lookup allocates nothing. The owner is kept exactly (the principal string), not hashed.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::fal::{AppId, FalRequestId};

/// Shards: little lock contention across worker threads, small per-shard queues.
const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    id: u128,
    app: u64,
}

struct Record {
    owner: Box<str>,
    expires: Instant,
    /// Read by its owner since it last reached the front of the queue.
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    records: HashMap<Key, Record>,
    /// Keys in the order written, with the expiry they were written with.
    order: VecDeque<(Key, Instant)>,
}

pub(super) struct LocalRecords {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    ttl: Duration,
    /// Keys the app hash with a per-process secret, so app names cannot be chosen to collide.
    apps: RandomState,
    clock: Clock,
}

impl LocalRecords {
    pub(super) fn new(max_entries: u64, ttl: Duration, clock: Clock) -> Self {
        let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            ttl,
            apps: RandomState::new(),
            clock,
        }
    }

    /// Whether `principal` owns request `id` on `app` (a live record).
    pub(super) fn owned_by(&self, principal: &str, app: &AppId, id: &FalRequestId) -> bool {
        let key = self.key(app, id);
        let now = self.clock.instant();
        let mut shard = self.shard(key);
        let Some(record) = shard.records.get_mut(&key) else {
            return false;
        };
        let owned = record.expires > now && &*record.owner == principal;
        record.referenced |= owned;
        owned
    }

    /// Records `principal` as the owner; drops expired records, then the oldest past the bound.
    pub(super) fn insert(&self, principal: &str, app: &AppId, id: &FalRequestId) {
        let key = self.key(app, id);
        let now = self.clock.instant();
        let expires = now + self.ttl;
        let mut shard = self.shard(key);
        shard.records.insert(
            key,
            Record {
                owner: principal.into(),
                expires,
                referenced: false,
            },
        );
        shard.order.push_back((key, expires));
        // Each pass either drops an entry or clears a record's mark, so this ends within two
        // rounds of the queue at worst, and in one step almost always.
        while let Some(&(oldest, written_expiry)) = shard.order.front() {
            if written_expiry > now && shard.order.len() <= self.per_shard {
                break;
            }
            shard.order.pop_front();
            // A key written again later has a newer record (and queue entry): leave that one.
            let Some(record) = shard.records.get_mut(&oldest).filter(|r| r.expires == written_expiry) else {
                continue;
            };
            if record.referenced && record.expires > now {
                record.referenced = false;
                shard.order.push_back((oldest, written_expiry));
            } else {
                shard.records.remove(&oldest);
            }
        }
    }

    /// Live and expired-but-not-yet-dropped records.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    fn key(&self, app: &AppId, id: &FalRequestId) -> Key {
        Key {
            id: uuid_bits(id.as_str()),
            app: self.apps.hash_one(app.as_str()),
        }
    }

    fn shard(&self, key: Key) -> MutexGuard<'_, Shard> {
        // The id's low bits are random in a UUID; mixing in the app keeps ids shared across
        // apps (never seen at fal) spread as well.
        let index = (key.id as u64 ^ key.app) as usize % SHARDS;
        lock(&self.shards[index])
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock leaves a consistent map (no invariant spans two writes).
    shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The 128 bits of a canonical (validated, lower-case, hyphenated) UUID.
fn uuid_bits(id: &str) -> u128 {
    id.bytes()
        .filter_map(|b| char::from(b).to_digit(16))
        .fold(0u128, |acc, digit| (acc << 4) | u128::from(digit))
}

#[cfg(test)]
mod tests;
