//! Caller events shared through Redis (see `events.rs`): a stream per caller,
//! `<prefix>:{<caller tag>}:events`, and one feed of caller tags with news,
//! `<prefix>:{events}:feed`.

use std::time::Duration;

use super::{Event, EventBody, EventId};
use crate::redis::{RedisStore, StoreError};

/// Feed entries kept (about): a replica reads it every `feed_poll_ms`, so this is seconds of news.
const FEED_LENGTH: usize = 10_000;
/// Feed entries read per call.
const FEED_BATCH: usize = 1_000;

type Entries = Vec<(String, Vec<String>)>;

/// The Redis side of the event hub.
#[derive(Clone)]
pub struct RedisEvents {
    store: RedisStore,
}

impl RedisEvents {
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn history_key(&self, tag: &str) -> String {
        self.store.tagged(tag, "events")
    }

    fn feed_key(&self) -> String {
        self.store.tagged("events", "feed")
    }

    /// Appends `body` to the caller's history (trimmed to `history`, expiring after `ttl`),
    /// then the caller's tag to the feed: two single-slot steps.
    pub(super) async fn publish(
        &self,
        tag: &str,
        body: &EventBody,
        history: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(body).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let mut connection = self.store.connection();
        let key = self.history_key(tag);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut append = redis::pipe();
        append
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg(history)
            .arg("*")
            .arg("e")
            .arg(json)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore();
        self.store
            .timed_as("events_publish", append.query_async::<()>(&mut connection))
            .await?;
        self.store
            .timed_as(
                "events_feed",
                redis::cmd("XADD")
                    .arg(self.feed_key())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(FEED_LENGTH)
                    .arg("*")
                    .arg("t")
                    .arg(tag)
                    .query_async::<String>(&mut connection),
            )
            .await
            .map(drop)
    }

    /// The feed after `after`: the id to read after next time, and the tags with news.
    pub(super) async fn feed_after(&self, after: &str) -> Result<(String, Vec<String>), StoreError> {
        let mut connection = self.store.connection();
        let entries: Entries = self
            .store
            .timed_as(
                "events_feed_read",
                redis::cmd("XRANGE")
                    .arg(self.feed_key())
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(FEED_BATCH)
                    .query_async(&mut connection),
            )
            .await?;
        let last = entries.last().map_or_else(|| after.to_owned(), |(id, _)| id.clone());
        let mut tags: Vec<String> = entries
            .into_iter()
            .filter_map(|(_, fields)| field(fields, "t"))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        Ok((last, tags))
    }

    /// The id of the caller's newest event.
    pub(super) async fn latest(&self, tag: &str) -> Result<Option<EventId>, StoreError> {
        let mut connection = self.store.connection();
        let newest: Entries = self
            .store
            .timed_as(
                "events_read",
                redis::cmd("XREVRANGE")
                    .arg(self.history_key(tag))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(newest.into_iter().next().and_then(|(id, _)| id.parse().ok()))
    }

    /// The caller's events after `after`, oldest first, at most `count`.
    pub(super) async fn since(&self, tag: &str, after: EventId, count: usize) -> Result<Vec<Event>, StoreError> {
        let mut connection = self.store.connection();
        let entries: Entries = self
            .store
            .timed_as(
                "events_read",
                redis::cmd("XRANGE")
                    .arg(self.history_key(tag))
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                Some(Event {
                    id: id.parse().ok()?,
                    body: serde_json::from_str(&field(fields, "e")?).ok()?,
                })
            })
            .collect())
    }
}

/// The value of `name` in a stream entry's flat field list.
fn field(fields: Vec<String>, name: &str) -> Option<String> {
    let mut pairs = fields.into_iter();
    while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
        if key == name {
            return Some(value);
        }
    }
    None
}
