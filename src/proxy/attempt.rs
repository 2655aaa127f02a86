//! Attempts toward Zuora: send, replay once with a fresh token after a 401, and retry what
//! the route allows, waiting as Zuora asks (or backing off), never past the deadline.

use super::admit::Admitted;
use super::prepare::{self, body_error, Prepared};
use super::record::Record;
use super::Deadline;
use crate::backoff::{self, Backoff};
use crate::body::UpstreamBody;
use crate::error::ProxyError;
use crate::headers;
use crate::routes::{RetryOn, Route};
use crate::tenant::Tenant;
use crate::upstream::describe_client_error;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// First retry waits 50-100 ms, doubling per retry.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between retries when Zuora gives no hint.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(5_000);

/// What to do after an attempt.
enum Next {
    Done,
    /// Zuora refused the token: send again, once, with a fresh one.
    RenewToken,
    Retry {
        wait: Duration,
        reason: RetryOn,
    },
}

pub(super) async fn attempt(
    admitted: &Admitted<'_>,
    prepared: Prepared,
    deadline: Deadline,
    record: &mut Record,
) -> Result<Response<Incoming>, ProxyError> {
    let mut p = prepared;
    let tenant = admitted.tenant;
    let retry = admitted
        .route
        .retry
        .allows(&p.method, &p.headers)
        .then_some(admitted.route.as_ref());
    // Only a buffered body can be sent twice; a streamed one gets exactly one attempt.
    let replay = p.body.replayable();
    let mut first = Some(p.body.into_upstream());
    let mut backoff = Backoff::new(RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX);
    let started = Instant::now();
    let result = loop {
        let (attempt_headers, attempt_body) = next_attempt(&mut first, replay.as_ref(), &mut p.headers);
        let sent = send(tenant, &p.method, &p.uri, attempt_headers, attempt_body, p.max_body);
        let result = deadline.bound(None, sent, ProxyError::UpstreamTimeout).await;
        p.guards.cluster.iter().for_each(|cluster| cluster.saw(&result));
        if matches!(&result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED) {
            // Whatever happens to this request, the next ones need another token (only the
            // first request to see this token refused causes a fetch).
            tenant.tokens.invalidate(&p.token);
        }
        let renew = match next(&result, replay.is_some(), record, retry, &mut backoff, deadline) {
            Next::Done => break result,
            Next::RenewToken => {
                record.token_retry = true;
                true
            }
            Next::Retry { wait, reason } => {
                pause(record, reason, wait, result).await;
                // The token may have run out while waiting; never send an expired one.
                !p.token.is_usable(Instant::now())
            }
        };
        if renew {
            p.token = deadline
                .bound(None, prepare::token(tenant), ProxyError::TokenUnavailable)
                .await?;
            headers::set_authorization(&mut p.headers, p.token.header());
        }
    };
    record.upstream_time = Some(started.elapsed());
    tenant.meters.upstream_duration.observe(started.elapsed().as_secs_f64());
    record.guards = Some(p.guards);
    result
}

/// Waits before a retry, counting it; the attempt's answer is dropped first.
async fn pause(record: &mut Record, reason: RetryOn, wait: Duration, answer: impl Sized) {
    drop(answer);
    record.retries += 1;
    record.retried(reason);
    tokio::time::sleep(wait).await;
}

/// The headers and body of the next attempt: the first one takes the caller's body, a
/// replay sends the buffered bytes again.
fn next_attempt(
    first: &mut Option<UpstreamBody>,
    replay: Option<&Bytes>,
    headers: &mut HeaderMap,
) -> (HeaderMap, UpstreamBody) {
    match (first.take(), replay) {
        (Some(body), None) => (std::mem::take(headers), body),
        (Some(body), Some(_)) => (headers.clone(), body),
        (None, Some(bytes)) => (headers.clone(), Either::Left(Full::new(bytes.clone()))),
        (None, None) => unreachable!("a streamed body is never sent twice"),
    }
}

/// Decides after an attempt. `retry` is the route when repeating the request is harmless.
fn next(
    result: &Result<Response<Incoming>, ProxyError>,
    replayable: bool,
    record: &Record,
    retry: Option<&Route>,
    backoff: &mut Backoff,
    deadline: Deadline,
) -> Next {
    if !replayable {
        return Next::Done;
    }
    if matches!(result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED) && !record.token_retry {
        return Next::RenewToken;
    }
    let Some(route) = retry.filter(|route| record.retries < route.retry.attempts) else {
        return Next::Done;
    };
    let Some(reason) = retry_reason(result).filter(|r| route.retry.retries_on(*r)) else {
        return Next::Done;
    };
    let hint = result
        .as_ref()
        .ok()
        .and_then(|r| backoff::server_hint(r.status(), r.headers(), SystemTime::now()));
    let wait = hint.unwrap_or_else(|| backoff.next(fastrand::f64()));
    // A wait that would outlast the request's deadline is no retry at all (and a huge
    // Retry-After must not overflow the clock).
    if deadline.allows(wait) {
        Next::Retry { wait, reason }
    } else {
        Next::Done
    }
}

/// What an attempt's outcome stands for as a retry reason, if anything.
fn retry_reason(result: &Result<Response<Incoming>, ProxyError>) -> Option<RetryOn> {
    match result {
        Err(ProxyError::UpstreamUnreachable) => Some(RetryOn::Connect),
        // A connection that broke before Zuora answered is what the caller sees as 502.
        Err(ProxyError::UpstreamFailed) => Some(RetryOn::Status502),
        Err(_) => None,
        Ok(response) => RetryOn::of_status(response.status()),
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
    tenant.client.request(request).await.map_err(|e| {
        let error = if e.is_connect() {
            ProxyError::UpstreamUnreachable
        } else {
            match body_error(&e, max_body) {
                ProxyError::BodyTooLarge { limit } => ProxyError::BodyTooLarge { limit },
                _ => ProxyError::UpstreamFailed,
            }
        };
        tracing::debug!(tenant = %tenant.name(), error = %describe_client_error(&e), "upstream request failed");
        error
    })
}
