//! A request's spans, built from its record once it is written: the SERVER span (child of
//! the caller's span when it sent one), and under it the permit and token waits and one
//! CLIENT span per attempt toward Zuora. Built only when the request's trace is exported.

use super::{protocol, Record};
use crate::trace::{self, Attribute, Kind};
use http::HeaderValue;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What the request's spans need beyond the record itself.
pub(super) struct SpanTimes {
    /// The wall-clock time of `started`: span times are counted from it on the monotonic clock.
    pub wall: SystemTime,
    pub permit: Option<(Instant, Instant)>,
    pub token: Option<(Instant, Instant)>,
    pub attempts: Vec<AttemptSpan>,
}

/// One attempt toward Zuora: a CLIENT span whose id went in the attempt's `traceparent`.
pub(super) struct AttemptSpan {
    pub span_id: u64,
    pub start: Instant,
    pub end: Option<Instant>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

impl Record {
    /// Hands the request's spans to the exporter, when they are exported.
    pub(super) fn export_spans(&self, status: u16, path: &str, total: Duration) {
        let (Some(exporter), Some(times)) = (self.metrics.spans(), self.spans.as_deref()) else {
            return;
        };
        let template = self.route.as_deref().map(|r| http_route(&r.template.to_string()));
        let name: Cow<'static, str> = match &template {
            Some(template) => format!("{} {template}", self.method).into(),
            None => self.method.to_string().into(),
        };
        exporter.export(self.server_span(name.clone(), template, times.wall, status, path, total));
        for (span, name) in [(times.permit, "permit wait"), (times.token, "token wait")] {
            if let Some(span) = span {
                let id = trace::context::new_span_id();
                exporter.export(self.child_span(times, id, Kind::Internal, name.into(), span));
            }
        }
        for (resend, attempt) in times.attempts.iter().enumerate() {
            exporter.export(self.client_span(times, name.clone(), resend, attempt));
        }
    }

    fn server_span(
        &self,
        name: Cow<'static, str>,
        template: Option<String>,
        wall: SystemTime,
        status: u16,
        path: &str,
        total: Duration,
    ) -> trace::Span {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let mut attributes = vec![
            Attribute::new("http.request.method", self.method.to_string()),
            Attribute::new("url.path", path.to_string()),
            Attribute::new("http.response.status_code", i64::from(status)),
            Attribute::new(
                "network.protocol.version",
                protocol(self.version).trim_start_matches("HTTP/"),
            ),
        ];
        let optional = [
            ("http.route", template),
            ("zuora.route", self.route.as_deref().map(|r| r.name.clone())),
            ("zuora.tenant", self.tenant.as_deref().map(|t| t.name.clone())),
            ("zuora.track_id", self.track_id.as_ref().map(text)),
            ("zuora.request_id", self.zuora_request_id.as_ref().map(text)),
        ];
        attributes.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some(Attribute::new(key, value?))),
        );
        // A server span fails on the proxy's own errors and on 5xx answers (4xx are the caller's).
        let error = self
            .error
            .map(Cow::Borrowed)
            .or_else(|| (status >= 500).then(|| status.to_string().into()));
        if let Some(error) = &error {
            attributes.push(Attribute::new("error.type", error.clone()));
        }
        trace::Span {
            trace_id: self.trace.trace_id,
            span_id: self.trace.span_id,
            parent: self.trace.parent_span_id.map(|id| (id, true)),
            kind: Kind::Server,
            name,
            start: wall,
            end: wall + total,
            attributes,
            error,
        }
    }

    /// A span under the server span, from `start` to `end` on the monotonic clock.
    fn child_span(
        &self,
        times: &SpanTimes,
        span_id: u64,
        kind: Kind,
        name: Cow<'static, str>,
        (start, end): (Instant, Instant),
    ) -> trace::Span {
        let at = |instant: Instant| times.wall + instant.saturating_duration_since(self.started);
        trace::Span {
            trace_id: self.trace.trace_id,
            span_id,
            parent: Some((self.trace.span_id, false)),
            kind,
            name,
            start: at(start),
            end: at(end),
            attributes: Vec::new(),
            error: None,
        }
    }

    /// One attempt toward Zuora, the `resend`th after the first.
    fn client_span(
        &self,
        times: &SpanTimes,
        name: Cow<'static, str>,
        resend: usize,
        attempt: &AttemptSpan,
    ) -> trace::Span {
        let end = attempt.end.unwrap_or_else(Instant::now);
        let mut span = self.child_span(times, attempt.span_id, Kind::Client, name, (attempt.start, end));
        let attributes = &mut span.attributes;
        attributes.push(Attribute::new("http.request.method", self.method.to_string()));
        if let Some(url) = self.tenant.as_deref().map(|t| &t.base_url) {
            let host = url.host_str().unwrap_or_default().to_string();
            attributes.push(Attribute::new("server.address", host));
            let port = url.port_or_known_default().unwrap_or_default();
            attributes.push(Attribute::new("server.port", i64::from(port)));
        }
        if resend > 0 {
            attributes.push(Attribute::new("http.request.resend_count", resend as i64));
        }
        if let Some(status) = attempt.status {
            attributes.push(Attribute::new("http.response.status_code", i64::from(status)));
        }
        // A client span fails on any error answer, and on no answer at all.
        span.error = attempt
            .error
            .map(Cow::Borrowed)
            .or_else(|| attempt.status.filter(|s| *s >= 400).map(|s| s.to_string().into()));
        if let Some(error) = &span.error {
            span.attributes.push(Attribute::new("error.type", error.clone()));
        }
        span
    }
}

/// A route template as OpenTelemetry's `http.route` writes it: placeholders without their type
/// (`/bulk-jobs/{id}/aborts` for `/bulk-jobs/{id:uuid}/aborts`).
fn http_route(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let (mut placeholder, mut typed) = (false, false);
    for c in template.chars() {
        match c {
            '{' => placeholder = true,
            '}' => (placeholder, typed) = (false, false),
            ':' if placeholder => typed = true,
            _ => {}
        }
        if !typed {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_route_drops_placeholder_types() {
        for (template, route) in [
            (
                "/bulk-data/bulk-jobs/{id:uuid}/aborts",
                "/bulk-data/bulk-jobs/{id}/aborts",
            ),
            ("/v1/accounts/{key}", "/v1/accounts/{key}"),
            ("/a/{x:uuid}/b/{y}", "/a/{x}/b/{y}"),
            ("/plain:colon", "/plain:colon"),
        ] {
            assert_eq!(super::http_route(template), route);
        }
    }
}
