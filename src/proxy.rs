//! The forwarding service: allowlist, rule, track id, token, then Zuora, streaming both ways.
//! [`Proxy::handle`] never fails; [`Proxy::forward`] uses `?` and its errors become
//! responses in [`ProxyError::into_response`].

use crate::access_log::{self, AccessRecord};
use crate::backoff::{self, Backoff};
use crate::body::{GuardedBody, ResponseBody, UpstreamBody, REPLAY_BUFFER_BYTES};
use crate::error::ProxyError;
use crate::headers::{self, Injected, ZUORA_REQUEST_ID, ZUORA_TRACK_ID};
use crate::metrics::{self, Metrics, RouteLabel, RouteReason, RouteStatus};
use crate::routes::ClientIdentity;
use crate::routes::{self, Resolution, RetryPolicy, Route, Rule};
use crate::runtime::{Runtime, Tenant};
use crate::server::AmbiguousFraming;
use crate::token::Token;
use crate::track_id;
use crate::upstream::{describe_client_error, error_chain};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use prometheus_client::metrics::gauge::Gauge;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
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

/// The proxy: the runtime in force, swapped atomically on reload, and the metrics.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Proxy {
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn swap_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Answers one caller request. Never fails: every refusal is a response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let runtime = self.runtime.load_full();
        let mut exchange = Exchange::new(&request);
        let deadline = runtime.config.live.requests.request_timeout;
        let result = tokio::time::timeout(
            deadline,
            self.forward(&runtime, request, &mut exchange, Instant::now() + deadline),
        )
        .await
        .unwrap_or_else(|_| Err(exchange.stage.timeout_error()));
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let track_id = exchange.track_id.get_or_insert_with(|| track_id::generate(None));
                exchange.error = Some(error.code());
                error.into_response(track_id)
            }
        };
        exchange.finish(response.status(), &self.metrics);
        response
    }

    async fn forward(
        &self,
        runtime: &Runtime,
        request: Request<Incoming>,
        x: &mut Exchange,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let config = &runtime.config;
        let (parts, body) = request.into_parts();
        // Both Content-Length and Transfer-Encoding: the classic request-smuggling shape. hyper
        // drops Content-Length, so the listener marks such heads; the proxy refuses them
        // rather than guess what the sender meant.
        if parts.extensions.get::<AmbiguousFraming>().is_some() {
            return Err(ProxyError::AmbiguousFraming);
        }
        // A valid caller track id is echoed on every answer, refusals included; an invalid
        // one is refused once the route is known.
        let caller_track_id = caller_track_id(&parts.headers);
        if let Ok(Some(id)) = &caller_track_id {
            x.track_id = Some(id.clone());
        }
        let route = match routes::resolve(&config.live.routes, &parts.method, parts.uri.path()) {
            Resolution::Allowed(route) => route,
            Resolution::BadParam { route, name, reason } => {
                x.route = Some(route.clone());
                return Err(ProxyError::InvalidPathParameter { name, reason });
            }
            Resolution::MethodNotAllowed { allow } => return Err(ProxyError::MethodNotAllowed { allow }),
            Resolution::NotFound => return Err(ProxyError::RouteNotFound),
        };
        x.route = Some(route.clone());
        let caller_track_id = caller_track_id?;
        let caller = parts.extensions.get::<ClientIdentity>();
        let rule = routes::select(&config.live.rules, &route.name, &parts.headers, caller)
            .ok_or(ProxyError::NoMatchingRule)?;
        x.rule = Some(rule.clone());
        let track_id = caller_track_id.unwrap_or_else(|| track_id::generate(rule.track_id_prefix.as_deref()));
        x.track_id = Some(track_id.clone());
        let tenant = runtime
            .tenants
            .get(&rule.tenant)
            .expect("validation ties every rule to a tenant");
        x.tenant = Some(tenant.settings.clone());

        let max_body = config.live.requests.max_body_bytes;
        x.stage = Stage::Body;
        let body = OutgoingBody::read(body, &parts.headers, max_body).await?;
        x.stage = Stage::Preparing;
        let uri = tenant.uri_for(parts.uri.path_and_query())?;
        x.stage = Stage::Queued;
        let slot = acquire_slot(tenant).await?;
        let in_flight = GaugeGuard::enter(&tenant.meters.in_flight);
        x.stage = Stage::Token;
        let mut token = tenant.tokens.get().await.map_err(|_| ProxyError::TokenUnavailable)?;
        x.stage = Stage::Upstream;
        let mut headers = parts.headers;
        headers::rewrite_request(
            &mut headers,
            &Injected {
                authorization: token.header(),
                track_id: &track_id,
                entity_ids: rule.entity_header.as_ref(),
                org_ids: rule.org_header.as_ref(),
            },
        );
        let may_retry = route.retry.allows(&parts.method, &headers);
        // Only a buffered body can be sent twice; a streamed one gets exactly one attempt.
        let replay = body.replayable();
        let mut first_body = Some(body.into_upstream());
        let mut backoff = Backoff::new(
            Duration::from_millis(RETRY_BACKOFF_BASE_MS),
            Duration::from_millis(RETRY_BACKOFF_MAX_MS),
        );
        let started = Instant::now();
        let result = loop {
            let (attempt_headers, attempt_body) = match (first_body.take(), &replay) {
                (Some(body), None) => (std::mem::take(&mut headers), body),
                (Some(body), Some(_)) => (headers.clone(), body),
                (None, Some(bytes)) => (headers.clone(), Either::Left(Full::new(bytes.clone()))),
                (None, None) => unreachable!("a streamed body is never sent twice"),
            };
            let result = send(tenant, &parts.method, &uri, attempt_headers, attempt_body, max_body).await;
            let refused = matches!(&result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
            if refused {
                // Whatever happens to this request, the next ones need another token (only
                // the first request to see this token refused causes a fetch).
                tenant.tokens.invalidate(&token);
            }
            if replay.is_none() {
                break result;
            }
            // Zuora refused the token: send again, once, with a fresh one.
            if refused && !x.token_retry {
                x.token_retry = true;
                token = renew_token(tenant, x, &mut headers).await?;
                continue;
            }
            if may_retry && x.retries < route.retry.attempts {
                if let Some(reason) = retry_reason(&route.retry, &result) {
                    let hint = result.as_ref().ok().and_then(|r| backoff::retry_hint(r.headers()));
                    let wait = hint.unwrap_or_else(|| backoff.next(fastrand::f64()));
                    // A wait that would outlast the request's deadline is no retry at all
                    // (and a huge Retry-After must not overflow the clock).
                    if wait < deadline.saturating_duration_since(Instant::now()) {
                        x.retries += 1;
                        self.metrics
                            .retries
                            .get_or_create(&RouteReason {
                                route: route.name.clone(),
                                reason,
                            })
                            .inc();
                        drop(result);
                        tokio::time::sleep(wait).await;
                        // The token may have run out while waiting; never send an expired one.
                        if !token.is_usable(Instant::now()) {
                            token = renew_token(tenant, x, &mut headers).await?;
                        }
                        continue;
                    }
                }
            }
            break result;
        };
        let upstream_time = started.elapsed();
        x.upstream_ms = Some(millis(upstream_time));
        tenant.meters.upstream_duration.observe(upstream_time.as_secs_f64());
        let mut response = result?;
        x.upstream_status = Some(response.status().as_u16());
        x.note_upstream_headers(response.headers());
        headers::strip_hop_by_hop(response.headers_mut());
        if !response.headers().contains_key(&ZUORA_TRACK_ID) {
            response.headers_mut().insert(ZUORA_TRACK_ID.clone(), track_id);
        }
        Ok(response.map(|body| Either::Left(GuardedBody::new(body, (slot, in_flight)))))
    }
}

/// The tenant's current (or next) token, put into `headers` for the next attempt.
async fn renew_token(tenant: &Tenant, x: &mut Exchange, headers: &mut HeaderMap) -> Result<Arc<Token>, ProxyError> {
    x.stage = Stage::Token;
    let token = tenant.tokens.get().await.map_err(|_| ProxyError::TokenUnavailable)?;
    x.stage = Stage::Upstream;
    headers::set_authorization(headers, token.header());
    Ok(token)
}

/// First retry waits 50-100 ms, doubling per retry.
const RETRY_BACKOFF_BASE_MS: u64 = 100;
/// Longest wait between retries when Zuora gives no hint.
const RETRY_BACKOFF_MAX_MS: u64 = 5_000;

/// Why an attempt's outcome is worth another try under `policy`, if it is.
fn retry_reason(policy: &RetryPolicy, result: &Result<Response<Incoming>, ProxyError>) -> Option<&'static str> {
    let status = match result {
        Err(ProxyError::UpstreamUnreachable) => return policy.on_connect.then_some("connect"),
        // A connection that broke before Zuora answered is what the caller sees as 502.
        Err(ProxyError::UpstreamFailed) => StatusCode::BAD_GATEWAY,
        Err(_) => return None,
        Ok(response) => response.status(),
    };
    if !policy.on_status.contains(&status) {
        return None;
    }
    match status.as_u16() {
        429 => Some("429"),
        502 => Some("502"),
        503 => Some("503"),
        504 => Some("504"),
        _ => None,
    }
}

/// A concurrency slot for `tenant`, waiting in arrival order for at most `queue_timeout`.
/// A caller that goes away while queued leaves the queue (its future is dropped).
async fn acquire_slot(tenant: &Tenant) -> Result<OwnedSemaphorePermit, ProxyError> {
    if let Ok(permit) = tenant.slots.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let _queued = GaugeGuard::enter(&tenant.meters.queue_length);
    let waiting = Instant::now();
    let permit = tokio::time::timeout(tenant.settings.queue_timeout, tenant.slots.clone().acquire_owned()).await;
    tenant.meters.queue_wait.observe(waiting.elapsed().as_secs_f64());
    match permit {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ProxyError::Overloaded),
    }
}

/// The caller's `Zuora-Track-Id`: absent, or present once and valid.
fn caller_track_id(headers: &HeaderMap) -> Result<Option<HeaderValue>, ProxyError> {
    let mut values = headers.get_all(&ZUORA_TRACK_ID).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) if track_id::is_valid(v.as_bytes()) => Ok(Some(v.clone())),
        _ => Err(ProxyError::InvalidTrackId),
    }
}

/// The request body as it will go to Zuora.
enum OutgoingBody {
    /// Small enough to hold, so it can be sent again after a 401.
    Buffered(Bytes),
    /// Streamed through under the size cap; not replayable.
    Streamed(Limited<Incoming>),
}

impl OutgoingBody {
    async fn read(body: Incoming, headers: &HeaderMap, max: u64) -> Result<OutgoingBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(OutgoingBody::Buffered(Bytes::new()));
        }
        // hyper has already refused a malformed or conflicting Content-Length.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        match declared {
            Some(n) if n > max => Err(ProxyError::BodyTooLarge { limit: max }),
            Some(n) if n <= REPLAY_BUFFER_BYTES => {
                let collected = Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(|e| body_error(&*e, max))?;
                Ok(OutgoingBody::Buffered(collected.to_bytes()))
            }
            _ => Ok(OutgoingBody::Streamed(Limited::new(body, limit))),
        }
    }

    fn replayable(&self) -> Option<Bytes> {
        match self {
            OutgoingBody::Buffered(bytes) => Some(bytes.clone()),
            OutgoingBody::Streamed(_) => None,
        }
    }

    fn into_upstream(self) -> UpstreamBody {
        match self {
            OutgoingBody::Buffered(bytes) => Either::Left(Full::new(bytes)),
            OutgoingBody::Streamed(body) => Either::Right(body),
        }
    }
}

fn body_error(error: &(dyn StdError + 'static), max: u64) -> ProxyError {
    if error_chain(error).any(|e| e.is::<LengthLimitError>()) {
        ProxyError::BodyTooLarge { limit: max }
    } else {
        ProxyError::BodyRead
    }
}

async fn send(
    tenant: &Tenant,
    method: &Method,
    uri: &Uri,
    headers: HeaderMap,
    body: UpstreamBody,
    max_body: u64,
) -> Result<Response<Incoming>, ProxyError> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    tenant.tokens.client().request(request).await.map_err(|e| {
        let error = if e.is_connect() {
            ProxyError::UpstreamUnreachable
        } else if error_chain(&e).any(|e| e.is::<LengthLimitError>()) {
            ProxyError::BodyTooLarge { limit: max_body }
        } else {
            ProxyError::UpstreamFailed
        };
        tracing::debug!(tenant = %tenant.name(), error = %describe_client_error(&e), "upstream request failed");
        error
    })
}

/// Milliseconds with microsecond precision, for log fields.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Adds one to a gauge for as long as it lives (requests in flight, requests queued).
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn enter(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a request is, so that running out of time is reported for what it waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Preparing,
    Body,
    Queued,
    Token,
    Upstream,
}

impl Stage {
    fn timeout_error(self) -> ProxyError {
        match self {
            Stage::Body => ProxyError::BodyRead,
            Stage::Queued => ProxyError::Overloaded,
            Stage::Token => ProxyError::TokenUnavailable,
            Stage::Preparing | Stage::Upstream => ProxyError::UpstreamTimeout,
        }
    }
}

/// What one request did: the access log line and the request metrics.
struct Exchange {
    started: Instant,
    stage: Stage,
    method: Method,
    uri: Uri,
    track_id: Option<HeaderValue>,
    route: Option<Arc<Route>>,
    rule: Option<Arc<Rule>>,
    tenant: Option<Arc<crate::config::TenantSettings>>,
    upstream_status: Option<u16>,
    upstream_ms: Option<f64>,
    token_retry: bool,
    retries: u32,
    zuora_request_id: Option<HeaderValue>,
    limits: [Option<HeaderValue>; LOGGED_RESPONSE_HEADERS.len()],
    error: Option<&'static str>,
}

impl Exchange {
    fn new(request: &Request<Incoming>) -> Exchange {
        Exchange {
            started: Instant::now(),
            stage: Stage::Preparing,
            method: request.method().clone(),
            uri: request.uri().clone(),
            track_id: None,
            route: None,
            rule: None,
            tenant: None,
            upstream_status: None,
            upstream_ms: None,
            token_retry: false,
            retries: 0,
            zuora_request_id: None,
            limits: Default::default(),
            error: None,
        }
    }

    fn note_upstream_headers(&mut self, headers: &HeaderMap) {
        self.zuora_request_id = headers.get(&ZUORA_REQUEST_ID).cloned();
        for (slot, (name, _)) in self.limits.iter_mut().zip(&LOGGED_RESPONSE_HEADERS) {
            *slot = headers.get(name).cloned();
        }
    }

    fn finish(self, status: StatusCode, metrics: &Metrics) {
        let elapsed = self.started.elapsed();
        let route = self.route.as_ref().map_or(metrics::NO_ROUTE, |r| r.name.as_str());
        metrics
            .requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.as_u16(),
            })
            .inc();
        metrics
            .request_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = self.error {
            metrics.proxy_errors.get_or_create(&metrics::CodeLabel { code }).inc();
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
            route: self.route.as_ref().map(|r| r.name.as_str()),
            rule: self.rule.as_ref().map(|r| r.name.as_str()),
            tenant: self.tenant.as_ref().map(|t| t.name.as_str()),
            method: self.method.as_str(),
            path,
            status: status.as_u16(),
            upstream_status: self.upstream_status,
            duration_ms: millis(elapsed),
            upstream_ms: self.upstream_ms,
            token_retry: self.token_retry,
            retries: self.retries,
            zuora_request_id: self.zuora_request_id.as_ref(),
            limits,
            error: self.error,
        });
    }
}
