//! Waiting between attempts: exponential backoff with jitter, and the server's own hint
//! (`Retry-After`, `RateLimit-Reset`) when it gives one that applies to the answer.

use http::{HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};

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

/// How long the server asks us to wait before trying again, if it says so in a way that applies
/// to this answer. Zuora sends `RateLimit-*` on every answer, so the window's reset is only a
/// hint when the window is what refused us:
/// - `Retry-After` (delta-seconds or an HTTP-date, RFC 9110 §10.2.3) on a 429 or a 503; a date
///   already past means "now";
/// - else `RateLimit-Reset` (seconds) on a 429, or on any answer whose `RateLimit-Remaining`
///   is `0`;
/// - else `None`: the caller's own backoff applies.
pub fn server_hint(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let asks_to_wait = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = header_text(headers, "retry-after")
        .filter(|_| asks_to_wait)
        .and_then(|value| retry_after(value, now));
    retry_after.or_else(|| {
        let window_spent = header_text(headers, "ratelimit-remaining").and_then(delta_seconds) == Some(0);
        if status == StatusCode::TOO_MANY_REQUESTS || window_spent {
            header_text(headers, "ratelimit-reset")
                .and_then(delta_seconds)
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Some(secs) = delta_seconds(value) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// RFC 9110's `delta-seconds = 1*DIGIT` (no sign, no fraction); too many digits saturate,
/// since that only means "longer than any deadline".
fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX))
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

    type Pairs<'a> = &'a [(&'static str, &'a str)];

    fn headers(pairs: Pairs) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn server_hint_table() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let s = Duration::from_secs;
        let (too_many, unavailable, bad_gateway, ok) = (
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::BAD_GATEWAY,
            StatusCode::OK,
        );
        // What Zuora sends on every answer: a window with room left.
        let window = [
            ("ratelimit-limit", "12500"),
            ("ratelimit-remaining", "12499"),
            ("ratelimit-reset", "42"),
        ];
        let spent = [("ratelimit-remaining", "0"), ("ratelimit-reset", "42")];
        let cases: &[(StatusCode, Pairs, Option<Duration>)] = &[
            (too_many, &[], None),
            (unavailable, &[], None),
            // The window's reset is the hint for a 429 only, unless the window is spent.
            (too_many, &window, Some(s(42))),
            (unavailable, &window, None),
            (bad_gateway, &window, None),
            (unavailable, &spent, Some(s(42))),
            (bad_gateway, &spent, Some(s(42))),
            (ok, &spent, Some(s(42))),
            (
                unavailable,
                &[("ratelimit-remaining", "00"), ("ratelimit-reset", "5")],
                Some(s(5)),
            ),
            (
                unavailable,
                &[("ratelimit-remaining", "1"), ("ratelimit-reset", "5")],
                None,
            ),
            // Retry-After on 429 and 503, before RateLimit-Reset; not on other statuses.
            (too_many, &[("retry-after", "3"), ("ratelimit-reset", "42")], Some(s(3))),
            (
                unavailable,
                &[
                    ("retry-after", "3"),
                    ("ratelimit-remaining", "12499"),
                    ("ratelimit-reset", "42"),
                ],
                Some(s(3)),
            ),
            (unavailable, &[("retry-after", " 0 ")], Some(s(0))),
            (bad_gateway, &[("retry-after", "3")], None),
            (
                StatusCode::GATEWAY_TIMEOUT,
                &[("retry-after", "3"), ("ratelimit-reset", "42")],
                None,
            ),
            // HTTP-dates: in the future, now, past.
            (
                unavailable,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")],
                Some(s(30)),
            ),
            (
                too_many,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                Some(s(0)),
            ),
            (
                too_many,
                &[
                    ("retry-after", "Tue, 20 Oct 2015 07:28:00 GMT"),
                    ("ratelimit-reset", "42"),
                ],
                Some(s(0)),
            ),
            // The obsolete forms RFC 9110 says a recipient must accept.
            (
                too_many,
                &[("retry-after", "Wednesday, 21-Oct-15 07:28:10 GMT")],
                Some(s(10)),
            ),
            (too_many, &[("retry-after", "Wed Oct 21 07:28:20 2015")], Some(s(20))),
            // Malformed values are no hint; a 429 falls back to the window's reset.
            (
                too_many,
                &[("retry-after", "soon"), ("ratelimit-reset", "42")],
                Some(s(42)),
            ),
            (too_many, &[("retry-after", "-3")], None),
            (too_many, &[("retry-after", "+3")], None),
            (too_many, &[("retry-after", "1.5")], None),
            (too_many, &[("retry-after", "")], None),
            (too_many, &[("ratelimit-reset", "later")], None),
            // Too many digits for a u64: longer than any deadline, not a parse error.
            (
                too_many,
                &[("retry-after", "99999999999999999999999")],
                Some(s(u64::MAX)),
            ),
        ];
        for (status, pairs, want) in cases {
            assert_eq!(server_hint(*status, &headers(pairs), now), *want, "{status} {pairs:?}");
        }
    }
}
