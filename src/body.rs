//! Body types on both sides of the proxy. Small request bodies are buffered so that they can
//! be replayed after a 401; anything larger streams through with its size capped. Zuora's
//! answer streams back holding the tenant's concurrency slot until its last byte.

use bytes::Bytes;
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the caller receives: Zuora's streamed body, or a body the proxy wrote.
pub type ResponseBody = Either<GuardedBody<Incoming>, Full<Bytes>>;

/// What Zuora receives: a buffered (replayable) body, or the caller's stream under a cap.
pub type UpstreamBody = Either<Full<Bytes>, Limited<Incoming>>;

/// Bodies at most this large are buffered, so a request can be replayed.
pub const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(bytes.into()))
}

/// A body holding `guard` (a concurrency slot, an in-flight count, a connection's busy mark)
/// until the body ends or is dropped.
pub struct GuardedBody<B> {
    inner: B,
    guard: Option<Box<dyn Send + Sync>>,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: impl Send + Sync + 'static) -> GuardedBody<B> {
        GuardedBody {
            inner,
            guard: Some(Box::new(guard)),
        }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Release as soon as the body is done, not when hyper drops it.
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
