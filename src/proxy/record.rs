//! What one request did, for its access line and its request metrics. Filled in by the
//! phases as they learn things, then handed to the answer's body, which tells it how the
//! body ended; written exactly once, whatever happened: also when the caller went away
//! before the answer (its future dropped) or in the middle of it.

use super::prepare::Guards;
use crate::access_log::{self, AccessRecord};
use crate::body::{BodyEnd, ResponseBody, Watch, WatchedBody};
use crate::config::TenantSettings;
use crate::error::ProxyError;
use crate::headers::ZUORA_REQUEST_ID;
use crate::metrics::Metrics;
use crate::routes::{Peer, RetryOn, Route, Rule};
use crate::snapshot::Snapshot;
use crate::track_id;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest path written to the access log; the rest is cut.
const MAX_LOGGED_PATH: usize = 256;
/// Status logged for a request whose caller left before it was answered (nginx's 499).
const CALLER_GONE_STATUS: u16 = 499;

/// Response headers from Zuora copied into the access log, with their field names.
static LOGGED_RESPONSE_HEADERS: [(HeaderName, &str); 6] = [
    (HeaderName::from_static("ratelimit-limit"), "ratelimit_limit"),
    (HeaderName::from_static("ratelimit-remaining"), "ratelimit_remaining"),
    (HeaderName::from_static("ratelimit-reset"), "ratelimit_reset"),
    (
        HeaderName::from_static("concurrency-limit-type"),
        "concurrency_limit_type",
    ),
    (
        HeaderName::from_static("concurrency-limit-limit"),
        "concurrency_limit_limit",
    ),
    (
        HeaderName::from_static("concurrency-limit-remaining"),
        "concurrency_limit_remaining",
    ),
];

/// One request as it will be logged.
pub(super) struct Record {
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    started: Instant,
    method: Method,
    uri: Uri,
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
    limits: [Option<HeaderValue>; LOGGED_RESPONSE_HEADERS.len()],
    /// Status and time of the answer's head, once sent.
    head: Option<(StatusCode, Duration)>,
    body_bytes: u64,
    error: Option<&'static str>,
    /// Who connected, as the listener saw it.
    peer: Option<Peer>,
    written: bool,
}

impl Record {
    pub fn new<B>(snapshot: Arc<Snapshot>, metrics: Arc<Metrics>, request: &Request<B>) -> Record {
        Record {
            snapshot,
            metrics,
            started: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
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
            head: None,
            body_bytes: 0,
            error: None,
            peer: request.extensions().get::<Peer>().copied(),
            written: false,
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
    }

    /// Zuora's status and the headers worth logging.
    pub fn upstream_answered(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.upstream_status = Some(status.as_u16());
        self.zuora_request_id = headers.get(&ZUORA_REQUEST_ID).cloned();
        for (slot, (name, _)) in self.limits.iter_mut().zip(&LOGGED_RESPONSE_HEADERS) {
            *slot = headers.get(name).cloned();
        }
    }

    /// The answer as the caller gets it: its body reports to this record, which is written
    /// when the body ends. With `idle`, a body that sends nothing for that long is cut.
    pub fn answer<B>(mut self, response: Response<B>, idle: Option<Duration>) -> Response<ResponseBody>
    where
        B: Into<http_body_util::Either<hyper::body::Incoming, Full<Bytes>>>,
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
        let meters = self.snapshot.route_meters(self.route_name());
        meters.answered(status, head_time.as_secs_f64());
        if let Some(code) = self.error {
            self.metrics.proxy_error(code);
        }
        self.emit(status, head_time, total);
    }

    fn emit(&self, status: u16, head_time: Duration, total: Duration) {
        let path = self.uri.path();
        // Paths are cut for the log; the query is never logged (it may carry personal data).
        let path = match path.char_indices().nth(MAX_LOGGED_PATH) {
            Some((cut, _)) => &path[..cut],
            None => path,
        };
        let mut limits: [(&'static str, Option<&HeaderValue>); 6] = Default::default();
        for (slot, ((_, field), value)) in limits.iter_mut().zip(LOGGED_RESPONSE_HEADERS.iter().zip(&self.limits)) {
            *slot = (field, value.as_ref());
        }
        access_log::emit(&AccessRecord {
            track_id: self.track_id.as_ref(),
            route: self.route_name(),
            rule: self.rule.as_deref().map(|r| r.name.as_str()),
            tenant: self.tenant.as_deref().map(|t| t.name.as_str()),
            method: self.method.as_str(),
            path,
            status,
            upstream_status: self.upstream_status,
            duration_ms: millis(head_time),
            total_ms: millis(total),
            response_bytes: self.body_bytes,
            upstream_ms: self.upstream_time.map(millis),
            token_retry: self.token_retry,
            retries: self.retries,
            zuora_request_id: self.zuora_request_id.as_ref(),
            zuora_reason_code: self.zuora_reason_code,
            limits,
            error: self.error,
            peer: self.peer,
        });
    }
}

impl Watch for Record {
    fn data(&mut self, bytes: usize) {
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

/// Milliseconds with microsecond precision, for log fields.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}
