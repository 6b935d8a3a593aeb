//! Each caller's request events (`GET /api/fal/events`): one when a request is submitted, one
//! when falgate learns it ended, whichever replica learned it and whichever holds the stream.
//!
//! Events are kept per caller (by tag, [`crate::redis::tag_of`] of the principal), the newest
//! `events.history` of them, with ids `<ms>-<seq>` that only grow per caller: what a stream's
//! `Last-Event-ID` resumes from. Without `[redis]` the history is in process (at most
//! `events.max_callers` callers, the one with the stalest news dropped first). With `[redis]` it
//! is a Redis stream per caller, `<prefix>:{<caller tag>}:events` (`XADD … MAXLEN`, expiring
//! with the ownership TTL, Redis assigning the ids), and each publish also appends the caller's
//! tag to one feed, `<prefix>:{events}:feed` (`MAXLEN ~ 10000`): two single-slot steps. Every
//! replica reads the feed every `events.feed_poll_ms` (a plain `XREAD`, never a blocking one on
//! a shared connection) and wakes its streams of those callers.
//!
//! A wake-up carries only the caller's tag: a stream then reads its caller's history after the
//! last event it sent. So events reach a stream in id order however wake-ups race, a stream
//! that lagged behind the wake-up channel catches up from the history, and no event of
//! another caller ever passes through a caller's stream. Streams also read the history at each
//! keepalive, so a missed wake-up (a feed read that failed) delays an event, never loses it.
//!
//! The first end learned of a request wins ([`crate::ownership::Ownership::finish`]): a poll,
//! the reconciler and fal's webhook may all learn it, one `finished` event is sent.

pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::fal::FalRequestId;
use crate::limits::OnStoreError;
use crate::ownership::{Outcome, Ownership, Summary};
use redis::RedisEvents;

/// Why the event history could not be read (no HTTP: the edge, `error`, answers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    /// The shared store could not answer, under `on_store_error = "deny"`.
    #[error("the shared state store is unavailable")]
    StoreDown,
}

/// `[events]`: the per-caller event stream.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept per caller for `Last-Event-ID` to resume from.
    pub history: usize,
    /// Callers whose history is kept in process (without `[redis]`).
    pub max_callers: usize,
    /// A comment line is sent when a stream was quiet this long (and the history read again).
    pub keepalive_seconds: u64,
    /// How often each replica reads the shared feed of news (with `[redis]`).
    pub feed_poll_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            history: 100,
            max_callers: 100_000,
            keepalive_seconds: 15,
            feed_poll_ms: 200,
        }
    }
}

impl EventsConfig {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.history) {
            return Err("`events.history` must be between 1 and 10000".into());
        }
        if self.max_callers == 0 || self.keepalive_seconds == 0 || self.feed_poll_ms == 0 {
            return Err(
                "`events.max_callers`, `events.keepalive_seconds` and `events.feed_poll_ms` must be greater than zero"
                    .into(),
            );
        }
        Ok(())
    }
}

/// An event's id: `<ms>-<seq>`, growing per caller (a Redis stream id with `[redis]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// Before every event.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    fn from_str(raw: &str) -> Result<Self, ()> {
        let (ms, seq) = raw.split_once('-').ok_or(())?;
        let number = |s: &str| match s.len() {
            1..=20 if s.bytes().all(|b| b.is_ascii_digit()) => s.parse::<u64>().map_err(drop),
            _ => Err(()),
        };
        Ok(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

/// What happened to one of the caller's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// `submitted` or `finished` (the SSE event name).
    #[serde(rename = "type")]
    pub kind: String,
    pub request_id: String,
    pub endpoint: String,
    /// `IN_QUEUE` or `COMPLETED`.
    pub status: String,
    /// `ok` or `error` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

impl EventBody {
    fn of(kind: &str, summary: &Summary) -> Self {
        Self {
            kind: kind.into(),
            request_id: summary.id.clone(),
            endpoint: summary.endpoint.clone(),
            status: summary.status.clone(),
            outcome: summary.outcome.clone(),
            error_type: summary.error_type.clone(),
        }
    }
}

/// One event in a caller's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub body: EventBody,
}

/// The in-process histories: per caller tag, when it last had news (a counter) and its events.
#[derive(Default)]
struct Local {
    callers: HashMap<String, (u64, VecDeque<Event>)>,
    news: u64,
}

/// The event hub of this process. Lives for the process (a reload keeps it).
pub struct Events {
    config: EventsConfig,
    ownership: Arc<Ownership>,
    /// Tags of callers with news.
    wake: broadcast::Sender<Arc<str>>,
    local: Mutex<Local>,
    shared: Option<RedisEvents>,
    on_error: OnStoreError,
}

impl Events {
    /// The hub over `ownership` (where requests are indexed and their ends recorded), shared
    /// through Redis when given.
    pub fn new(
        config: EventsConfig,
        ownership: Arc<Ownership>,
        shared: Option<RedisEvents>,
        on_error: OnStoreError,
    ) -> Self {
        Self {
            config,
            ownership,
            wake: broadcast::channel(1024).0,
            local: Mutex::default(),
            shared,
            on_error,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    /// Starts reading the shared feed (with `[redis]`): a task that lives as long as the hub.
    pub fn start(self: &Arc<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let hub = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.feed_poll_ms);
        tokio::spawn(async move {
            // From the feed's start: a wake-up without news costs a stream one history read.
            let mut after = String::from("0-0");
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                // Nobody listening: nothing to wake, but keep the place in the feed.
                match shared.feed_after(&after).await {
                    Ok((last, tags)) => {
                        for tag in tags {
                            let _ = hub.wake.send(tag.into());
                        }
                        after = last;
                    }
                    Err(err) => tracing::warn!(error = %err, "event feed unavailable"),
                }
            }
        });
    }

    /// The caller (by tag) submitted the request `summary` describes: its `submitted` event.
    pub async fn submitted(&self, tag: &str, summary: &Summary) {
        self.publish(tag, EventBody::of("submitted", summary)).await;
    }

    /// falgate learned that request `id` of the caller tagged `tag` ended with `outcome` (a poll
    /// or stream saw `COMPLETED`, a result was served, the reconciler, fal's verified webhook):
    /// records it in the ownership index and, when it is the first end learned of a request
    /// still indexed, sends the owner's `finished` event. True when this was news.
    ///
    /// `tag` is [`crate::redis::tag_of`] of the owner's principal (`Caller::principal`).
    pub async fn finished(&self, tag: &str, id: &FalRequestId, outcome: Outcome) -> bool {
        match self.ownership.finish(tag, id, &outcome).await {
            Some(summary) => {
                self.publish(tag, EventBody::of("finished", &summary)).await;
                true
            }
            None => false,
        }
    }

    /// Wake-ups: the tags of callers with news. Subscribe before reading the history.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.wake.subscribe()
    }

    /// The id of the caller's newest event (`ZERO` when none): where a stream opened without
    /// `Last-Event-ID` starts.
    pub async fn latest(&self, tag: &str) -> Result<EventId, EventsError> {
        match &self.shared {
            None => Ok(self
                .lock()
                .callers
                .get(tag)
                .and_then(|(_, h)| h.back())
                .map_or(EventId::ZERO, |e| e.id)),
            Some(shared) => match shared.latest(tag).await {
                Ok(id) => Ok(id.unwrap_or(EventId::ZERO)),
                Err(err) => self.store_failed(&err).map(|()| EventId::ZERO),
            },
        }
    }

    /// The caller's events after `after`, oldest first (at most `events.history`).
    pub async fn since(&self, tag: &str, after: EventId) -> Result<Vec<Event>, EventsError> {
        match &self.shared {
            None => Ok(self
                .lock()
                .callers
                .get(tag)
                .map(|(_, h)| h.iter().filter(|e| e.id > after).cloned().collect())
                .unwrap_or_default()),
            Some(shared) => match shared.since(tag, after, self.config.history).await {
                Ok(events) => Ok(events),
                Err(err) => self.store_failed(&err).map(|()| Vec::new()),
            },
        }
    }

    fn store_failed(&self, err: &crate::redis::StoreError) -> Result<(), EventsError> {
        tracing::warn!(error = %err, "event history unavailable");
        match self.on_error {
            OnStoreError::Deny => Err(EventsError::StoreDown),
            OnStoreError::Allow => Ok(()),
        }
    }

    async fn publish(&self, tag: &str, body: EventBody) {
        match &self.shared {
            None => self.append_local(tag, body),
            Some(shared) => {
                let ttl = self.ownership.config().ttl;
                // Boxed: inline, a Redis call's future would size every call's future.
                if let Err(err) = Box::pin(shared.publish(tag, &body, self.config.history, ttl)).await {
                    tracing::warn!(error = %err, "event not published to the shared store");
                    return;
                }
            }
        }
        // This replica's streams hear it at once; the others at their next feed read.
        let _ = self.wake.send(tag.into());
    }

    fn append_local(&self, tag: &str, body: EventBody) {
        let now_ms = self.ownership.now_ms();
        let mut local = self.lock();
        local.news += 1;
        let news = local.news;
        let callers = &mut local.callers;
        if !callers.contains_key(tag) && callers.len() >= self.config.max_callers {
            let stalest = callers
                .iter()
                .min_by_key(|(_, (news, _))| *news)
                .map(|(tag, _)| tag.clone());
            if let Some(stalest) = stalest {
                callers.remove(&stalest);
            }
        }
        let (touched, history) = callers.entry(tag.to_owned()).or_default();
        *touched = news;
        let id = match history.back() {
            Some(last) if last.id.ms >= now_ms => EventId {
                ms: last.id.ms,
                seq: last.id.seq + 1,
            },
            _ => EventId { ms: now_ms, seq: 0 },
        };
        history.push_back(Event { id, body });
        while history.len() > self.config.history {
            history.pop_front();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// fal's verified webhook deliveries (`webhooks::apply`) report each job's end here: the
/// ownership index learns the outcome and the owner's stream gets its `finished` event (once,
/// whoever learned the end first).
impl crate::webhooks::JobEnded for Events {
    fn job_ended<'a>(&'a self, ended: crate::webhooks::Ended<'a>) -> futures_util::future::BoxFuture<'a, ()> {
        let outcome = match ended.outcome {
            crate::webhooks::Outcome::Ok => Outcome::Ok,
            crate::webhooks::Outcome::Error { error_type } => Outcome::error(error_type.as_deref().unwrap_or("error")),
            crate::webhooks::Outcome::Unknown => Outcome::Unknown,
        };
        Box::pin(async move {
            self.finished(ended.caller_tag, ended.request_id, outcome).await;
        })
    }
}

#[cfg(test)]
mod tests;
