//! Where the process is in its life: serving, draining (`/readyz` 503, HTTP/1 responses carry
//! `Connection: close`), or past the point where calls still waiting for fal are abandoned
//! (just before the drain timeout cuts connections). One per process, shared by the gate, the
//! server and `app::serve`, which drives it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// The drain state of the process.
#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    abandon: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            abandon: watch::Sender::new(false),
        }
    }
}

impl Lifecycle {
    /// Shutdown began: report not ready, ask clients to close their connections.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The drain timeout is about to cut connections: calls still waiting for fal answer now.
    pub fn abandon(&self) {
        self.abandon.send_replace(true);
    }

    /// Resolves once [`Lifecycle::abandon`] was called (at once if it already was).
    pub async fn abandoned(&self) {
        let mut abandoned = self.abandon.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        abandoned.wait_for(|abandoned| *abandoned).await.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abandoned_resolves_after_abandon_and_at_once_afterwards() {
        let lifecycle = std::sync::Arc::new(Lifecycle::default());
        let waiting = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.abandoned().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        lifecycle.abandon();
        waiting.await.unwrap();
        lifecycle.abandoned().await;
    }
}
