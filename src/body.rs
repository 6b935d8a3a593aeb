//! [`held`]: a response body that keeps a guard alive until hyper drops the body (its end, or
//! the client going away): how a request in flight, a budget charge or a stream slot is given
//! back exactly when the response is done.
//!
//! Written by hand because `http_body_util::BodyExt::map_frame` can carry a guard but drops the
//! size hint, which would turn every `content-length` response into a chunked one.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// `body`, holding `guard` until the body is dropped.
pub fn held<G: Send + 'static>(body: Body, guard: G) -> Body {
    Body::new(Held { body, _guard: guard })
}

struct Held<G> {
    body: Body,
    _guard: G,
}

impl<G: Send + 'static> http_body::Body for Held<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// `Held` is Unpin whatever `G` is: the guard is never pinned.
impl<G> Unpin for Held<G> {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use http_body::Body as _;

    use super::*;

    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_guard_lives_as_long_as_the_body_and_the_size_is_kept() {
        let dropped = Arc::new(AtomicBool::new(false));
        let body = held(Body::from("twelve bytes"), Flag(dropped.clone()));
        assert_eq!(body.size_hint().exact(), Some(12));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(body);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
