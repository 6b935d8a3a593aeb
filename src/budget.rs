//! A process-wide byte budget: counted in KiB on a Tokio semaphore, each holder keeping a
//! [`Charge`] that grows with the bytes it holds and is given back when dropped. Two exist: the
//! answers read whole (`upstream.buffer_budget_bytes`, given back after the client's response body
//! is done) and the request bodies being read (`request.body_budget_bytes`, `input`). A leaf: it
//! uses no other falgate module.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes all buffered answers may hold at once.
#[derive(Debug, Clone)]
pub struct Budget {
    kib: Arc<Semaphore>,
}

/// What one answer holds of the budget.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|permit| permit.num_permits() == 0)
    }

    fn kib(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
    }
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(kib(bytes).min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Grows `charge` to cover `bytes`, if the budget has room now.
    pub fn try_grow(&self, charge: &mut Charge, bytes: usize) -> bool {
        let Some(more) = self.more(charge, bytes) else {
            return true;
        };
        match self.kib.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                charge.add(permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Grows `charge` to cover `bytes`, waiting up to `wait` for room.
    pub async fn grow(&self, charge: &mut Charge, bytes: usize, wait: Duration) -> Result<(), ()> {
        let Some(more) = self.more(charge, bytes) else {
            return Ok(());
        };
        match tokio::time::timeout(wait, self.kib.clone().acquire_many_owned(more)).await {
            Ok(Ok(permit)) => {
                charge.add(permit);
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// KiB free now.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }

    /// The KiB `charge` lacks to cover `bytes`, if any.
    fn more(&self, charge: &Charge, bytes: usize) -> Option<u32> {
        let missing = kib(bytes).saturating_sub(charge.kib());
        (missing > 0).then(|| u32::try_from(missing).unwrap_or(u32::MAX))
    }
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_grow_within_the_budget_and_give_it_back_when_dropped() {
        let budget = Budget::new(10 * 1024);
        let mut first = Charge::default();
        assert!(budget.try_grow(&mut first, 6 * 1024));
        assert!(budget.try_grow(&mut first, 6 * 1024 + 1), "growing by a part KiB");
        assert_eq!(budget.available_kib(), 3);
        let mut second = Charge::default();
        assert!(!budget.try_grow(&mut second, 4 * 1024), "over the budget");
        assert!(second.is_empty());
        drop(first);
        assert_eq!(budget.available_kib(), 10);
        assert!(budget.try_grow(&mut second, 4 * 1024));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_charge_gets_room_when_another_is_dropped_or_gives_up_in_time() {
        let budget = Budget::new(4 * 1024);
        let mut held = Charge::default();
        assert!(budget.try_grow(&mut held, 4 * 1024));
        let mut waiting = Charge::default();
        assert!(budget.grow(&mut waiting, 1024, Duration::from_secs(1)).await.is_err());
        let other = budget.clone();
        let grown = tokio::spawn(async move {
            let mut charge = Charge::default();
            other
                .grow(&mut charge, 2048, Duration::from_secs(5))
                .await
                .map(|()| charge.kib())
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(grown.await.unwrap(), Ok(2));
    }
}
