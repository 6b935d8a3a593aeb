//! `[events]`: the per-caller event stream's settings (`crate::events`).

use serde::Deserialize;

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
