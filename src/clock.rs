//! The time the expiring stores read: ownership records (`ownership::local`), the verified-token
//! cache (`auth`), the in-process limits (rates, quotas, jobs in flight: `limits::memory`) and
//! idempotency records. Production uses [`Clock::system`]; tests build a [`ManualClock`] and
//! advance it, so expiry is tested exactly and no test sleeps to wait for it.
//!
//! Hand-written rather than a crate: `quanta`'s mock clock (already a dependency of `moka`)
//! gives a monotonic `Instant` only, but the stores also need wall-clock time (token `exp` is in
//! Unix seconds, quota days and Redis-compatible rate state in Unix microseconds); Tokio's paused
//! time moves only Tokio's timers. One advance must move both readings together, which is ~40
//! lines here. Timers (upstream idle, body timeouts) stay on Tokio's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A source of the current time, cheap to clone. Cloned into every store that expires things.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Manual>>);

#[derive(Debug)]
struct Manual {
    wall: SystemTime,
    mono: Instant,
    /// Microseconds advanced since creation.
    advanced_us: AtomicU64,
}

impl Clock {
    /// The machine's clocks.
    pub fn system() -> Self {
        Self(None)
    }

    /// Wall-clock time (Unix-based: token `exp`, quota days, rate state).
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(manual) => manual.wall + manual.advanced(),
        }
    }

    /// Monotonic time (in-process expiry that no other process compares).
    pub fn instant(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(manual) => manual.mono + manual.advanced(),
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    }
}

impl Manual {
    fn advanced(&self) -> Duration {
        Duration::from_micros(self.advanced_us.load(Ordering::SeqCst))
    }
}

/// A clock that stands still until advanced; every [`Clock`] taken from it reads the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Manual>);

impl ManualClock {
    /// A clock starting at the machine's current time.
    pub fn new() -> Self {
        Self(Arc::new(Manual {
            wall: SystemTime::now(),
            mono: Instant::now(),
            advanced_us: AtomicU64::new(0),
        }))
    }

    /// The handle to give the stores.
    pub fn clock(&self) -> Clock {
        Clock(Some(self.0.clone()))
    }

    /// Moves time forward by `by` for every store holding this clock.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.0.advanced_us.fetch_add(by, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced_and_moves_both_readings() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        let (wall, mono) = (clock.now(), clock.instant());
        std::thread::yield_now();
        assert_eq!((clock.now(), clock.instant()), (wall, mono));
        manual.advance(Duration::from_secs(90));
        assert_eq!(clock.now().duration_since(wall).unwrap(), Duration::from_secs(90));
        assert_eq!(clock.instant() - mono, Duration::from_secs(90));
        assert_eq!(manual.clock().now(), clock.now(), "every handle reads the same time");
    }

    #[test]
    fn the_system_clock_reads_the_machines_time() {
        let before = SystemTime::now();
        let read = Clock::system().now();
        assert!(read >= before && read <= SystemTime::now());
    }
}
