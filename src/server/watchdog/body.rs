//! A watched response body: reports its polls to the task's [`Watch`], and keeps the response
//! incomplete until its last chunk left hyper.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use super::Watch;

#[derive(Clone, Copy)]
pub(super) enum Gave {
    Data(u64),
    /// Pending: the body waits for its source.
    Nothing,
    End,
}

/// A response body that reports its polls to the task's [`Watch`]; every chunk it gives carries
/// a share of its [`Completion`].
pub(super) struct Watched<G> {
    pub(super) body: Body,
    pub(super) completion: Arc<Completion<G>>,
}

/// Holds a watched response's guard until the body and every chunk it gave are dropped, then
/// marks the response complete.
pub(super) struct Completion<G> {
    pub(super) watch: Watch,
    pub(super) generation: u64,
    /// In a mutex only so that the completion is `Sync` (shared by chunks) whatever `G` is.
    pub(super) _guard: Mutex<G>,
    /// The body once it has ended: the guards inside it (a relay slot, a budget charge) are
    /// given back with the response's own, when its last chunk has left.
    pub(super) ended: Mutex<Option<Body>>,
}

impl<G> Drop for Completion<G> {
    fn drop(&mut self) {
        self.watch.ended(self.generation);
    }
}

/// A chunk of a watched body, keeping its response incomplete until hyper releases it.
pub(super) struct Chunk<G> {
    pub(super) bytes: Bytes,
    pub(super) _completion: Arc<Completion<G>>,
}

impl<G> AsRef<[u8]> for Chunk<G> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl<G> Unpin for Watched<G> {}

impl<G: Send + 'static> http_body::Body for Watched<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let (gave, polled) = match polled {
            Poll::Pending => (Gave::Nothing, Poll::Pending),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    let chunk = Bytes::from_owner(Chunk {
                        bytes,
                        _completion: self.completion.clone(),
                    });
                    (Gave::Data(len), Poll::Ready(Some(Ok(Frame::data(chunk)))))
                }
                // Trailers: the last frame.
                Err(frame) => (Gave::End, Poll::Ready(Some(Ok(frame)))),
            },
            Poll::Ready(other) => (Gave::End, Poll::Ready(other)),
        };
        if matches!(gave, Gave::End) || self.body.is_end_stream() {
            // Kept until the chunks it gave are released (see `Completion::ended`).
            let ended = std::mem::replace(&mut self.body, Body::empty());
            *self.completion.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
        }
        self.completion.watch.polled(self.completion.generation, gave);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
