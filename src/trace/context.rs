//! W3C Trace Context level 1: the caller's `traceparent` / `tracestate` checked, a new trace
//! started when there is none (or it is malformed), and the `traceparent` this hop sends on.
//! Ids are plain integers from the thread-local fast generator: no allocation, no syscall.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;
/// The spec's bound on a `tracestate` a vendor must propagate.
pub const MAX_TRACESTATE_BYTES: usize = 512;
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Level 1 defines one flag; the others are sent as zero.
const SAMPLED: u8 = 0x01;

/// The trace a request belongs to, as far as this hop is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// This hop's own span for the request.
    pub span_id: u64,
    /// The caller's span (`parent-id` of a valid `traceparent`), when it sent one.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    /// The caller's `tracestate`, kept only with a valid `traceparent` and within the bounds.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// A new trace: random trace id, random span id.
    pub fn root(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            sampled,
            tracestate: None,
        }
    }

    /// The caller's trace if its `traceparent` is valid, else a new one (`sample` decides
    /// whether a new one is sampled). A malformed `traceparent` is never passed on, and its
    /// `tracestate` goes with it.
    pub fn from_headers(headers: &HeaderMap, sample: impl FnOnce() -> bool) -> TraceContext {
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(one), None) => parse_traceparent(one.as_bytes()),
            // None, or more than one: nothing to continue.
            _ => None,
        };
        let Some((trace_id, parent_span_id, flags)) = parent else {
            return TraceContext::root(sample());
        };
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(parent_span_id),
            sampled: flags & SAMPLED != 0,
            tracestate: tracestate(headers),
        }
    }

    /// The `traceparent` that names `span_id` (a span of this hop) as the parent of what
    /// the receiver does: version 00, this trace, the sampled flag.
    pub fn traceparent(&self, span_id: u64) -> HeaderValue {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&mut buf[3..35], &self.trace_id.to_be_bytes());
        buf[35] = b'-';
        hex_into(&mut buf[36..52], &span_id.to_be_bytes());
        buf[52] = b'-';
        buf[53] = b'0';
        buf[54] = if self.sampled { b'1' } else { b'0' };
        HeaderValue::from_bytes(&buf).expect("hex and dashes")
    }
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> u128 {
    fastrand::u128(1..)
}

/// A random, non-zero span id.
pub fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// 32 lower-case hex digits.
pub fn trace_id_hex(id: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_into(&mut out, &id.to_be_bytes());
    out
}

/// 16 lower-case hex digits.
pub fn span_id_hex(id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex_into(&mut out, &id.to_be_bytes());
    out
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// `version-traceid-parentid-flags`, lower-case hex only. Version `ff` is invalid; version
/// 00 is exactly 55 characters; a later version is read by its first four fields (and may
/// go on after a `-`). All-zero ids are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    match version {
        0xff => return None,
        0x00 if value.len() != TRACEPARENT_LEN => return None,
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

/// Lower-case hex digits as a number (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

/// The caller's `tracestate` (several headers joined by commas, as the spec allows), if
/// every member is well formed and the whole fits the spec's bounds; else none at all.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let value = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut bytes = first.as_bytes().to_vec();
            for next in std::iter::once(second).chain(values) {
                bytes.push(b',');
                bytes.extend_from_slice(next.as_bytes());
            }
            HeaderValue::from_bytes(&bytes).ok()?
        }
    };
    valid_tracestate(value.as_bytes()).then_some(value)
}

/// `key=value` members separated by commas (optional spaces and tabs around each; empty
/// members allowed), at most 32 members and 512 bytes, each key at most once.
pub fn valid_tracestate(value: &[u8]) -> bool {
    if value.len() > MAX_TRACESTATE_BYTES {
        return false;
    }
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut n = 0;
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if n == MAX_TRACESTATE_MEMBERS || !valid_key(key) || !valid_value(value) || keys[..n].contains(&key) {
            return false;
        }
        keys[n] = key;
        n += 1;
    }
    n > 0
}

/// `simple-key` or `tenant-id@system-id`: lower-case letters, digits, `_ - * /`.
fn valid_key(key: &[u8]) -> bool {
    let part = |p: &[u8], max: usize, first_digit_ok: bool| {
        !p.is_empty()
            && p.len() <= max
            && (p[0].is_ascii_lowercase() || (first_digit_ok && p[0].is_ascii_digit()))
            && p.iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.iter().position(|&b| b == b'@') {
        None => part(key, 256, false),
        Some(at) => part(&key[..at], 241, true) && part(&key[at + 1..], 14, false),
    }
}

/// Up to 256 printable characters but `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_table() {
        let long_future = format!(
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-{}",
            "x".repeat(10)
        );
        type Parsed = Option<(u128, u64, u8)>;
        let cases: &[(&str, Parsed)] = &[
            (
                GOOD,
                Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 0x01)),
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 0)),
            ),
            // A later version: its first four fields, whatever follows a dash.
            (
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09",
                Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 9)),
            ),
            (
                &long_future,
                Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1)),
            ),
            ("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", None),
            ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
            ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),
            ("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01", None),
            ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
            ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", None),
            ("00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01", None),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01", None),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", None),
            ("00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", None),
            ("0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
            ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_traceparent(value.as_bytes()), *want, "{value:?}");
        }
    }

    #[test]
    fn the_sent_traceparent_is_version_00_with_the_sampled_flag_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"),
        );
        let context = TraceContext::from_headers(&headers, || panic!("a continued trace is not sampled anew"));
        assert_eq!(context.parent_span_id, Some(0xb7ad6b7169203331));
        assert!(context.sampled);
        let sent = context.traceparent(0x00f067aa0ba902b7);
        assert_eq!(sent, "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
        assert_eq!(
            parse_traceparent(sent.as_bytes()).map(|p| p.1),
            Some(0x00f067aa0ba902b7)
        );
        assert_ne!(context.span_id, 0);
    }

    #[test]
    fn a_missing_duplicated_or_malformed_traceparent_starts_a_new_trace_without_tracestate() {
        let state = HeaderValue::from_static("congo=t61rcWkgMzE");
        for parents in [vec![], vec![GOOD, GOOD], vec!["00-bad"]] {
            let mut headers = HeaderMap::new();
            for p in &parents {
                headers.append(&TRACEPARENT, HeaderValue::from_str(p).unwrap());
            }
            headers.insert(&TRACESTATE, state.clone());
            let context = TraceContext::from_headers(&headers, || false);
            assert_eq!(context.parent_span_id, None, "{parents:?}");
            assert_eq!(context.tracestate, None, "{parents:?}");
            assert!(!context.sampled);
            assert_ne!(context.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        }
        let fresh = TraceContext::root(true);
        assert_ne!(fresh.trace_id, TraceContext::root(true).trace_id);
        assert!(fresh.traceparent(fresh.span_id).as_bytes().ends_with(b"-01"));
    }

    #[test]
    fn tracestate_rules() {
        let valid = [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE",
            "a=1,,b=2",
            "tenant1@vendor=x",
            "1tenant@vendor=x",
            "k=va lue",
        ];
        for v in valid {
            assert!(valid_tracestate(v.as_bytes()), "{v}");
        }
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let thirty_two = (0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert!(valid_tracestate(thirty_two.as_bytes()));
        let big = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES));
        for v in [
            "",
            "novalue",
            "Upper=1",
            "1digit=1",
            "a=1,a=2",
            "k=v,w",
            "k=",
            "k=a=b",
            "@vendor=x",
            "tenant@=x",
            many.as_str(),
            big.as_str(),
        ] {
            assert!(!valid_tracestate(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn tracestate_headers_are_joined_and_kept_only_when_valid() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(GOOD));
        headers.append(&TRACESTATE, HeaderValue::from_static("rojo=00f067aa0ba902b7"));
        headers.append(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let context = TraceContext::from_headers(&headers, || true);
        assert_eq!(
            context.tracestate.as_ref().unwrap(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        headers.append(&TRACESTATE, HeaderValue::from_static("BAD"));
        assert_eq!(TraceContext::from_headers(&headers, || true).tracestate, None);
    }

    #[test]
    fn ids_in_hex() {
        assert_eq!(
            &trace_id_hex(0x0af7651916cd43dd8448eb211c80319c),
            b"0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(&span_id_hex(0xb7), b"00000000000000b7");
    }
}
