//! Preparation: everything an upstream attempt needs, each wait bounded by the deadline
//! and named for what it waited on: the body (buffered when small enough to replay), the
//! upstream URI, a concurrency slot, a token, the rewritten headers.

use super::admit::Admitted;
use super::record::{Record, Wait};
use super::Deadline;
use crate::body::{transfer_coding_is_decoded, CallerBody, CallerProgress, UpstreamBody, REPLAY_BUFFER_BYTES};
use crate::error::ProxyError;
use crate::headers::{self, Injected};
use crate::routes::IdempotencyKey;
use crate::tenant::Tenant;
use crate::token::Token;
use crate::upstream::error_chain;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Zuora's key for running a POST or PATCH at most once.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What the attempts need.
pub(super) struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: OutgoingBody,
    pub max_body: u64,
    pub token: Arc<Token>,
    /// Held until the caller has Zuora's whole answer.
    pub guards: Guards,
}

/// The tenant's concurrency slot, the in-flight count and, with `[cluster]`, what is held
/// of the cluster.
pub(super) struct Guards {
    _slot: OwnedSemaphorePermit,
    _in_flight: GaugeGuard,
    pub cluster: Option<super::govern::ClusterGuard>,
}

pub(super) async fn prepare(
    admitted: &Admitted<'_>,
    parts: Parts,
    body: Incoming,
    max_body: u64,
    deadline: Deadline,
    record: &mut Record,
) -> Result<Prepared, ProxyError> {
    let tenant = admitted.tenant;
    let body = OutgoingBody::read(body, &parts.headers, max_body);
    let body = deadline.bound(None, body, ProxyError::BodyTimeout).await?;
    let uri = tenant.uri_for(parts.uri.path_and_query()).map_err(|error| {
        tracing::error!(tenant = %tenant.name(), %error, "request not forwarded");
        ProxyError::Internal
    })?;
    let queue_timeout = Some(tenant.settings.queue_timeout);
    let since = record.wait_starts();
    let permit = async {
        let slot = match tenant.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // Boxed, as the token wait below: a wait off the common path would make every
            // request's future (moved at each of its awaits) as large as itself.
            Err(_) => Box::pin(deadline.bound(queue_timeout, acquire_slot(tenant), ProxyError::Overloaded)).await?,
        };
        // The local slot first: `max_concurrency` stays this replica's upper bound.
        let cluster = super::govern::govern(tenant, admitted.rule, deadline).await?;
        Ok((slot, cluster))
    };
    let permit = permit.await;
    record.waited(Wait::Permit, since);
    let (slot, cluster) = permit?;
    let guards = Guards {
        _slot: slot,
        _in_flight: GaugeGuard::enter(&tenant.meters.in_flight),
        cluster,
    };
    let since = record.wait_starts();
    let token = match tenant.tokens.current() {
        Some(token) => Ok(token),
        None => Box::pin(deadline.bound(None, token(tenant), ProxyError::TokenUnavailable)).await,
    };
    record.waited(Wait::Token, since);
    let token = token?;
    let mut headers = parts.headers;
    headers::rewrite_request(
        &mut headers,
        &Injected {
            authorization: token.header(),
            track_id: &admitted.track_id,
            entity_ids: admitted.rule.entity_header.as_ref(),
            org_ids: admitted.rule.org_header.as_ref(),
            // Each attempt sets its own `traceparent`.
            tracestate: record.trace.tracestate.as_ref(),
        },
    );
    if admitted.route.idempotency_key == IdempotencyKey::Generate && !headers.contains_key(&IDEMPOTENCY_KEY) {
        headers.insert(IDEMPOTENCY_KEY.clone(), generated_idempotency_key());
    }
    Ok(Prepared {
        method: parts.method,
        uri,
        headers,
        body,
        max_body,
        token,
        guards,
    })
}

/// A key no other request will have within Zuora's 24 hours: a UUID v4 from the operating
/// system's generator (36 characters), since a collision would hand one caller another's
/// stored answer.
fn generated_idempotency_key() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is visible ASCII")
}

/// The tenant's current token, or the next one within its `token_wait`.
pub(super) async fn token(tenant: &Tenant) -> Result<Arc<Token>, ProxyError> {
    tenant.tokens.get().await.map_err(|_| ProxyError::TokenUnavailable)
}

/// A concurrency slot for `tenant` when none was free at once, granted in arrival order. A caller that goes away while
/// queued leaves the queue (its future is dropped); the caller bounds the wait.
async fn acquire_slot(tenant: &Tenant) -> Result<OwnedSemaphorePermit, ProxyError> {
    let _queued = QueueWait::enter(&tenant.meters.queue_length, &tenant.meters.queue_wait);
    tenant
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ProxyError::Overloaded)
}

/// The request body as it will go to Zuora.
pub(super) enum OutgoingBody {
    /// Small enough to hold, so it can be sent again after a 401.
    Buffered(Bytes),
    /// Streamed through under the size cap; not replayable.
    Streamed(CallerBody<Limited<Incoming>>),
}

impl OutgoingBody {
    async fn read(body: Incoming, headers: &HeaderMap, max: u64) -> Result<OutgoingBody, ProxyError> {
        // hyper took off the final `chunked` only: what is left would reach Zuora still coded
        // with nothing saying so (Transfer-Encoding is hop-by-hop).
        if !transfer_coding_is_decoded(headers) {
            return Err(ProxyError::UnsupportedTransferCoding);
        }
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
            _ => Ok(OutgoingBody::Streamed(CallerBody::new(Limited::new(body, limit)))),
        }
    }

    /// How a streamed body is doing, to tell the caller's faults from Zuora's.
    pub fn progress(&self) -> Option<CallerProgress> {
        match self {
            OutgoingBody::Buffered(_) => None,
            OutgoingBody::Streamed(body) => Some(body.progress()),
        }
    }

    /// The bytes to send again, if the body was buffered.
    pub fn replayable(&self) -> Option<Bytes> {
        match self {
            OutgoingBody::Buffered(bytes) => Some(bytes.clone()),
            OutgoingBody::Streamed(_) => None,
        }
    }

    pub fn into_upstream(self) -> UpstreamBody {
        match self {
            OutgoingBody::Buffered(bytes) => Either::Left(Full::new(bytes)),
            OutgoingBody::Streamed(body) => Either::Right(body),
        }
    }
}

/// A body that failed: over the cap, or not readable.
pub(super) fn body_error(error: &(dyn std::error::Error + 'static), max: u64) -> ProxyError {
    if error_chain(error).any(|e| e.is::<LengthLimitError>()) {
        ProxyError::BodyTooLarge { limit: max }
    } else {
        ProxyError::BodyRead
    }
}

/// Adds one to a gauge for as long as it lives (requests in flight).
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

/// A request in the queue: counted while it waits, its wait observed however it ends
/// (granted, timed out, or the caller gone).
struct QueueWait {
    _queued: GaugeGuard,
    since: Instant,
    wait: Histogram,
}

impl QueueWait {
    fn enter(length: &Gauge, wait: &Histogram) -> QueueWait {
        QueueWait {
            _queued: GaugeGuard::enter(length),
            since: Instant::now(),
            wait: wait.clone(),
        }
    }
}

impl Drop for QueueWait {
    fn drop(&mut self) {
        self.wait.observe(self.since.elapsed().as_secs_f64());
    }
}
