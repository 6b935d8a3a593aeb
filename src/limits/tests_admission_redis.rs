//! Admission on Redis, edges found by mutation (TESTING.md): each operation class keeps its own
//! rate bucket in the shared store, so spending one class's burst leaves the others whole.

use super::tests::remaining;
use super::tests_redis::{replicas, ALICE};
use super::*;
use crate::error::OnTheWire;

#[tokio::test]
async fn on_redis_each_class_has_its_own_rate_bucket() {
    let (a, b) = replicas(|_| {});
    // pro cancel: burst 20, no refill within the test (`no_refill`).
    for n in 0..20 {
        let replica = if n % 2 == 0 { &a } else { &b };
        replica.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap();
    }
    assert_eq!(
        a.admit(&ALICE, OpClass::Cancel, None, 0).await.unwrap_err().code(),
        "rate_limited"
    );
    // Poll (burst 120) and upload (burst 20) are untouched by the cancels: one spent of each.
    let poll = b.admit(&ALICE, OpClass::Poll, None, 0).await.unwrap();
    assert_eq!(remaining(&poll.headers()[1].1, "poll"), 119);
    let upload = a.admit(&ALICE, OpClass::Upload, None, 0).await.unwrap();
    assert_eq!(remaining(&upload.headers()[1].1, "upload"), 19);
    // What is left is read from the same per-class keys.
    let usage = b.usage(&ALICE).await.unwrap();
    let left = |name: &str| {
        usage
            .iter()
            .find(|state| state.name == name)
            .map(|state| state.remaining)
    };
    assert_eq!(
        (left("cancel"), left("poll"), left("upload")),
        (Some(0), Some(119), Some(19))
    );
}
