//! Connection deadlines that hyper's own `header_read_timeout` cannot tell apart: a request
//! head must arrive within `header_read_timeout` of its first byte (or of the accept), and a
//! keep-alive connection with no request in flight is closed after `idle_timeout` without
//! traffic. A request in flight is never cut here: that is `request_timeout`'s job.
//!
//! The IO wrapper only records traffic; a watchdog running beside the connection decides,
//! so the deadlines hold whether or not hyper is reading at the time. The watchdog is never
//! woken per request: it re-reads the recorded times at least every `min(header, idle)`.
//! The IO wrapper also hands each new request head to [`HeadScan`].

use super::framing::HeadScan;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What a connection is doing, shared by its service, its IO and its watchdog. Times are
/// milliseconds since the connection started.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_traffic_ms: AtomicU64,
    /// When the head being awaited started (first byte, or the accept), plus one; 0 = none.
    head_started: AtomicU64,
    /// A request finished: the next bytes read start a new head.
    head_expected: AtomicBool,
    /// What the scan said of the head just read (see [`HeadVerdict`]).
    head_verdict: AtomicU8,
}

impl Activity {
    /// A new connection waits for its first request head from now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_traffic_ms: AtomicU64::new(0),
            head_started: AtomicU64::new(1),
            head_expected: AtomicBool::new(true),
            head_verdict: AtomicU8::new(HeadVerdict::Unscanned as u8),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks a request in flight until the guard drops, with what the scan said of its head.
    pub fn begin(self: &Arc<Self>) -> (Busy, HeadVerdict) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        let verdict = match self.head_verdict.swap(HeadVerdict::Unscanned as u8, Ordering::AcqRel) {
            v if v == HeadVerdict::Clean as u8 => HeadVerdict::Clean,
            v if v == HeadVerdict::Ambiguous as u8 => HeadVerdict::Ambiguous,
            _ => HeadVerdict::Unscanned,
        };
        (Busy(self.clone()), verdict)
    }

    /// How long the head being awaited has been arriving (zero when none is).
    pub fn head_elapsed(&self) -> Duration {
        match self.head_started.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            started => Duration::from_millis(self.now_ms().saturating_sub(started - 1)),
        }
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_traffic_ms.store(now, Ordering::Release);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // The first byte of the next request starts its head deadline.
            let _ = self
                .head_started
                .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn on_write(&self) {
        self.last_traffic_ms.store(self.now_ms(), Ordering::Release);
    }
}

/// What the listener saw of a request's raw head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Not scanned: the request was pipelined behind another one.
    Unscanned = 0,
    /// Scanned; not both Content-Length and Transfer-Encoding.
    Clean = 1,
    /// Scanned; both Content-Length and Transfer-Encoding.
    Ambiguous = 2,
}

/// A request in flight; see [`Activity::begin`].
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_traffic_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.head_expected.store(true, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when the connection should be closed, with the reason.
pub async fn watchdog(activity: Arc<Activity>, header_timeout: Duration, idle_timeout: Duration) -> &'static str {
    let header_ms = header_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    // Deadlines move without telling the watchdog, so it looks again at least this often.
    let recheck_ms = header_ms.min(idle_ms).max(1);
    loop {
        let (deadline, reason) = if activity.in_flight.load(Ordering::Acquire) > 0 {
            (None, "")
        } else {
            match activity.head_started.load(Ordering::Acquire) {
                0 => (
                    Some(activity.last_traffic_ms.load(Ordering::Acquire) + idle_ms),
                    "idle keep-alive connection",
                ),
                started => (Some(started - 1 + header_ms), "request head not received in time"),
            }
        };
        let now = activity.now_ms();
        if deadline.is_some_and(|at| at <= now) {
            return reason;
        }
        let wake = deadline.unwrap_or(u64::MAX).min(now + recheck_ms);
        tokio::time::sleep(Duration::from_millis(wake - now)).await;
    }
}

/// An IO wrapper that tells the [`Activity`] about traffic and scans request heads.
pub struct TrafficIo<T> {
    inner: T,
    activity: Arc<Activity>,
    head: HeadScan,
}

impl<T> TrafficIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> TrafficIo<T> {
        TrafficIo {
            inner,
            activity,
            head: HeadScan::default(),
        }
    }

    fn on_read(&mut self, bytes: &[u8]) {
        self.activity.on_read();
        if self.activity.head_expected.swap(false, Ordering::AcqRel) {
            self.head.start();
        }
        if let Some(ambiguous) = self.head.feed(bytes) {
            let verdict = if ambiguous {
                HeadVerdict::Ambiguous
            } else {
                HeadVerdict::Clean
            };
            self.activity.head_verdict.store(verdict as u8, Ordering::Release);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrafficIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrafficIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn head_then_busy_then_idle() {
        let activity = Activity::new();
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        // Nothing arrives: the head deadline from the accept.
        let started = Instant::now();
        assert_eq!(
            watchdog(activity.clone(), header, idle).await,
            "request head not received in time"
        );
        assert_eq!(started.elapsed(), header);

        // A request in flight is never cut; once it ends, the idle deadline runs.
        let activity = Activity::new();
        let (busy, _) = activity.begin();
        let dog = tokio::spawn(watchdog(activity.clone(), header, idle));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!dog.is_finished());
        let ended = Instant::now();
        drop(busy);
        assert_eq!(dog.await.unwrap(), "idle keep-alive connection");
        assert_eq!(ended.elapsed(), idle);
    }

    /// A connection that has served one request, watched with a 10 s header deadline and a
    /// 60 s idle timeout.
    fn watched_after_one_request() -> (Arc<Activity>, tokio::task::JoinHandle<&'static str>) {
        let activity = Activity::new();
        drop(activity.begin().0);
        let dog = tokio::spawn(watchdog(
            activity.clone(),
            Duration::from_secs(10),
            Duration::from_secs(60),
        ));
        (activity, dog)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_a_head_starts_the_header_deadline() {
        let (activity, dog) = watched_after_one_request();
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.on_read();
        let first_byte = Instant::now();
        // The watchdog learns of the head at its next look, at most 10 s later.
        assert_eq!(dog.await.unwrap(), "request head not received in time");
        assert_eq!(first_byte.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_an_idle_connection_open() {
        let (activity, dog) = watched_after_one_request();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            activity.on_write();
        }
        assert!(!dog.is_finished());
        let last = Instant::now();
        assert_eq!(dog.await.unwrap(), "idle keep-alive connection");
        assert_eq!(last.elapsed(), Duration::from_secs(60));
    }
}
