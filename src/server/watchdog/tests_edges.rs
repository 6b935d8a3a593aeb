//! Watchdog edges found by mutation testing (TESTING.md, round 2): the progress rule's numbers,
//! the reasons a cut is logged with, responses told apart on one task, and the guards of a body
//! that ended on its last data frame.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use http_body_util::BodyExt;

use super::*;

#[test]
fn the_progress_rule_asks_the_minimum_rate_times_the_window_and_at_least_a_byte() {
    let rule = |rate: u64, window_ms: u64| {
        let progress = Progress::of(&Connections {
            min_send_bytes_per_second: rate,
            write_timeout: Duration::from_millis(window_ms),
            ..Connections::default()
        });
        (progress.window, progress.min_bytes)
    };
    assert_eq!(rule(8 * 1024, 30_000), (Duration::from_secs(30), 245_760));
    assert_eq!(rule(1000, 1500), (Duration::from_millis(1500), 1500));
    // Rounded up; never zero (a window must see one frame).
    assert_eq!(rule(3, 500), (Duration::from_millis(500), 2));
    assert_eq!(rule(0, 500), (Duration::from_millis(500), 1));
}

#[test]
fn each_cut_is_logged_with_its_own_reason() {
    let reasons = [Cut::Progress, Cut::Lifetime, Cut::Movement].map(Cut::reason);
    assert!(reasons[0].contains("client took too little"), "{reasons:?}");
    assert!(reasons[1].contains("lifetime"), "{reasons:?}");
    assert!(reasons[2].contains("nothing moved"), "{reasons:?}");
}

/// Two responses on one task (a kept-alive HTTP/1 connection): the earlier one's completion, when
/// it comes late, does not end the watch of the current one.
#[tokio::test(start_paused = true)]
async fn a_late_completion_of_an_earlier_response_leaves_the_current_one_watched() {
    let watch = Watch::new(Progress {
        window: Duration::from_secs(1),
        min_bytes: 1,
    });
    let mut first = watch.wrap(Body::from("first"), Bounds::default(), (), Arc::new(|| {}));
    let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
    drop(first);
    let second = watch.wrap(Body::from("second"), Bounds::default(), (), Arc::new(|| {}));
    drop(chunk);
    assert!(
        watch.watching(),
        "the first response's completion ended the second's watch"
    );
    drop(second);
    assert!(!watch.watching());
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A body that says it has ended with its last data frame (hyper polls it no more): the guards
/// inside it are given back when that frame leaves, not when the watched body is dropped.
#[tokio::test(start_paused = true)]
async fn the_guards_inside_a_body_that_ended_with_its_data_live_until_its_last_chunk_left() {
    let watch = Watch::new(Progress {
        window: Duration::from_secs(1),
        min_bytes: 1,
    });
    let dropped = Arc::new(AtomicBool::new(false));
    let inner = crate::body::held(Body::from(Bytes::from_static(b"answer")), SetOnDrop(dropped.clone()));
    let mut body = watch.wrap(inner, Bounds::default(), (), Arc::new(|| {}));
    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(http_body::Body::is_end_stream(&body));
    drop(body);
    assert!(!dropped.load(Ordering::SeqCst), "the guard left before the last chunk");
    drop(chunk);
    assert!(dropped.load(Ordering::SeqCst));
}

/// Counts its wakes.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A watchdog whose task is done while its response's last chunk is still out (an HTTP/2
/// stream, whose chunks h2 releases on the connection's task) waits for the response to
/// complete, and is woken then through the waker of its latest poll (the `Future` contract).
#[tokio::test(start_paused = true)]
async fn a_watchdog_left_watching_is_woken_through_its_latest_waker_when_the_response_completes() {
    let watch = Watch::new(Progress {
        window: Duration::from_secs(1),
        min_bytes: 1,
    });
    let mut body = watch.wrap(Body::from("answer"), Bounds::default(), (), Arc::new(|| {}));
    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
    drop(body);
    let mut watchdog = Watchdog::new(async {}, watch.clone());
    let (first, latest) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
    for wakes in [&first, &latest] {
        let waker = futures_util::task::waker(wakes.clone());
        let polled = Pin::new(&mut watchdog).poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending(), "ended while its response's chunk is out");
    }
    drop(chunk);
    assert_eq!(
        (first.0.load(Ordering::SeqCst), latest.0.load(Ordering::SeqCst)),
        (0, 1)
    );
    let waker = futures_util::task::waker(latest.clone());
    assert!(Pin::new(&mut watchdog)
        .poll(&mut Context::from_waker(&waker))
        .is_ready());
}
