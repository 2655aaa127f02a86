//! The mock's concurrency limit, as Zuora enforces it: API requests in flight (from the
//! arrival of a head until its answer's body has been sent), the peak, and the 429s.

use super::api::EXCEEDED_LIMIT;
use super::{json_bytes, wait_count};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The counts behind the limit.
pub(super) struct Flight {
    in_flight: watch::Sender<usize>,
    /// Requests in flight that were let in under the limit (the rest get a 429).
    admitted: AtomicUsize,
    peak: AtomicUsize,
    rejected: AtomicUsize,
}

/// One API request in flight, until dropped.
pub(super) struct InFlight {
    flight: Arc<Flight>,
    admitted: bool,
}

impl Flight {
    pub(super) fn new() -> Flight {
        Flight {
            in_flight: watch::channel(0).0,
            admitted: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        }
    }

    /// Counts a request whose head has just arrived.
    pub(super) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.send_modify(|n| {
            *n += 1;
            self.peak.fetch_max(*n, Ordering::SeqCst);
        });
        InFlight {
            flight: self.clone(),
            admitted: false,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    pub(super) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(super) fn rejected(&self) -> usize {
        self.rejected.load(Ordering::SeqCst)
    }

    /// Places left under `limit` now.
    pub(super) fn remaining(&self, limit: usize) -> usize {
        limit.saturating_sub(self.admitted.load(Ordering::SeqCst))
    }

    pub(super) async fn wait_in_flight(&self, n: usize, timeout: Duration) -> bool {
        wait_count(&self.in_flight, n, timeout).await
    }

    pub(super) async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut rx = self.in_flight.subscribe();
        let idle = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await.is_ok();
        idle
    }
}

impl InFlight {
    /// Lets the request in if fewer than `limit` are being handled (always without a limit);
    /// otherwise counts it as rejected.
    pub(super) fn admit(&mut self, limit: Option<usize>) -> bool {
        let admitted = self
            .flight
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                limit.is_none_or(|limit| n < limit).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.admitted = true;
        } else {
            self.flight.rejected.fetch_add(1, Ordering::SeqCst);
        }
        admitted
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.admitted {
            self.flight.admitted.fetch_sub(1, Ordering::SeqCst);
        }
        self.flight.in_flight.send_modify(|n| *n -= 1);
    }
}

/// Zuora's 429 for a request over the concurrency limit.
pub(super) fn rejection(limit: usize, retry_after_secs: Option<u64>) -> Response<Bytes> {
    let mut r = json_bytes(StatusCode::TOO_MANY_REQUESTS, EXCEEDED_LIMIT);
    limit_headers(r.headers_mut(), limit, 0);
    if let Some(secs) = retry_after_secs {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// Zuora's concurrency headers (it sends them on `/v1` operations and on its 429s).
pub(super) fn limit_headers(headers: &mut HeaderMap, limit: usize, remaining: usize) {
    headers.insert("concurrency-limit-type", HeaderValue::from_static("Default"));
    headers.insert("concurrency-limit-limit", HeaderValue::from(limit));
    headers.insert("concurrency-limit-remaining", HeaderValue::from(remaining));
}
