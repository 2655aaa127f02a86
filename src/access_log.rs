//! The access log: one line per request, with the fields ops query. In JSON mode the line is
//! written straight into the log buffer in the same shape as every other JSON line (the
//! generic formatter costs about a quarter of a request's instructions); otherwise it is an
//! ordinary tracing event. Either way `RUST_LOG` / `log.level` decide (`access=off` works).

use crate::routes::Peer;
use crate::trace::{span_id_hex, trace_id_hex};
use http::HeaderValue;
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use tracing::Level;

/// One request, as logged.
#[derive(Debug, Default)]
pub struct AccessRecord<'a> {
    pub track_id: Option<&'a HeaderValue>,
    /// The W3C trace the request belongs to (the caller's, or one the proxy started).
    pub trace_id: Option<u128>,
    /// The proxy's span the line is about: the one Zuora received as `traceparent`'s
    /// parent-id, or the request's own span when nothing was sent to Zuora.
    pub span_id: Option<u64>,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.1` and the like.
    pub protocol: &'static str,
    /// Cut to the length the log keeps.
    pub user_agent: Option<&'a [u8]>,
    /// Request body bytes read, when known.
    pub request_bytes: Option<u64>,
    /// The tenant's host and port, once a request was sent there.
    pub upstream_addr: Option<(&'a str, u16)>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// To the answer's head (`duration_ms`).
    pub duration: Duration,
    /// To the answer's last byte, or the moment it was cut (`total_ms`).
    pub total: Duration,
    /// To the answer's first body byte; absent for an empty body (`ttfb_ms`).
    pub ttfb: Option<Duration>,
    pub response_bytes: u64,
    /// Spent on Zuora's attempts (`upstream_ms`).
    pub upstream: Option<Duration>,
    pub token_retry: bool,
    pub retries: u32,
    pub zuora_request_id: Option<&'a HeaderValue>,
    /// The reason code of a Zuora `/v1` failure inside a 200 (routes with `zuora_body_errors`).
    pub zuora_reason_code: Option<u64>,
    /// Zuora's numeric rate and concurrency headers, `RateLimit-Limit`, `-Remaining`,
    /// `-Reset`, `Concurrency-Limit-Limit`, `-Remaining` in this order (a value that is not a
    /// number is left out, so that a field always has one type).
    pub limits: [Option<u64>; 5],
    /// Zuora's `Concurrency-Limit-Type`, a word.
    pub concurrency_limit_type: Option<&'a HeaderValue>,
    pub error: Option<&'static str>,
    /// Who connected: `client_addr`, or `peer_uid` / `peer_gid` / `peer_pid` on a Unix socket.
    pub peer: Option<Peer>,
}

/// Writes the access line, if `access` is enabled at info.
pub fn emit(r: &AccessRecord<'_>) {
    if !tracing::enabled!(target: "access", Level::INFO) {
        return;
    }
    if crate::telemetry::json_lines() {
        write_json(r, SystemTime::now());
        return;
    }
    fn text(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    let [rl_limit, rl_remaining, rl_reset, cl_limit, cl_remaining] = r.limits;
    let upstream_addr = r.upstream_addr.map(|(host, port)| format!("{host}:{port}"));
    let trace_id = r.trace_id.map(trace_id_hex);
    let span_id = r.span_id.map(span_id_hex);
    let (client_addr, peer_uid, peer_gid, peer_pid) = match r.peer {
        Some(Peer::Tcp(addr)) => (Some(tracing::field::display(addr)), None, None, None),
        Some(Peer::Unix { uid, gid, pid }) => (None, Some(uid), Some(gid), pid),
        None => (None, None, None, None),
    };
    tracing::info!(
        target: "access",
        track_id = text(r.track_id),
        trace_id = trace_id.as_ref().and_then(|h| std::str::from_utf8(h).ok()),
        span_id = span_id.as_ref().and_then(|h| std::str::from_utf8(h).ok()),
        route = r.route,
        rule = r.rule,
        tenant = r.tenant,
        method = r.method,
        path = r.path,
        protocol = r.protocol,
        user_agent = r.user_agent.and_then(|v| std::str::from_utf8(v).ok()),
        request_bytes = r.request_bytes,
        upstream_addr = upstream_addr.as_deref(),
        status = r.status,
        upstream_status = r.upstream_status,
        duration_ms = millis(r.duration),
        total_ms = millis(r.total),
        ttfb_ms = r.ttfb.map(millis),
        response_bytes = r.response_bytes,
        upstream_ms = r.upstream.map(millis),
        token_retry = r.token_retry,
        retries = r.retries,
        zuora_request_id = text(r.zuora_request_id),
        zuora_reason_code = r.zuora_reason_code,
        ratelimit_limit = rl_limit,
        ratelimit_remaining = rl_remaining,
        ratelimit_reset = rl_reset,
        concurrency_limit_type = text(r.concurrency_limit_type),
        concurrency_limit_limit = cl_limit,
        concurrency_limit_remaining = cl_remaining,
        error = r.error,
        client_addr,
        peer_uid,
        peer_gid,
        peer_pid,
        "request"
    );
}

/// `,"name":` as one literal, so that a field's key is a single copy.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// JSON keys of [`AccessRecord::limits`], in its order.
const LIMIT_KEYS: [&str; 5] = [
    key!("ratelimit_limit"),
    key!("ratelimit_remaining"),
    key!("ratelimit_reset"),
    key!("concurrency_limit_limit"),
    key!("concurrency_limit_remaining"),
];

thread_local! {
    /// The line being written, reused from one request to the next on the same thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    /// The timestamp up to its second (`2026-12-02T01:35:33.`), for the second it is from.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// Writes the JSON line into the thread's line buffer and hands it to the log.
fn write_json(r: &AccessRecord<'_>, now: SystemTime) {
    LINE.with_borrow_mut(|out| {
        out.clear();
        to_json(out, r, now);
        crate::telemetry::write_line(out);
    });
}

/// The JSON line into `out`, newline included; fields that are `None` are left out.
fn to_json(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    string(out, key!("track_id"), r.track_id);
    if let Some(id) = r.trace_id {
        string(out, key!("trace_id"), Some(&trace_id_hex(id)));
    }
    if let Some(id) = r.span_id {
        string(out, key!("span_id"), Some(&span_id_hex(id)));
    }
    request_fields(out, r);
    outcome_fields(out, r);
    zuora_fields(out, r);
    peer_fields(out, r);
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

/// RFC 3339 in UTC with microseconds; the part up to the second is formatted once a second.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != second {
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
        let text = humantime::format_rfc3339_seconds(whole).to_string();
        // `2026-12-02T01:35:33Z`: everything but the `Z`, then the decimal point.
        prefix[..19].copy_from_slice(&text.as_bytes()[..19]);
        prefix[19] = b'.';
        SECOND.set((second, prefix));
    }
    out.extend_from_slice(&prefix);
    // Six digits, leading zeros kept.
    let mut micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// What the caller asked, and where it went.
fn request_fields(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    string(out, key!("route"), r.route);
    string(out, key!("rule"), r.rule);
    string(out, key!("tenant"), r.tenant);
    string(out, key!("method"), Some(r.method));
    string(out, key!("path"), Some(r.path));
    string(out, key!("protocol"), Some(r.protocol));
    string(out, key!("user_agent"), r.user_agent);
    integer(out, key!("request_bytes"), r.request_bytes);
    if let Some((host, port)) = r.upstream_addr {
        // A host from a validated URL: no character that needs escaping.
        out.extend_from_slice(key!("upstream_addr").as_bytes());
        out.push(b'"');
        out.extend_from_slice(host.as_bytes());
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
        out.push(b'"');
    }
}

/// How it was answered, and how long it took.
fn outcome_fields(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    integer(out, key!("status"), Some(r.status));
    integer(out, key!("upstream_status"), r.upstream_status);
    milliseconds(out, key!("duration_ms"), Some(r.duration));
    milliseconds(out, key!("total_ms"), Some(r.total));
    integer(out, key!("response_bytes"), Some(r.response_bytes));
    milliseconds(out, key!("ttfb_ms"), r.ttfb);
    milliseconds(out, key!("upstream_ms"), r.upstream);
    out.extend_from_slice(if r.token_retry {
        b",\"token_retry\":true"
    } else {
        b",\"token_retry\":false"
    });
    integer(out, key!("retries"), Some(r.retries));
}

/// What Zuora said about it, and the proxy's own error code.
fn zuora_fields(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    string(out, key!("zuora_request_id"), r.zuora_request_id);
    integer(out, key!("zuora_reason_code"), r.zuora_reason_code);
    for (key, value) in LIMIT_KEYS.iter().zip(r.limits) {
        integer(out, key, value);
    }
    string(out, key!("concurrency_limit_type"), r.concurrency_limit_type);
    string(out, key!("error"), r.error);
}

/// Who the caller was.
fn peer_fields(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    match r.peer {
        Some(Peer::Tcp(SocketAddr::V4(addr))) => {
            out.extend_from_slice(key!("client_addr").as_bytes());
            out.push(b'"');
            for (i, octet) in addr.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
            out.push(b'"');
        }
        Some(Peer::Tcp(addr)) => {
            let _ = write!(out, "{}\"{addr}\"", key!("client_addr"));
        }
        Some(Peer::Unix { uid, gid, pid }) => {
            integer(out, key!("peer_uid"), Some(uid));
            integer(out, key!("peer_gid"), Some(gid));
            integer(out, key!("peer_pid"), pid);
        }
        None => {}
    }
}

/// `,"name":n` when there is a value, formatted without `core::fmt` (the line's numbers were most of its cost).
fn integer<N: itoa::Integer>(out: &mut Vec<u8>, key: &str, n: Option<N>) {
    if let Some(n) = n {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// Milliseconds with microsecond precision, for the text format's fields.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `,"name":ms` when there is a value: milliseconds with microsecond precision, written as
/// the shortest decimal that reads back as that number (`2.0`, `1.25`, `0.042`), by integer
/// arithmetic rather than a float formatter.
fn milliseconds(out: &mut Vec<u8>, key: &str, d: Option<Duration>) {
    let Some(d) = d else { return };
    out.extend_from_slice(key.as_bytes());
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    let fraction = (micros % 1000) as u16;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10].map(|d| b'0' + d as u8);
    // At least one digit after the point, as a float has; no trailing zeros after it.
    let keep = digits.iter().rposition(|&d| d != b'0').map_or(1, |last| last + 1);
    out.extend_from_slice(&digits[..keep]);
}

/// Bytes that go into a JSON string as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

/// `,"name":"value"` with JSON escaping; bytes that are not UTF-8 become U+FFFD.
fn string<V: AsRef<[u8]> + ?Sized>(out: &mut Vec<u8>, key: &str, value: Option<&V>) {
    let Some(value) = value.map(AsRef::as_ref) else {
        return;
    };
    out.extend_from_slice(key.as_bytes());
    out.push(b'"');
    // Nearly every value is plain ASCII with nothing to escape: copy it whole.
    if value.iter().all(|&b| PLAIN[usize::from(b)]) {
        out.extend_from_slice(value);
        out.push(b'"');
        return;
    }
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(record: &AccessRecord<'_>, now: SystemTime) -> String {
        let mut out = Vec::new();
        to_json(&mut out, record, now);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_line_has_every_present_field_and_parses() {
        let track = HeaderValue::from_static("acme-1");
        let zuora = HeaderValue::from_static("zr-1");
        let cl_type = HeaderValue::from_static("Default");
        let agent = HeaderValue::from_static("billing-worker/1.0");
        let record = AccessRecord {
            track_id: Some(&track),
            route: Some("abort-bulk-job"),
            rule: Some("acme"),
            tenant: Some("default"),
            method: "POST",
            path: "/bulk-data/\"odd\\path\u{1}/é",
            protocol: "HTTP/1.1",
            user_agent: Some(agent.as_bytes()),
            request_bytes: Some(17),
            upstream_addr: Some(("rest.test.zuora.com", 443)),
            status: 200,
            upstream_status: Some(200),
            duration: Duration::from_micros(1250),
            total: Duration::from_micros(2500),
            ttfb: Some(Duration::from_millis(2)),
            response_bytes: 41,
            upstream: Some(Duration::from_micros(500)),
            token_retry: true,
            retries: 2,
            zuora_request_id: Some(&zuora),
            zuora_reason_code: Some(53100370),
            limits: [Some(12500), None, Some(60), Some(40), None],
            concurrency_limit_type: Some(&cl_type),
            error: None,
            peer: Some(Peer::Tcp(([127, 0, 0, 1], 40312).into())),
            trace_id: Some(0x0af7651916cd43dd8448eb211c80319c),
            span_id: Some(0xb7ad6b7169203331),
        };
        let line = json(&record, SystemTime::UNIX_EPOCH);
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["track_id"], "acme-1");
        assert_eq!(v["path"], "/bulk-data/\"odd\\path\u{1}/é");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["duration_ms"], 1.25);
        assert_eq!(v["upstream_ms"], 0.5);
        assert_eq!(v["token_retry"], true);
        assert_eq!(v["total_ms"], 2.5);
        assert_eq!(v["response_bytes"], 41);
        assert_eq!(v["retries"], 2);
        assert_eq!(v["zuora_request_id"], "zr-1");
        assert_eq!(v["zuora_reason_code"], 53100370);
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["user_agent"], "billing-worker/1.0");
        assert_eq!(v["request_bytes"], 17);
        assert_eq!(v["upstream_addr"], "rest.test.zuora.com:443");
        assert_eq!(v["ttfb_ms"], 2.0);
        assert_eq!(v["ratelimit_limit"], 12500);
        assert_eq!(v["ratelimit_reset"], 60);
        assert_eq!(v["concurrency_limit_limit"], 40);
        assert_eq!(v["concurrency_limit_type"], "Default");
        assert!(v.get("ratelimit_remaining").is_none());
        assert!(v.get("error").is_none());
        assert_eq!(v["client_addr"], "127.0.0.1:40312");
        assert!(v.get("peer_uid").is_none());
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["span_id"], "b7ad6b7169203331");
    }

    #[test]
    fn a_unix_socket_caller_is_named_by_its_credentials() {
        let record = AccessRecord {
            method: "POST",
            path: "/x",
            status: 200,
            peer: Some(Peer::Unix {
                uid: 1000,
                gid: 100,
                pid: Some(4242),
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&json(&record, SystemTime::now())).unwrap();
        assert_eq!(
            (&v["peer_uid"], &v["peer_gid"], &v["peer_pid"]),
            (&1000.into(), &100.into(), &4242.into())
        );
        assert!(v.get("client_addr").is_none());
    }

    #[test]
    fn refusals_log_their_code_and_omit_upstream_fields() {
        let record = AccessRecord {
            method: "GET",
            path: "/nope",
            status: 404,
            duration: Duration::from_micros(100),
            error: Some("route_not_found"),
            limits: Default::default(),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&json(&record, SystemTime::now())).unwrap();
        assert_eq!(v["error"], "route_not_found");
        for absent in [
            "route",
            "rule",
            "tenant",
            "upstream_status",
            "upstream_ms",
            "zuora_request_id",
            "zuora_reason_code",
            "track_id",
            "upstream_addr",
            "ttfb_ms",
            "user_agent",
            "request_bytes",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }
    #[test]
    fn milliseconds_read_back_as_the_float_they_stand_for() {
        for micros in [
            0u64,
            1,
            42,
            100,
            999,
            1000,
            1250,
            2000,
            12_345,
            1_000_001,
            86_400_000_123,
        ] {
            let mut out = Vec::new();
            milliseconds(&mut out, key!("x"), Some(Duration::from_micros(micros)));
            let text = String::from_utf8(out).unwrap();
            let number = text.strip_prefix(",\"x\":").unwrap();
            let float = micros as f64 / 1000.0;
            assert_eq!(number, ryu::Buffer::new().format(float), "{micros} µs");
            assert_eq!(number.parse::<f64>().unwrap(), float);
        }
    }

    #[test]
    fn timestamps_carry_microseconds_and_follow_the_second() {
        let at = |micros: u64| {
            let mut out = Vec::new();
            timestamp(&mut out, SystemTime::UNIX_EPOCH + Duration::from_micros(micros));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(1_000_042), "1970-01-01T00:00:01.000042Z");
        assert_eq!(at(1_999_999), "1970-01-01T00:00:01.999999Z");
        assert_eq!(at(2_000_000), "1970-01-01T00:00:02.000000Z");
        assert_eq!(at(1_764_639_333_123_456), "2025-12-02T01:35:33.123456Z");
        assert_eq!(at(1_000_000), "1970-01-01T00:00:01.000000Z", "an earlier second again");
    }
}
