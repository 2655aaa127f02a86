//! Body types on both sides of the proxy. Small request bodies are buffered so that they can
//! be replayed after a 401; anything larger streams through with its size capped. Every
//! answer's body is a [`WatchedBody`]: whoever watches it (the request's access record)
//! learns how many bytes went out and how the body ended, and a stalled upstream body is cut
//! after its read timeout.

use bytes::{Buf, Bytes};
use http::{header, HeaderMap};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// What the caller receives: Zuora's streamed body, or a body the proxy wrote.
pub type ResponseBody = WatchedBody<Either<ZuoraBody, Full<Bytes>>>;

/// What Zuora receives: a buffered (replayable) body, or the caller's stream under a cap.
pub type UpstreamBody = Either<Full<Bytes>, CallerBody<Limited<Incoming>>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies at most this large are buffered, so a request can be replayed.
pub const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

/// Whether a message's framing is one the proxy decodes: no `Transfer-Encoding`, or exactly
/// `chunked`. hyper decodes the final `chunked` and hands on the rest still coded (`gzip,
/// chunked`), and it would decode a doubled `chunked` once, so anything else must be refused
/// rather than passed on as if it were the message's bytes.
pub fn transfer_coding_is_decoded(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// A body the proxy wrote itself, with nobody watching it.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    WatchedBody {
        inner: Either::Right(Full::new(bytes.into())),
        watch: None,
        idle: None,
    }
}

/// Zuora's answer body: hyper's, and what to do once it has been read to its end (the
/// client hands its connection back to the pool then). Dropped or failed before its end, the
/// body takes its connection with it: hyper closes a connection whose answer was not read.
pub struct ZuoraBody {
    inner: Incoming,
    at_end: Option<AtEnd>,
}

/// Run once, when a [`ZuoraBody`] has been read to its end.
pub type AtEnd = Box<dyn FnOnce() + Send + Sync>;

impl ZuoraBody {
    pub fn new(inner: Incoming, at_end: Option<AtEnd>) -> ZuoraBody {
        ZuoraBody { inner, at_end }
    }

    fn ended(&mut self) {
        if let Some(at_end) = self.at_end.take() {
            at_end();
        }
    }
}

impl Body for ZuoraBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended(),
            // A reader may stop at the frame that ends the body and never ask for more.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.ended(),
            Poll::Ready(Some(Err(_))) => self.at_end = None,
            _ => {}
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

impl Drop for ZuoraBody {
    fn drop(&mut self) {
        // An empty body (a 204, a HEAD, `Content-Length: 0`) ends without ever being read.
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

/// How a watched body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte was handed on.
    Complete,
    /// The source failed (for Zuora's body: the connection broke before its end).
    Failed,
    /// No byte arrived within the read timeout; the body was cut.
    TimedOut,
    /// Dropped before its end: the caller went away.
    Abandoned,
}

/// Told about a body's bytes and, once, its end.
pub trait Watch: Send + Sync {
    fn data(&mut self, bytes: usize);
    fn end(&mut self, how: BodyEnd);
}

/// A body that tells its [`Watch`] what became of it, and that fails with
/// [`BodyReadTimeout`] when its source sends nothing for `idle`.
pub struct WatchedBody<B: Body> {
    inner: B,
    watch: Option<Box<dyn Watch>>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

/// The source of a body sent nothing within its read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no body data within {0:?}")]
pub struct BodyReadTimeout(Duration);

impl<B: Body> WatchedBody<B> {
    /// `inner` watched by `watch`; with `idle`, each read must bring data within it.
    pub fn new(inner: B, watch: Box<dyn Watch>, idle: Option<Duration>) -> WatchedBody<B> {
        WatchedBody {
            inner,
            watch: Some(watch),
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    fn end(&mut self, how: BodyEnd) {
        if let Some(mut watch) = self.watch.take() {
            watch.end(how);
        }
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Pending => {
                if let Some((limit, sleep)) = &mut self.idle {
                    if sleep.as_mut().poll(cx).is_ready() {
                        let limit = *limit;
                        self.end(BodyEnd::TimedOut);
                        return Poll::Ready(Some(Err(BodyReadTimeout(limit).into())));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.end(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                self.end(BodyEnd::Failed);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if let Some(watch) = &mut self.watch {
                    watch.data(len);
                }
                if let Some((limit, sleep)) = &mut self.idle {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *limit);
                }
                // hyper stops polling a body that says it has ended: end it here, before
                // the last bytes go out.
                if self.inner.is_end_stream() {
                    self.end(BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        // Nothing left to poll: an empty body is complete; anything else was cut short.
        let how = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::Abandoned
        };
        self.end(how);
    }
}

/// The caller's body streamed toward Zuora, telling its [`CallerProgress`] whether it failed
/// or is waiting for the caller. When the upstream request fails or runs out of time, hyper's
/// error cannot say which side was at fault; this can: a malformed chunk or a caller that
/// stopped sending is the caller's error, not Zuora's.
pub struct CallerBody<B> {
    inner: B,
    progress: CallerProgress,
}

/// Where a [`CallerBody`] stands, and how many of its bytes were read; cheap to clone and
/// read from another task.
#[derive(Clone, Debug, Default)]
pub struct CallerProgress(Arc<Progress>);

#[derive(Debug, Default)]
struct Progress {
    state: AtomicU8,
    bytes: AtomicU64,
}

const SENDING: u8 = 0;
/// Its last poll found nothing from the caller: whoever waits, waits for the caller.
const WAITING: u8 = 1;
const ENDED: u8 = 2;
const FAILED: u8 = 3;

impl CallerProgress {
    /// The caller's body could not be read (malformed, over the cap, the caller gone).
    pub fn failed(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == FAILED
    }

    /// The body is not over and the last read of it was left waiting for the caller's bytes.
    pub fn waiting_on_caller(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == WAITING
    }

    /// Body bytes read from the caller so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        self.0.state.store(state, Ordering::Release);
    }
}

impl<B> CallerBody<B> {
    pub fn new(inner: B) -> CallerBody<B> {
        CallerBody {
            inner,
            progress: CallerProgress::default(),
        }
    }

    pub fn progress(&self) -> CallerProgress {
        self.progress.clone()
    }
}

impl<B: Body + Unpin> Body for CallerBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let state = match &polled {
            Poll::Pending => WAITING,
            Poll::Ready(Some(Err(_))) => FAILED,
            Poll::Ready(None) => ENDED,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => ENDED,
            Poll::Ready(Some(Ok(_))) => SENDING,
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.progress
                    .0
                    .bytes
                    .fetch_add(data.remaining() as u64, Ordering::AcqRel);
            }
        }
        self.progress.set(state);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body holding `guard` (a connection's busy mark) until the body ends or is dropped.
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<(usize, Vec<BodyEnd>)>>);

    impl Watch for Seen {
        fn data(&mut self, bytes: usize) {
            self.0.lock().unwrap().0 += bytes;
        }
        fn end(&mut self, how: BodyEnd) {
            self.0.lock().unwrap().1.push(how);
        }
    }

    #[test]
    fn only_plain_chunked_is_a_decoded_transfer_coding() {
        let cases: [(&[&str], bool); 8] = [
            (&[], true),
            (&["chunked"], true),
            (&["Chunked "], true),
            (&["gzip, chunked"], false),
            (&["gzip", "chunked"], false),
            (&["chunked, chunked"], false),
            (&["identity"], false),
            (&["gzip"], false),
        ];
        for (values, decoded) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            assert_eq!(transfer_coding_is_decoded(&headers), decoded, "{values:?}");
        }
    }

    #[tokio::test]
    async fn a_body_sent_whole_ends_complete_once() {
        let seen = Seen::default();
        let body = WatchedBody::new(Full::new(Bytes::from_static(b"hello")), Box::new(seen.clone()), None);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(*seen.0.lock().unwrap(), (5, vec![BodyEnd::Complete]));
    }

    /// A body fed through a channel: pending until something is sent.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// A body of one frame, then an error.
    fn broken() -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("bad chunk")),
        ]))
    }

    #[tokio::test]
    async fn a_caller_body_tells_whether_it_waits_for_the_caller_or_failed() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = CallerBody::new(Chan(rx));
        let progress = body.progress();
        assert!(!progress.waiting_on_caller() && !progress.failed());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(progress.waiting_on_caller());
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(!progress.waiting_on_caller(), "a frame came: nobody waits");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(!progress.waiting_on_caller() && !progress.failed(), "ended");

        let mut body = CallerBody::new(broken());
        let progress = body.progress();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(!progress.failed());
        assert!(body.frame().await.unwrap().is_err());
        assert!(progress.failed());
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_abandoned() {
        let seen = Seen::default();
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        drop(WatchedBody::new(Chan(rx), Box::new(seen.clone()), None));
        assert_eq!(seen.0.lock().unwrap().1, vec![BodyEnd::Abandoned]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_its_read_timeout() {
        let seen = Seen::default();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        let mut body = WatchedBody::new(Chan(rx), Box::new(seen.clone()), Some(Duration::from_secs(30)));
        assert!(body.frame().await.unwrap().is_ok());
        let started = tokio::time::Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<BodyReadTimeout>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(body);
        drop(tx);
        assert_eq!(*seen.0.lock().unwrap(), (2, vec![BodyEnd::TimedOut]));
    }
}
