//! Each caller's recent requests (what `GET /api/fal/requests` lists), kept in process: per
//! caller tag ([`crate::redis::tag_of`] of the principal, the name the reconciler knows a caller
//! by) a queue of at most `ownership.per_caller` summaries, oldest first. A summary expires with
//! the ownership record (`ownership.ttl_seconds` after its submit). The callers held are bounded
//! too (`ownership.max_entries / per_caller`): past it, the caller whose newest request is the
//! oldest goes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::{Outcome, Summary};

pub(super) struct LocalIndex {
    callers: Mutex<HashMap<String, VecDeque<Summary>>>,
    per_caller: usize,
    max_callers: usize,
    ttl_ms: u64,
}

impl LocalIndex {
    pub(super) fn new(per_caller: usize, max_entries: u64, ttl_ms: u64) -> Self {
        let per_caller = per_caller.max(1);
        let max_callers = usize::try_from(max_entries).unwrap_or(usize::MAX) / per_caller;
        Self {
            callers: Mutex::default(),
            per_caller,
            max_callers: max_callers.max(1),
            ttl_ms,
        }
    }

    /// Adds `summary` to its caller's queue (replacing an entry of the same id), dropping the
    /// expired and the oldest past the bound.
    pub(super) fn insert(&self, tag: &str, summary: Summary, now_ms: u64) {
        let mut callers = self.lock();
        if !callers.contains_key(tag) && callers.len() >= self.max_callers {
            let cutoff = now_ms.saturating_sub(self.ttl_ms);
            callers.retain(|_, queue| queue.back().is_some_and(|s| s.submitted_ms > cutoff));
            if callers.len() >= self.max_callers {
                let stalest = callers
                    .iter()
                    .min_by_key(|(_, queue)| queue.back().map_or(0, |s| s.submitted_ms))
                    .map(|(tag, _)| tag.clone());
                if let Some(stalest) = stalest {
                    callers.remove(&stalest);
                }
            }
        }
        let queue = callers.entry(tag.to_owned()).or_default();
        queue.retain(|s| s.id != summary.id);
        queue.push_back(summary);
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        while queue
            .front()
            .is_some_and(|s| s.submitted_ms <= cutoff || queue.len() > self.per_caller)
        {
            queue.pop_front();
        }
    }

    /// Records the end of request `id` of caller `tag`: the updated summary when this is the
    /// first end learned of a request still held, else `None`.
    pub(super) fn finish(&self, tag: &str, id: &str, outcome: &Outcome, now_ms: u64) -> Option<Summary> {
        let mut callers = self.lock();
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        let summary = callers
            .get_mut(tag)?
            .iter_mut()
            .find(|s| s.id == id && s.submitted_ms > cutoff)?;
        if summary.completed_ms.is_some() {
            return None;
        }
        summary.finish(outcome, now_ms);
        Some(summary.clone())
    }

    /// The caller's live summaries, newest first.
    pub(super) fn recent(&self, tag: &str, now_ms: u64) -> Vec<Summary> {
        let callers = self.lock();
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        callers.get(tag).map_or_else(Vec::new, |queue| {
            queue
                .iter()
                .rev()
                .filter(|s| s.submitted_ms > cutoff)
                .cloned()
                .collect()
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Summary>>> {
        // No invariant spans two writes: a poisoned map is still consistent.
        self.callers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(n: u64, at: u64) -> Summary {
        Summary::submitted(format!("00000000-0000-4000-8000-{n:012x}"), "fal-ai/flux".into(), at)
    }

    #[test]
    fn each_caller_keeps_at_most_its_bound_newest_first() {
        let index = LocalIndex::new(3, 1_000, 60_000);
        for n in 0..10 {
            index.insert("alice", summary(n, 1_000 + n), 1_000 + n);
        }
        index.insert("bob", summary(99, 2_000), 2_000);
        let ids: Vec<u64> = index
            .recent("alice", 2_000)
            .iter()
            .map(|s| s.submitted_ms - 1_000)
            .collect();
        assert_eq!(ids, [9, 8, 7]);
        assert_eq!(index.recent("bob", 2_000).len(), 1);
        assert!(index.recent("carol", 2_000).is_empty());
    }

    #[test]
    fn summaries_expire_with_the_ownership_record() {
        let index = LocalIndex::new(10, 1_000, 60_000);
        index.insert("alice", summary(1, 1_000), 1_000);
        assert_eq!(index.recent("alice", 60_999).len(), 1);
        assert!(index.recent("alice", 61_000).is_empty());
        assert!(index.finish("alice", &summary(1, 0).id, &Outcome::Ok, 61_000).is_none());
    }

    #[test]
    fn the_first_end_wins_and_only_a_held_request_ends() {
        let index = LocalIndex::new(10, 1_000, 60_000);
        let first = summary(1, 1_000);
        index.insert("alice", first.clone(), 1_000);
        assert!(
            index.finish("bob", &first.id, &Outcome::Ok, 2_000).is_none(),
            "not bob's"
        );
        let ended = index
            .finish("alice", &first.id, &Outcome::Error("timeout".into()), 2_000)
            .unwrap();
        assert_eq!(
            (ended.completed_ms, ended.error_type.as_deref()),
            (Some(2_000), Some("timeout"))
        );
        assert!(
            index.finish("alice", &first.id, &Outcome::Ok, 3_000).is_none(),
            "ended once"
        );
        assert_eq!(index.recent("alice", 3_000)[0].outcome.as_deref(), Some("error"));
    }

    #[test]
    fn the_callers_held_are_bounded() {
        let index = LocalIndex::new(10, 30, 60_000);
        for n in 0..100 {
            index.insert(&format!("caller{n}"), summary(n, 1_000 + n), 1_000 + n);
        }
        assert!(index.lock().len() <= 3);
        assert_eq!(index.recent("caller99", 2_000).len(), 1, "the newest caller stays");
        assert!(index.recent("caller0", 2_000).is_empty());
    }
}
