//! Slots for answers held open a long time: event streams (status streams, streaming runs), and buffered relays (result, sync
//! run), capped per caller and per replica. A [`Slot`] is a guard: the response body owns it, so
//! the slot is freed when the stream ends, when the client goes away (hyper drops the body) or
//! when a buffered answer has been handed over.
//!
//! The per-replica caps are atomics. Per-caller counts are in process (a map holding only callers
//! with an open slot, each entry removed at zero, so it is bounded by the replica caps) or, with
//! `[redis]`, a sorted set per caller shared by every replica (`slots.lua`): each slot's id
//! scored by its expiry, refreshed while it lives by a small task that also closes it, so the
//! slots of a replica that died lapse within [`SLOT_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::fal::SlotKind;

use super::headers::PolicyState;
use super::redis::{RedisSlots, SlotOp};
use super::{LimitError, Limiter, Subject};
use crate::redis::tag_of;

/// How long a shared slot lives without a refresh (a crashed replica's slots lapse after it).
pub(crate) const SLOT_TTL: Duration = Duration::from_secs(60);
/// How often a live shared slot is refreshed.
const SLOT_REFRESH: Duration = Duration::from_secs(20);

impl SlotKind {
    /// The policy name in `RateLimit-Policy` and the Redis key suffix.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Stream => "streams",
            Self::Relay => "relays",
        }
    }

    pub(crate) fn caller_message(self, cap: u32) -> String {
        match self {
            Self::Stream => {
                format!("at most {cap} status streams or streaming runs may be open per caller; close one first")
            }
            Self::Relay => {
                format!("at most {cap} results may be relayed to one caller at once; wait for one to finish")
            }
        }
    }

    pub(crate) fn replica_message(self, cap: u32) -> String {
        match self {
            Self::Stream => {
                format!("this server holds its maximum of {cap} status streams or streaming runs; try again shortly")
            }
            Self::Relay => format!("this server is relaying its maximum of {cap} results; try again shortly"),
        }
    }
}

/// The in-process slot counts of one replica, shared with every [`Slot`] it hands out.
#[derive(Debug, Default)]
pub(crate) struct SlotBook {
    open: [AtomicU32; 2],
    /// Open slots per (kind, caller tag) counted here; no entry at zero.
    callers: Mutex<HashMap<(SlotKind, String), u32>>,
}

/// One open slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    kind: SlotKind,
    book: Arc<SlotBook>,
    /// The caller's tag, when its per-caller count is kept in this process.
    counted_here: Option<String>,
    /// Dropped with the slot: the keeper task then closes the shared slot.
    _shared: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SlotBook {
    /// Takes one of the replica's `cap` slots of `kind`, or none when all are taken.
    pub(crate) fn take(self: &Arc<Self>, kind: SlotKind, cap: u32) -> Option<Slot> {
        let open = &self.open[kind as usize];
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
            .ok()?;
        Some(Slot {
            kind,
            book: Arc::clone(self),
            counted_here: None,
            _shared: None,
        })
    }

    /// Counts `slot` against `tag`'s in-process cap; false (and not counted) when it is full.
    pub(crate) fn enter(&self, slot: &mut Slot, tag: &str, cap: u32) -> bool {
        let mut callers = lock(&self.callers);
        let count = callers.entry((slot.kind, tag.to_owned())).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                callers.remove(&(slot.kind, tag.to_owned()));
            }
            return false;
        }
        *count += 1;
        slot.counted_here = Some(tag.to_owned());
        true
    }

    /// Slots of `kind` open on this replica.
    pub(crate) fn open(&self, kind: SlotKind) -> u32 {
        self.open[kind as usize].load(Ordering::Acquire)
    }

    /// Slots of `kind` that `tag` holds counted in this process.
    pub(crate) fn held(&self, kind: SlotKind, tag: &str) -> u32 {
        lock(&self.callers).get(&(kind, tag.to_owned())).copied().unwrap_or(0)
    }

    /// Callers with an open slot counted in process.
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.callers).len()
    }

    fn leave(&self, kind: SlotKind, tag: &str) {
        let mut callers = lock(&self.callers);
        let key = (kind, tag.to_owned());
        if let Some(count) = callers.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                callers.remove(&key);
            }
        }
    }
}

impl Slot {
    /// Keeps the shared slot `id` under `key` alive until this slot is dropped, then closes it.
    /// Must be called inside a tokio runtime (the pipeline is); the keeper runs on it.
    pub(crate) fn share(&mut self, redis: RedisSlots, key: String, id: String) {
        let (drop_signal, mut dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let ttl_ms = ttl_ms();
            loop {
                tokio::select! {
                    _ = &mut dropped => break,
                    () = tokio::time::sleep(SLOT_REFRESH) => {
                        // A failed refresh is retried on the next tick; past SLOT_TTL the slot lapses.
                        let _ = redis.run(&key, &id, SlotOp::Refresh, ttl_ms, None).await;
                    }
                }
            }
            // A failed close leaves the slot to lapse after SLOT_TTL.
            let _ = redis.run(&key, &id, SlotOp::Close, ttl_ms, None).await;
        });
        self._shared = Some(drop_signal);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.book.open[self.kind as usize].fetch_sub(1, Ordering::AcqRel);
        if let Some(tag) = &self.counted_here {
            self.book.leave(self.kind, tag);
        }
    }
}

pub(crate) fn ttl_ms() -> u64 {
    u64::try_from(SLOT_TTL.as_millis()).unwrap_or(u64::MAX)
}

/// A poisoned lock only means a thread panicked mid-update of a counter map; keep serving.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limiter {
    /// Opens a slot of `kind` for `who`: one of the replica's (`max_streams` / `max_relays`)
    /// and one of the caller's (`streams_per_caller` / `relays_per_caller`, or the tier's), the
    /// caller's shared through Redis when it is configured. Refused with 429
    /// `concurrency_limited`; nothing is held then. The slot is freed when it is dropped.
    pub async fn open_slot(&self, who: &Subject<'_>, kind: SlotKind) -> Result<Slot, LimitError> {
        let tier = self.tier(who.tier);
        let (per_caller, replica) = match kind {
            SlotKind::Stream => (
                tier.streams_per_caller.unwrap_or(self.config.streams_per_caller),
                self.config.max_streams,
            ),
            SlotKind::Relay => (
                tier.relays_per_caller.unwrap_or(self.config.relays_per_caller),
                self.config.max_relays,
            ),
        };
        let mut slot = self.slots.take(kind, replica).ok_or_else(|| LimitError::SlotsTaken {
            message: kind.replica_message(replica),
            retry_after: Duration::from_secs(1),
            policy: None,
        })?;
        let full = || LimitError::SlotsTaken {
            message: kind.caller_message(per_caller),
            retry_after: SLOT_RETRY,
            policy: Some(PolicyState {
                name: kind.name(),
                quota: u64::from(per_caller),
                window_seconds: None,
                remaining: 0,
                reset_seconds: 0,
            }),
        };
        let tag = tag_of(who.principal);
        if let Some(redis) = &self.redis {
            let shared = redis.slots();
            let key = shared.key(&tag, kind.name());
            let id = uuid::Uuid::new_v4().to_string();
            // Boxed: inline, the Redis call would size every call's future.
            let open = Box::pin(shared.run(&key, &id, SlotOp::Open { max: per_caller }, ttl_ms(), None)).await;
            return match open {
                Ok(true) => {
                    slot.share(shared.clone(), key, id);
                    Ok(slot)
                }
                Ok(false) => Err(full()),
                // Only the replica's own cap holds (`allow`), or refuse (`deny`).
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "slot", &err)?;
                    Ok(slot)
                }
            };
        }
        match self.slots.enter(&mut slot, &tag, per_caller) {
            true => Ok(slot),
            false => Err(full()),
        }
    }
}

/// A caller refused a stream or relay slot is told to retry after this long.
const SLOT_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_and_caller_caps_hold_and_dropping_a_slot_frees_both() {
        let book = Arc::new(SlotBook::default());
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut slot = book.take(SlotKind::Stream, 3).unwrap();
            assert!(book.enter(&mut slot, "alice", 2));
            held.push(slot);
        }
        let mut third = book.take(SlotKind::Stream, 3).unwrap();
        assert!(!book.enter(&mut third, "alice", 2), "alice's third stream");
        assert!(book.enter(&mut third, "bob", 2), "bob is not alice");
        assert!(book.take(SlotKind::Stream, 3).is_none(), "the replica cap");
        assert!(book.take(SlotKind::Relay, 3).is_some(), "relays have their own cap");
        held.pop();
        let mut again = book.take(SlotKind::Stream, 3).unwrap();
        assert!(book.enter(&mut again, "alice", 2));
        drop((held, third, again));
        assert_eq!((book.open(SlotKind::Stream), book.tracked()), (0, 0));
    }

    #[test]
    fn a_refused_entry_leaves_no_empty_entry_behind() {
        let book = Arc::new(SlotBook::default());
        let mut slot = book.take(SlotKind::Relay, 5).unwrap();
        assert!(!book.enter(&mut slot, "carol", 0));
        assert_eq!(book.tracked(), 0);
        drop(slot);
        assert_eq!(book.open(SlotKind::Relay), 0);
    }
}
