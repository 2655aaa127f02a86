//! What one request did, for its access line and its request metrics. Filled in by the
//! phases as they learn things, then handed to the answer's body, which tells it how the
//! body ended; written exactly once, whatever happened: also when the caller went away
//! before the answer (its future dropped) or in the middle of it.

use super::prepare::Guards;
use crate::access_log::{self, AccessRecord};
use crate::body::{BodyEnd, CallerProgress, ResponseBody, Watch, WatchedBody};
use crate::config::TenantSettings;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::routes::{Peer, RetryOn, Route, Rule};
use crate::snapshot::Snapshot;
use crate::trace::{self, TraceContext};
use crate::track_id;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use spans::{AttemptSpan, SpanTimes};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

mod spans;

/// Longest path written to the access log; the rest is cut.
const MAX_LOGGED_PATH: usize = 256;
/// Longest `User-Agent` written to the access log; the rest is cut.
const MAX_LOGGED_USER_AGENT: usize = 256;
/// Status logged for a request whose caller left before it was answered (nginx's 499).
const CALLER_GONE_STATUS: u16 = 499;

/// A response header the access log keeps.
#[derive(Clone, Copy)]
enum Logged {
    RequestId,
    /// Zuora's numeric rate and concurrency headers, at their index in [`AccessRecord::limits`].
    Limit(usize),
    ConcurrencyLimitType,
}

/// Index of `RateLimit-Remaining` in [`AccessRecord::limits`].
const RATELIMIT_REMAINING: usize = 1;

/// Whether the access log keeps the response header `name` (lower case, as `http` holds it).
fn logged(name: &str) -> Option<Logged> {
    Some(match name {
        "zuora-request-id" => Logged::RequestId,
        "ratelimit-limit" => Logged::Limit(0),
        "ratelimit-remaining" => Logged::Limit(RATELIMIT_REMAINING),
        "ratelimit-reset" => Logged::Limit(2),
        "concurrency-limit-limit" => Logged::Limit(3),
        "concurrency-limit-remaining" => Logged::Limit(4),
        "concurrency-limit-type" => Logged::ConcurrencyLimitType,
        _ => return None,
    })
}

/// One request as it will be logged.
pub(super) struct Record {
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    started: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
    /// The request's declared body length; `None` for a chunked body.
    declared_body: Option<u64>,
    /// A body streamed to Zuora counts its own bytes.
    pub streamed_body: Option<CallerProgress>,
    pub track_id: Option<HeaderValue>,
    pub route: Option<Arc<Route>>,
    pub rule: Option<Arc<Rule>>,
    pub tenant: Option<Arc<TenantSettings>>,
    pub token_retry: bool,
    pub retries: u32,
    pub upstream_time: Option<Duration>,
    /// The reason code of the last Zuora failure found inside a 200 answer, retried or not.
    pub zuora_reason_code: Option<u64>,
    /// Held until the answer's body ends (the tenant's slot, the in-flight count).
    pub guards: Option<Guards>,
    upstream_status: Option<u16>,
    zuora_request_id: Option<HeaderValue>,
    limits: [Option<u64>; 5],
    concurrency_limit_type: Option<HeaderValue>,
    /// Status and time of the answer's head, once sent.
    head: Option<(StatusCode, Duration)>,
    /// When the answer's first body byte went out.
    first_byte: Option<Duration>,
    body_bytes: u64,
    error: Option<&'static str>,
    /// Who connected, as the listener saw it.
    peer: Option<Peer>,
    /// The request's trace: the caller's, or one started here.
    pub trace: TraceContext,
    /// The span id Zuora received in the last attempt's `traceparent`.
    upstream_span: Option<u64>,
    /// Span times, recorded only when this request's spans are exported.
    spans: Option<Box<SpanTimes>>,
    written: bool,
}

/// A wait of the request path that gets a span of its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// The tenant's concurrency slot and, with `[cluster]`, a permit.
    Permit,
    Token,
}

impl Record {
    pub fn new<B>(snapshot: Arc<Snapshot>, metrics: Arc<Metrics>, request: &Request<B>) -> Record {
        let ratio = snapshot.config.fixed.tracing.sample_ratio;
        let trace = TraceContext::from_headers(request.headers(), || ratio >= 1.0 || fastrand::f64() < ratio);
        let started = Instant::now();
        let spans = metrics.spans().filter(|_| trace.sampled).map(|_| {
            Box::new(SpanTimes {
                wall: SystemTime::now(),
                permit: None,
                token: None,
                attempts: Vec::new(),
            })
        });
        Record {
            snapshot,
            metrics,
            started,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            declared_body: declared_body(request.headers()),
            streamed_body: None,
            track_id: None,
            route: None,
            rule: None,
            tenant: None,
            token_retry: false,
            retries: 0,
            upstream_time: None,
            zuora_reason_code: None,
            guards: None,
            upstream_status: None,
            zuora_request_id: None,
            limits: Default::default(),
            concurrency_limit_type: None,
            head: None,
            first_byte: None,
            body_bytes: 0,
            error: None,
            peer: request.extensions().get::<Peer>().copied(),
            trace,
            upstream_span: None,
            spans,
            written: false,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When a wait starts, if its span is recorded (no clock is read otherwise).
    pub fn wait_starts(&self) -> Option<Instant> {
        self.spans.as_ref().map(|_| Instant::now())
    }

    /// A wait that started at `since` (from [`Record::wait_starts`]) is over.
    pub fn waited(&mut self, wait: Wait, since: Option<Instant>) {
        if let (Some(spans), Some(since)) = (self.spans.as_deref_mut(), since) {
            let span = Some((since, Instant::now()));
            match wait {
                Wait::Permit => spans.permit = span,
                Wait::Token => spans.token = span,
            }
        }
    }

    /// An attempt toward Zuora starts: its span id, in the `traceparent` it carries.
    pub fn attempt_starts(&mut self) -> HeaderValue {
        let span_id = trace::context::new_span_id();
        self.upstream_span = Some(span_id);
        if let Some(spans) = self.spans.as_deref_mut() {
            spans.attempts.push(AttemptSpan {
                span_id,
                start: Instant::now(),
                end: None,
                status: None,
                error: None,
            });
        }
        self.trace.traceparent(span_id)
    }

    /// The attempt that started last has its answer's head, or failed.
    pub fn attempt_ends<B>(&mut self, result: &Result<Response<B>, ProxyError>) {
        if let Some(attempt) = self.spans.as_deref_mut().and_then(|s| s.attempts.last_mut()) {
            attempt.end = Some(Instant::now());
            match result {
                Ok(response) => attempt.status = Some(response.status().as_u16()),
                Err(error) => attempt.error = Some(error.code()),
            }
        }
    }

    /// The proxy's own answer for `error`, echoing the track id (one is made if none yet).
    pub fn refuse(&mut self, error: ProxyError) -> Response<Full<Bytes>> {
        let track_id = self.track_id.get_or_insert_with(|| track_id::generate(None));
        self.error = Some(error.code());
        error.into_response(track_id)
    }

    pub fn retried(&self, reason: RetryOn) {
        self.snapshot.route_meters(self.route_name()).retried(reason);
        // A retry on a status means Zuora answered with it; the answer itself was dropped.
        let status = match reason {
            RetryOn::Status429 => 429,
            RetryOn::Status502 => 502,
            RetryOn::Status503 => 503,
            RetryOn::Status504 => 504,
            RetryOn::Connect => return,
        };
        if let Some(meters) = self.tenant_meters() {
            meters.responses.count(status);
        }
    }

    /// Zuora's status and the headers worth logging.
    pub fn upstream_answered(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.upstream_status = Some(status.as_u16());
        self.zuora_request_id = None;
        self.limits = Default::default();
        self.concurrency_limit_type = None;
        // One pass over the answer's headers; of a repeated header, its first value counts.
        let mut seen = 0u8;
        for (name, value) in headers {
            let Some(field) = logged(name.as_str()) else { continue };
            let bit = 1
                << match field {
                    Logged::RequestId => 5,
                    Logged::Limit(i) => i,
                    Logged::ConcurrencyLimitType => 6,
                };
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            match field {
                Logged::RequestId => self.zuora_request_id = Some(value.clone()),
                Logged::Limit(i) => self.limits[i] = number(value),
                Logged::ConcurrencyLimitType => self.concurrency_limit_type = Some(value.clone()),
            }
        }
        if let Some(meters) = self.tenant_meters() {
            meters.responses.count(status.as_u16());
            if let Some(remaining) = self.limits[RATELIMIT_REMAINING] {
                meters.ratelimit_remaining.set(remaining);
            }
        }
    }

    fn tenant_meters(&self) -> Option<&crate::metrics::TenantMeters> {
        let tenant = self.tenant.as_deref()?;
        Some(&self.snapshot.tenants.get(&tenant.name)?.meters)
    }

    /// Request body bytes read. A request refused at admission had none read; a body of
    /// declared length up to the replay buffer is read whole before anything else happens,
    /// so past that phase its length is what was read; a streamed body counted what went
    /// through it. A body that failed, or a streamed one never sent: unknown.
    fn request_bytes(&self) -> Option<u64> {
        if self.tenant.is_none() {
            return Some(0);
        }
        match (self.declared_body, self.error, &self.streamed_body) {
            (_, Some("body_too_large" | "invalid_body"), _) => None,
            (_, _, Some(body)) if body.failed() => None,
            (_, _, Some(body)) => Some(body.bytes()),
            (Some(n), _, None) if n <= crate::body::REPLAY_BUFFER_BYTES => Some(n),
            _ => None,
        }
    }

    /// The answer as the caller gets it: its body reports to this record, which is written
    /// when the body ends. With `idle`, a body that sends nothing for that long is cut.
    pub fn answer<B>(mut self, response: Response<B>, idle: Option<Duration>) -> Response<ResponseBody>
    where
        B: Into<http_body_util::Either<crate::body::ZuoraBody, Full<Bytes>>>,
    {
        self.head = Some((response.status(), self.started.elapsed()));
        response.map(|body| WatchedBody::new(body.into(), Box::new(self), idle))
    }

    fn route_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.name.as_str())
    }

    /// Counts the request and writes its access line (once).
    fn write(&mut self, end: BodyEnd) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        // The slot goes back as soon as the body is done with it.
        self.guards = None;
        let total = self.started.elapsed();
        let (status, head_time) = match self.head {
            Some((status, at)) => (status.as_u16(), at),
            None => (CALLER_GONE_STATUS, total),
        };
        let after_head = match end {
            BodyEnd::Complete => None,
            BodyEnd::Abandoned => Some("caller_gone"),
            BodyEnd::Failed => Some("upstream_body_incomplete"),
            BodyEnd::TimedOut => Some("upstream_body_timeout"),
        };
        if let Some(code) = after_head.filter(|_| self.error.is_none()) {
            self.error = Some(code);
        }
        if self.token_retry {
            // The refused attempt's 401 was answered by Zuora too.
            if let Some(meters) = self.tenant_meters() {
                meters.responses.count(401);
            }
        }
        let meters = self.snapshot.route_meters(self.route_name());
        meters.answered(status, head_time.as_secs_f64());
        if let Some(code) = self.error {
            self.metrics.proxy_error(code);
        }
        self.emit(status, head_time, total);
    }

    fn emit(&self, status: u16, head_time: Duration, total: Duration) {
        // Paths are cut for the log; the query is never logged (it may carry personal data).
        let path = logged_path(self.uri.path());
        let upstream_addr = self
            .tenant
            .as_deref()
            .filter(|_| self.upstream_time.is_some())
            .and_then(|t| Some((t.base_url.host_str()?, t.base_url.port_or_known_default()?)));
        let user_agent = self
            .user_agent
            .as_ref()
            .map(|ua| &ua.as_bytes()[..ua.len().min(MAX_LOGGED_USER_AGENT)]);
        access_log::emit(&AccessRecord {
            track_id: self.track_id.as_ref(),
            route: self.route_name(),
            rule: self.rule.as_deref().map(|r| r.name.as_str()),
            tenant: self.tenant.as_deref().map(|t| t.name.as_str()),
            method: self.method.as_str(),
            path,
            protocol: protocol(self.version),
            user_agent,
            request_bytes: self.request_bytes(),
            upstream_addr,
            status,
            upstream_status: self.upstream_status,
            duration: head_time,
            total,
            ttfb: self.first_byte,
            response_bytes: self.body_bytes,
            upstream: self.upstream_time,
            token_retry: self.token_retry,
            retries: self.retries,
            zuora_request_id: self.zuora_request_id.as_ref(),
            zuora_reason_code: self.zuora_reason_code,
            limits: self.limits,
            concurrency_limit_type: self.concurrency_limit_type.as_ref(),
            error: self.error,
            peer: self.peer,
            trace_id: Some(self.trace.trace_id),
            span_id: Some(self.upstream_span.unwrap_or(self.trace.span_id)),
        });
        self.export_spans(status, path, total);
    }
}

impl Watch for Record {
    fn data(&mut self, bytes: usize) {
        if self.first_byte.is_none() && bytes > 0 {
            self.first_byte = Some(self.started.elapsed());
        }
        self.body_bytes += bytes as u64;
    }

    fn end(&mut self, how: BodyEnd) {
        self.write(how);
    }
}

impl Drop for Record {
    /// A record dropped unwritten belongs to a request whose caller went away before it
    /// was answered (hyper drops the request's future).
    fn drop(&mut self) {
        self.write(BodyEnd::Abandoned);
    }
}

/// The path up to [`MAX_LOGGED_PATH`] characters (a path no longer in bytes has no more characters).
fn logged_path(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH {
        return path;
    }
    match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((cut, _)) => &path[..cut],
        None => path,
    }
}

/// A header that should hold a non-negative integer, as one.
fn number(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse().ok()
}

/// The request's `Content-Length`; no body at all counts as zero, a chunked one as unknown.
fn declared_body(headers: &HeaderMap) -> Option<u64> {
    match headers.get(header::CONTENT_LENGTH) {
        Some(value) => number(value),
        None if headers.contains_key(header::TRANSFER_ENCODING) => None,
        None => Some(0),
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}
