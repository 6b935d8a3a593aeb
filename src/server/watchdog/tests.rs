use axum::body::Bytes;

use super::*;

fn progress(window_ms: u64, min_bytes: u64) -> Progress {
    Progress {
        window: Duration::from_millis(window_ms),
        min_bytes,
    }
}

fn watched(bounds: Bounds) -> Tracked {
    let now = Instant::now();
    Tracked {
        generation: 1,
        started: now,
        bounds,
        moved: now,
        phase: Phase::Owed {
            window: now,
            taken: 0,
            handed: 0,
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_nobody_takes_is_cut_after_one_window() {
    let mut response = watched(Bounds::default());
    let rule = progress(1000, 1);
    let start = Instant::now();
    assert_eq!(response.check(rule, start), Ok(Some(start + Duration::from_secs(1))));
    assert_eq!(response.check(rule, start + Duration::from_secs(1)), Err(Cut::Progress));
}

/// Polls `body` for one frame, as hyper does when the client took the previous one.
async fn take(body: &mut Body) {
    use http_body_util::BodyExt;
    body.frame().await.expect("a frame").expect("data");
}

#[tokio::test(start_paused = true)]
async fn each_window_must_see_the_minimum_taken_and_waiting_for_the_source_does_not_count() {
    let watch = Watch::new(progress(1000, 100));
    let chunks = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 60])));
    let mut body = watch.wrap(Body::from_stream(chunks), Bounds::default(), (), Arc::new(|| {}));
    let start = Instant::now();
    let second = Duration::from_secs(1);
    // Three polls: the first two frames (120 bytes) were taken in the first window.
    for _ in 0..3 {
        take(&mut body).await;
    }
    assert_eq!(watch.check(start + second), Ok(Some(start + 2 * second)));
    // One more frame (60 bytes) in the second window: below the minimum.
    take(&mut body).await;
    assert_eq!(watch.check(start + 2 * second), Err(Cut::Progress));

    // A body waiting for its source owes nothing, however long.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let pending = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut body = watch.wrap(pending, Bounds::default(), (), Arc::new(|| {}));
    let polled = futures_util::poll!(std::pin::pin!(http_body_util::BodyExt::frame(&mut body)));
    assert!(polled.is_pending());
    assert_eq!(watch.check(start + 3600 * second), Ok(None));
}

#[tokio::test(start_paused = true)]
async fn a_response_is_complete_when_its_last_chunk_is_released_not_when_its_body_ends() {
    let watch = Watch::new(progress(1000, 1));
    let mut body = watch.wrap(Body::from("answer"), Bounds::default(), (), Arc::new(|| {}));
    use http_body_util::BodyExt;
    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(body.frame().await.is_none());
    drop(body);
    assert!(watch.watching(), "complete while its chunk is still queued");
    drop(chunk);
    assert!(!watch.watching());
}

#[tokio::test(start_paused = true)]
async fn the_stream_bounds_pass_after_their_grace() {
    let mut response = watched(Bounds {
        lifetime: Some(Duration::from_secs(3)),
        idle: Some(Duration::from_secs(2)),
    });
    response.phase = Phase::Source;
    let start = Instant::now();
    assert_eq!(
        response.check(progress(1000, 1), start),
        Ok(Some(start + Duration::from_secs(3)))
    );
    assert_eq!(
        response.check(progress(1000, 1), start + Duration::from_secs(3)),
        Err(Cut::Movement)
    );
    response.moved = start + Duration::from_secs(3);
    assert_eq!(
        response.check(progress(1000, 1), start + Duration::from_secs(4)),
        Err(Cut::Lifetime)
    );
}
