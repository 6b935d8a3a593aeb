//! [`held`]: a response body that keeps a guard alive until hyper drops the body (its end, or
//! the client going away): how a request in flight, a budget charge or a stream slot is given
//! back exactly when the response is done.
//!
//! Written by hand because `http_body_util::BodyExt::map_frame` can carry a guard but drops the
//! size hint, which would turn every `content-length` response into a chunked one.
//!
//! [`Bounds`]: the deadlines a relayed stream carries to the listener, which enforces them
//! outside the body (`crate::server`'s watchdog), since hyper stops polling a body whose client
//! takes nothing.
//!
//! [`in_frames`]: a whole answer handed to hyper 64 KiB at a time, so a guard on it is given
//! back when the client has taken all of it, not when hyper took one 32 MB frame into its write
//! queue (the listener keeps an ended body until its last chunk left, see `crate::server`); a
//! client that stops reading keeps its slot until the progress rule cuts it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// The deadlines of one response beyond the listener's own progress rule, carried as a response
/// extension: set by the relay on event streams, read by the listener (`crate::server`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The stream is reset this long (plus a grace) after it began.
    pub lifetime: Option<Duration>,
    /// The stream is reset when no data moved through it for this long (plus a grace).
    pub idle: Option<Duration>,
}

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

/// Frames handed to hyper at most this large.
const FRAME: usize = 64 * 1024;

/// `bytes` as a body of frames of at most 64 KiB, with its exact length.
pub fn in_frames(bytes: Bytes) -> Body {
    if bytes.len() <= FRAME {
        return Body::from(bytes);
    }
    Body::new(Frames(bytes))
}

struct Frames(Bytes);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.0.len().min(FRAME);
        Poll::Ready(Some(Ok(Frame::data(self.0.split_to(take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len() as u64)
    }
}

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

    #[tokio::test]
    async fn a_large_answer_is_handed_over_in_frames_of_64_kib_with_its_length() {
        use http_body_util::BodyExt;
        let body = in_frames(Bytes::from(vec![7u8; 3 * FRAME + 5]));
        assert_eq!(body.size_hint().exact(), Some(3 * FRAME as u64 + 5));
        let mut body = std::pin::pin!(body);
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [FRAME, FRAME, FRAME, 5]);
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
