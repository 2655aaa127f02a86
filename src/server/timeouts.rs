//! Connection timeouts that hyper's own `header_read_timeout` cannot express separately:
//! a new request's head must arrive within `header_read_timeout` of its first byte (or of the
//! accept), and a keep-alive connection with no request in flight is closed after
//! `idle_timeout` without traffic. A request in flight is never cut here: that is
//! `request_timeout`'s job.

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection, shared by the connection's service and its IO.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
}

impl Activity {
    /// Marks a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// A request in flight; see [`Activity::begin`].
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head: `header_read_timeout` runs.
    Head,
    /// A request is in flight: no deadline here.
    Busy,
    /// Nothing in flight, nothing received: `idle_timeout` runs from the last traffic.
    Idle,
}

/// An IO wrapper enforcing the header and idle deadlines.
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    last_traffic: Instant,
}

impl<T> TimedIo<T> {
    /// A new connection starts waiting for its first request head.
    pub fn new(inner: T, activity: Arc<Activity>, header_timeout: Duration, idle_timeout: Duration) -> TimedIo<T> {
        let now = Instant::now();
        TimedIo {
            inner,
            activity,
            header_timeout,
            idle_timeout,
            phase: Phase::Head,
            sleep: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            last_traffic: now,
        }
    }

    fn on_bytes_read(&mut self) {
        let now = Instant::now();
        self.last_traffic = now;
        if self.activity.busy() {
            self.phase = Phase::Busy;
        } else if self.phase != Phase::Head {
            // First byte of the next request: its head must now arrive in time.
            self.phase = Phase::Head;
            self.sleep.as_mut().reset(now + self.header_timeout);
        }
    }

    fn note_write(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.last_traffic = Instant::now();
        }
    }

    /// Called when a read is pending: is a deadline past?
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.busy() {
            self.phase = Phase::Busy;
            return Poll::Pending;
        }
        if self.phase == Phase::Busy {
            // The request just finished: the connection is idle from now.
            self.phase = Phase::Idle;
            self.last_traffic = Instant::now();
            self.sleep.as_mut().reset(self.last_traffic + self.idle_timeout);
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let idle_until = self.last_traffic + self.idle_timeout;
            if self.phase == Phase::Idle && idle_until > Instant::now() {
                // Response bytes went out since the timer was set: keep the connection.
                self.sleep.as_mut().reset(idle_until);
                continue;
            }
            let what = if self.phase == Phase::Head { "request head not received in time" } else { "idle keep-alive connection" };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&result);
        result
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

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&result);
        result
    }
}
