//! The access log: one line per request, with the fields ops query. In JSON mode the line is
//! written straight into the log buffer in the same shape as every other JSON line (the
//! generic formatter costs about a quarter of a request's instructions); otherwise it is an
//! ordinary tracing event. Either way `RUST_LOG` / `log.level` decide (`access=off` works).

use crate::routes::Peer;
use crate::trace::{span_id_hex, trace_id_hex};
use http::HeaderValue;
use std::fmt::Write as _;
use std::time::SystemTime;
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
    pub user_agent: Option<&'a HeaderValue>,
    /// Request body bytes read, when known.
    pub request_bytes: Option<u64>,
    /// The tenant's host and port, once a request was sent there.
    pub upstream_addr: Option<(&'a str, u16)>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// To the answer's head.
    pub duration_ms: f64,
    /// To the answer's last byte (or the moment it was cut).
    pub total_ms: f64,
    /// To the answer's first body byte (absent for an empty body).
    pub ttfb_ms: Option<f64>,
    pub response_bytes: u64,
    pub upstream_ms: Option<f64>,
    pub token_retry: bool,
    pub retries: u32,
    pub zuora_request_id: Option<&'a HeaderValue>,
    /// The reason code of a Zuora `/v1` failure inside a 200 (routes with `zuora_body_errors`).
    pub zuora_reason_code: Option<u64>,
    /// Zuora's numeric rate and concurrency headers, by log field name (a value that is not
    /// a number is left out, so that a field always has one type).
    pub limits: [(&'static str, Option<u64>); 5],
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
        crate::telemetry::write_line(to_json(r, SystemTime::now()).as_bytes());
        return;
    }
    fn text(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    let [rl_limit, rl_remaining, rl_reset, cl_limit, cl_remaining] = r.limits.map(|(_, v)| v);
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
        user_agent = text(r.user_agent),
        request_bytes = r.request_bytes,
        upstream_addr = upstream_addr.as_deref(),
        status = r.status,
        upstream_status = r.upstream_status,
        duration_ms = r.duration_ms,
        total_ms = r.total_ms,
        ttfb_ms = r.ttfb_ms,
        response_bytes = r.response_bytes,
        upstream_ms = r.upstream_ms,
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

/// The JSON line, newline included; fields that are `None` are left out.
fn to_json(r: &AccessRecord<'_>, now: SystemTime) -> String {
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"message\":\"request\"",
        humantime::format_rfc3339_micros(now)
    );
    string(&mut out, "track_id", r.track_id.map(HeaderValue::as_bytes));
    if let Some(id) = r.trace_id {
        string(&mut out, "trace_id", Some(&trace_id_hex(id)));
    }
    if let Some(id) = r.span_id {
        string(&mut out, "span_id", Some(&span_id_hex(id)));
    }
    request_fields(&mut out, r);
    outcome_fields(&mut out, r);
    zuora_fields(&mut out, r);
    peer_fields(&mut out, r);
    out.push_str(",\"target\":\"access\"}\n");
    out
}

/// What the caller asked, and where it went.
fn request_fields(out: &mut String, r: &AccessRecord<'_>) {
    string(out, "route", r.route.map(str::as_bytes));
    string(out, "rule", r.rule.map(str::as_bytes));
    string(out, "tenant", r.tenant.map(str::as_bytes));
    string(out, "method", Some(r.method.as_bytes()));
    string(out, "path", Some(r.path.as_bytes()));
    string(out, "protocol", Some(r.protocol.as_bytes()));
    string(out, "user_agent", r.user_agent.map(HeaderValue::as_bytes));
    integer(out, "request_bytes", r.request_bytes);
    if let Some((host, port)) = r.upstream_addr {
        // A host from a validated URL: no character that needs escaping.
        out.push_str(",\"upstream_addr\":\"");
        out.push_str(host);
        out.push(':');
        out.push_str(itoa::Buffer::new().format(port));
        out.push('"');
    }
}

/// How it was answered, and how long it took.
fn outcome_fields(out: &mut String, r: &AccessRecord<'_>) {
    integer(out, "status", Some(r.status));
    integer(out, "upstream_status", r.upstream_status);
    float(out, "duration_ms", Some(r.duration_ms));
    float(out, "total_ms", Some(r.total_ms));
    integer(out, "response_bytes", Some(r.response_bytes));
    float(out, "ttfb_ms", r.ttfb_ms);
    float(out, "upstream_ms", r.upstream_ms);
    out.push_str(if r.token_retry {
        ",\"token_retry\":true"
    } else {
        ",\"token_retry\":false"
    });
    integer(out, "retries", Some(r.retries));
}

/// What Zuora said about it, and the proxy's own error code.
fn zuora_fields(out: &mut String, r: &AccessRecord<'_>) {
    string(out, "zuora_request_id", r.zuora_request_id.map(HeaderValue::as_bytes));
    integer(out, "zuora_reason_code", r.zuora_reason_code);
    for (name, value) in r.limits {
        integer(out, name, value);
    }
    string(
        out,
        "concurrency_limit_type",
        r.concurrency_limit_type.map(HeaderValue::as_bytes),
    );
    string(out, "error", r.error.map(str::as_bytes));
}

/// Who the caller was.
fn peer_fields(out: &mut String, r: &AccessRecord<'_>) {
    match r.peer {
        Some(Peer::Tcp(addr)) => {
            let _ = write!(out, ",\"client_addr\":\"{addr}\"");
        }
        Some(Peer::Unix { uid, gid, pid }) => {
            integer(out, "peer_uid", Some(uid));
            integer(out, "peer_gid", Some(gid));
            integer(out, "peer_pid", pid);
        }
        None => {}
    }
}

/// `,"name":` before a field's value.
fn key(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

/// `,"name":n` when there is a value, formatted without `core::fmt` (the line's numbers were most of its cost).
fn integer<N: itoa::Integer>(out: &mut String, name: &str, n: Option<N>) {
    if let Some(n) = n {
        key(out, name);
        out.push_str(itoa::Buffer::new().format(n));
    }
}

/// `,"name":x` when there is a value, for a duration in milliseconds (always finite: it is measured).
fn float(out: &mut String, name: &str, x: Option<f64>) {
    if let Some(x) = x {
        key(out, name);
        out.push_str(ryu::Buffer::new().format(x));
    }
}

/// `,"name":"value"` with JSON escaping; bytes that are not UTF-8 become U+FFFD.
fn string(out: &mut String, name: &str, value: Option<&[u8]>) {
    let Some(value) = value else { return };
    key(out, name);
    out.push('"');
    // Nearly every value is plain ASCII with nothing to escape: copy it whole.
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(std::str::from_utf8(value).expect("checked ASCII"));
        out.push('"');
        return;
    }
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

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
            user_agent: Some(&agent),
            request_bytes: Some(17),
            upstream_addr: Some(("rest.test.zuora.com", 443)),
            status: 200,
            upstream_status: Some(200),
            duration_ms: 1.25,
            total_ms: 2.5,
            ttfb_ms: Some(2.0),
            response_bytes: 41,
            upstream_ms: Some(0.5),
            token_retry: true,
            retries: 2,
            zuora_request_id: Some(&zuora),
            zuora_reason_code: Some(53100370),
            limits: [
                ("ratelimit_limit", Some(12500)),
                ("ratelimit_remaining", None),
                ("ratelimit_reset", Some(60)),
                ("concurrency_limit_limit", Some(40)),
                ("concurrency_limit_remaining", None),
            ],
            concurrency_limit_type: Some(&cl_type),
            error: None,
            peer: Some(Peer::Tcp(([127, 0, 0, 1], 40312).into())),
            trace_id: Some(0x0af7651916cd43dd8448eb211c80319c),
            span_id: Some(0xb7ad6b7169203331),
        };
        let line = to_json(&record, SystemTime::UNIX_EPOCH);
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
        let v: serde_json::Value = serde_json::from_str(&to_json(&record, SystemTime::now())).unwrap();
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
            duration_ms: 0.1,
            error: Some("route_not_found"),
            limits: Default::default(),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&to_json(&record, SystemTime::now())).unwrap();
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
}
