//! What one request did, for its access line and its request metrics. Filled in by the
//! phases as they learn things; written once, by [`Record::finish`], whatever happened.

use crate::access_log::{self, AccessRecord};
use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::headers::ZUORA_REQUEST_ID;
use crate::metrics::Metrics;
use crate::routes::{RetryOn, Route, Rule};
use crate::snapshot::Snapshot;
use crate::tenant::Tenant;
use crate::track_id;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest path written to the access log; the rest is cut.
const MAX_LOGGED_PATH: usize = 256;

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
pub(super) struct Record<'s> {
    snapshot: &'s Snapshot,
    started: Instant,
    method: Method,
    uri: Uri,
    pub track_id: Option<HeaderValue>,
    pub route: Option<&'s Arc<Route>>,
    pub rule: Option<&'s Arc<Rule>>,
    pub tenant: Option<&'s Tenant>,
    pub token_retry: bool,
    pub retries: u32,
    pub upstream_time: Option<Duration>,
    upstream_status: Option<u16>,
    zuora_request_id: Option<HeaderValue>,
    limits: [Option<HeaderValue>; LOGGED_RESPONSE_HEADERS.len()],
    error: Option<&'static str>,
}

impl<'s> Record<'s> {
    pub fn new<B>(snapshot: &'s Snapshot, request: &Request<B>) -> Record<'s> {
        Record {
            snapshot,
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
            upstream_status: None,
            zuora_request_id: None,
            limits: Default::default(),
            error: None,
        }
    }

    /// The proxy's own answer for `error`, echoing the track id (one is made if none yet).
    pub fn refuse(&mut self, error: ProxyError) -> Response<ResponseBody> {
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

    fn route_name(&self) -> Option<&'s str> {
        self.route.map(|r| r.name.as_str())
    }

    /// Counts the request and writes its access line.
    pub fn finish(self, status: StatusCode, metrics: &Metrics) {
        let elapsed = self.started.elapsed();
        self.snapshot
            .route_meters(self.route_name())
            .answered(status.as_u16(), elapsed.as_secs_f64());
        if let Some(code) = self.error {
            metrics.proxy_error(code);
        }
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
            rule: self.rule.map(|r| r.name.as_str()),
            tenant: self.tenant.map(Tenant::name),
            method: self.method.as_str(),
            path,
            status: status.as_u16(),
            upstream_status: self.upstream_status,
            duration_ms: millis(elapsed),
            upstream_ms: self.upstream_time.map(millis),
            token_retry: self.token_retry,
            retries: self.retries,
            zuora_request_id: self.zuora_request_id.as_ref(),
            limits,
            error: self.error,
        });
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}
