//! Waiting between attempts: exponential backoff with jitter, and the server's own hint
//! (`Retry-After`, `RateLimit-Reset`) when it gives one.

use http::HeaderMap;
use std::time::Duration;

/// Exponential backoff with equal jitter: the n-th wait lies between half and all of
/// `min(base * 2^n, cap)`, so clients that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, failures: 0 }
    }

    /// The next wait; `unit` is uniform in [0, 1) (pass `fastrand::f64()`).
    pub fn next(&mut self, unit: f64) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.failures.min(16)).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        ceiling / 2 + (ceiling / 2).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `Retry-After` first, else `RateLimit-Reset`; both in seconds. (An HTTP-date `Retry-After`
/// is ignored, and backoff applies.)
pub fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    ["retry-after", "ratelimit-reset"].iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        value.parse::<u64>().ok().map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_inside_the_band() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let lows: Vec<Duration> = (0..9).map(|_| b.next(0.0)).collect();
        assert_eq!(
            lows,
            vec![
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000),
                ms(30000),
                ms(30000)
            ]
        );
        let mut b = Backoff::new(ms(100), ms(5000));
        assert_eq!(b.next(1.0), ms(100));
        assert_eq!(b.next(0.5), ms(150));
        for _ in 0..100 {
            assert!(b.next(fastrand::f64()) <= ms(5000));
        }
    }

    #[test]
    fn retry_hint_prefers_retry_after() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        h.insert("ratelimit-reset", "7".parse().unwrap());
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(
            retry_hint(&h),
            Some(Duration::from_secs(7)),
            "a date falls back to RateLimit-Reset"
        );
    }
}
