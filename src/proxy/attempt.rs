//! Attempts toward Zuora: send, replay once with a fresh token after a 401, and retry what
//! the route allows, waiting as Zuora asks (or backing off), never past the deadline. Where a
//! route reads Zuora's body errors, a small JSON 200 is read first: a `/v1` limit error
//! inside it is retried like a 429, and the body is handed on as read.

use super::admit::Admitted;
use super::prepare::{self, body_error, Prepared};
use super::record::Record;
use super::Deadline;
use crate::backoff::{self, Backoff};
use crate::body::ZuoraBody as Incoming;
use crate::body::{transfer_coding_is_decoded, CallerProgress, UpstreamBody};
use crate::error::ProxyError;
use crate::headers;
use crate::routes::{RetryOn, Route};
use crate::tenant::Tenant;
use crate::token::Token;
use crate::trace::TRACEPARENT;
use crate::upstream::describe_client_error;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// First retry waits 50-100 ms, doubling per retry.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between retries when Zuora gives no hint.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(5_000);

/// Only answers this small are read for a `/v1` failure: Zuora's are a few hundred bytes,
/// and a larger body streams on as it comes.
const ZUORA_FAILURE_MAX_BYTES: u64 = 16 * 1024;

/// Zuora's answer as the caller gets it: streamed, or read first (to look for a failure
/// inside a 200) and handed on byte for byte.
pub(super) type Answer = Either<Incoming, Full<Bytes>>;

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
) -> Result<Response<Answer>, ProxyError> {
    let mut p = prepared;
    let tenant = admitted.tenant;
    // Only a buffered body can be sent twice; a streamed one gets exactly one attempt.
    let replay = p.body.replayable();
    let caller = p.body.progress();
    record.streamed_body = caller.clone();
    let mut first = Some(p.body.into_upstream());
    let mut tries = Tries {
        replayable: replay.is_some(),
        retry: admitted
            .route
            .retry
            .allows(&p.method, &p.headers)
            .then_some(admitted.route.as_ref()),
        backoff: Backoff::new(RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX),
        deadline,
    };
    let started = Instant::now();
    let result = loop {
        let (mut attempt_headers, attempt_body) = next_attempt(&mut first, replay.as_ref(), &mut p.headers);
        // Each attempt is a span of its own: Zuora sees it as the parent of what it does.
        attempt_headers.insert(TRACEPARENT.clone(), record.attempt_starts());
        let sent = send(tenant, &p.method, &p.uri, attempt_headers, attempt_body, p.max_body);
        let result = deadline.bound(None, sent, ProxyError::UpstreamTimeout).await;
        let result = result.map_err(|error| callers_fault(error, caller.as_ref()));
        record.attempt_ends(&result);
        p.guards.cluster.iter().for_each(|cluster| cluster.saw(&result));
        let (result, failure) = answer_of(admitted, (&p.method, &p.token), result, deadline, record).await;
        let renew = match next(&result, failure, record, &mut tries) {
            Next::Done => break result,
            Next::RenewToken => {
                record.token_retry = true;
                true
            }
            Next::Retry { wait, reason } => {
                // Boxed, as the other waits off the common path: each would make every
                // request's future (moved at each of its awaits) as large as itself.
                Box::pin(pause(record, reason, wait, result)).await;
                // The token may have run out while waiting; never send an expired one.
                !p.token.is_usable(Instant::now())
            }
        };
        if renew {
            let token = deadline.bound(None, prepare::token(tenant), ProxyError::TokenUnavailable);
            p.token = Box::pin(token).await?;
            headers::set_authorization(&mut p.headers, p.token.header());
        }
    };
    let upstream_time = started.elapsed();
    record.upstream_time = Some(upstream_time);
    tenant.meters.upstream_duration.observe(upstream_time.as_secs_f64());
    record.guards = Some(p.guards);
    result
}

/// An attempt's answer as the caller may get it: a body error read out of a small JSON 200
/// when the route asks for that, and a refused token dropped for every request after this one.
async fn answer_of(
    admitted: &Admitted<'_>,
    (method, token): (&Method, &Token),
    result: Result<Response<Incoming>, ProxyError>,
    deadline: Deadline,
    record: &mut Record,
) -> (Result<Response<Answer>, ProxyError>, Option<ZuoraFailure>) {
    let (result, failure) = match result {
        Ok(response) if admitted.route.zuora_body_errors && may_hold_failure(method, &response) => {
            let read = deadline.bound(None, read_failure(response), ProxyError::UpstreamTimeout);
            match Box::pin(read).await {
                Ok((response, failure)) => (Ok(response), failure),
                Err(error) => (Err(error), None),
            }
        }
        other => (other.map(|r| r.map(Either::Left)), None),
    };
    if let Some(failure) = failure {
        record.zuora_reason_code = Some(failure.code);
    }
    if matches!(&result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED) {
        // Whatever happens to this request, the next ones need another token (only the
        // first request to see this token refused causes a fetch).
        admitted.tenant.tokens.invalidate(token);
    }
    (result, failure)
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

/// What the attempts of one request may still do.
struct Tries<'r> {
    /// Only a buffered body can be sent twice.
    replayable: bool,
    /// The route, when repeating the request is harmless.
    retry: Option<&'r Route>,
    backoff: Backoff,
    deadline: Deadline,
}

/// Decides after an attempt.
fn next(
    result: &Result<Response<Answer>, ProxyError>,
    failure: Option<ZuoraFailure>,
    record: &Record,
    tries: &mut Tries<'_>,
) -> Next {
    let Tries {
        replayable,
        retry,
        backoff,
        deadline,
    } = tries;
    if !*replayable {
        return Next::Done;
    }
    if matches!(result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED) && !record.token_retry {
        return Next::RenewToken;
    }
    let Some(route) = retry.filter(|route| record.retries < route.retry.attempts) else {
        return Next::Done;
    };
    let Some(reason) = retry_reason(result, failure).filter(|r| route.retry.retries_on(*r)) else {
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
fn retry_reason(result: &Result<Response<Answer>, ProxyError>, failure: Option<ZuoraFailure>) -> Option<RetryOn> {
    if failure.is_some_and(ZuoraFailure::retryable) {
        // Zuora's `/v1` way of saying 429 (or "locked, try again").
        return Some(RetryOn::Status429);
    }
    match result {
        Err(ProxyError::UpstreamUnreachable) => Some(RetryOn::Connect),
        // A connection that broke before Zuora answered is what the caller sees as 502.
        Err(ProxyError::UpstreamFailed) => Some(RetryOn::Status502),
        Err(_) => None,
        // A request with this Idempotency-Key is still running at Zuora: asking again cannot
        // finish it sooner, and Zuora keeps its result under the key for the caller to fetch.
        Ok(response) if response.status() == StatusCode::CONFLICT => None,
        Ok(response) => RetryOn::of_status(response.status()),
    }
}

/// Whether an answer may be a `/v1` failure worth reading: a 200 with a small, declared,
/// uncompressed JSON body.
fn may_hold_failure(method: &Method, response: &Response<Incoming>) -> bool {
    let headers = response.headers();
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let json = text(header::CONTENT_TYPE)
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    let small = text(header::CONTENT_LENGTH)
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n <= ZUORA_FAILURE_MAX_BYTES);
    let plain = text(header::CONTENT_ENCODING).is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    response.status() == StatusCode::OK && *method != Method::HEAD && json && small && plain
}

/// Reads a small answer whole and looks in it for a `/v1` failure; the caller gets the same
/// head and bytes. A body that breaks off is a connection that failed before its answer.
async fn read_failure(response: Response<Incoming>) -> Result<(Response<Answer>, Option<ZuoraFailure>), ProxyError> {
    let (parts, body) = response.into_parts();
    let limit = usize::try_from(ZUORA_FAILURE_MAX_BYTES).unwrap_or(usize::MAX);
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            tracing::debug!(%error, "upstream answer broke off while read for a body error");
            ProxyError::UpstreamFailed
        })?
        .to_bytes();
    let failure = ZuoraFailure::find(&bytes);
    Ok((Response::from_parts(parts, Either::Right(Full::new(bytes))), failure))
}

/// A `/v1` failure inside a 200: `{"success": false, "reasons": [{"code": 53100370, ...}]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ZuoraFailure {
    code: u64,
}

impl ZuoraFailure {
    /// The failure in a body, if it is one: its first retryable reason code, else its first
    /// code (a number, or digits in a string).
    fn find(body: &[u8]) -> Option<ZuoraFailure> {
        let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
        if answer.get("success")? != &serde_json::Value::Bool(false) {
            return None;
        }
        let codes = answer.get("reasons")?.as_array()?.iter().filter_map(|reason| {
            let code = reason.get("code")?;
            let code = code.as_u64().or_else(|| code.as_str()?.trim().parse().ok())?;
            Some(ZuoraFailure { code })
        });
        let mut first = None;
        for failure in codes {
            if failure.retryable() {
                return Some(failure);
            }
            first.get_or_insert(failure);
        }
        first
    }

    /// Zuora calls codes ending in 50 (lock competition), 61 (temporary error) and 70
    /// (concurrency limit) retryable.
    fn retryable(self) -> bool {
        matches!(self.code % 100, 50 | 61 | 70)
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
    let caller = match &body {
        Either::Right(streamed) => Some(streamed.progress()),
        Either::Left(_) => None,
    };
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    let response = tenant.client.request(request).await.map_err(|e| {
        let error = if e.is_connect() {
            ProxyError::UpstreamUnreachable
        } else {
            match body_error(&e, max_body) {
                ProxyError::BodyTooLarge { limit } => ProxyError::BodyTooLarge { limit },
                // hyper's error does not say whose bytes broke: the caller's body knows.
                _ if caller.as_ref().is_some_and(CallerProgress::failed) => ProxyError::BodyRead,
                _ => ProxyError::UpstreamFailed,
            }
        };
        tracing::debug!(tenant = %tenant.name(), error = %describe_client_error(&e), "upstream request failed");
        error
    })?;
    passable(&response).map_err(|what| {
        tracing::warn!(
            tenant = %tenant.name(),
            status = response.status().as_u16(),
            transfer_encoding = ?response.headers().get(header::TRANSFER_ENCODING),
            "Zuora's answer not passed on: {what}"
        );
        ProxyError::UpstreamInvalidResponse
    })?;
    Ok(response)
}

/// A request that ran out of time while its streamed body still waited for the caller's
/// bytes timed out on the caller, not on Zuora (which cannot answer a request it has not got).
fn callers_fault(error: ProxyError, caller: Option<&CallerProgress>) -> ProxyError {
    match error {
        ProxyError::UpstreamTimeout if caller.is_some_and(CallerProgress::waiting_on_caller) => ProxyError::BodyTimeout,
        other => other,
    }
}

/// Whether an answer can go to the caller as it is. hyper skips interim answers but a `101`,
/// which no request of the proxy asks for (it never sends `Upgrade`): what follows is not
/// HTTP. A body in a coding the proxy does not decode would reach the caller still coded,
/// with no header left to say so.
fn passable(response: &Response<Incoming>) -> Result<(), &'static str> {
    if response.status().is_informational() {
        return Err("an unsolicited interim answer");
    }
    if !transfer_coding_is_decoded(response.headers()) {
        return Err("a transfer coding the proxy does not decode");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(body: &str) -> Option<u64> {
        ZuoraFailure::find(body.as_bytes()).map(|f| f.code)
    }

    #[test]
    fn zuora_failures_inside_a_200() {
        let failure = |codes: &str| format!(r#"{{"success": false, "processId": "P1", "reasons": [{codes}]}}"#);
        assert_eq!(find(&failure(r#"{"code": 53100370, "message": "m"}"#)), Some(53100370));
        assert_eq!(
            find(&failure(r#"{"code": "50000050"}"#)),
            Some(50000050),
            "a code in a string"
        );
        assert_eq!(
            find(&failure(r#"{"code": 53100320}, {"code": 53100361}"#)),
            Some(53100361),
            "the retryable code is the one that counts"
        );
        assert_eq!(
            find(&failure(r#"{"code": 53100320}, {"code": 53100321}"#)),
            Some(53100320)
        );
        for not in [
            r#"{"success": true, "reasons": [{"code": 53100370}]}"#,
            r#"{"id": "x", "status": "Aborted"}"#,
            r#"{"success": "false", "reasons": [{"code": 53100370}]}"#,
            r#"{"success": false, "reasons": [{"code": "LOCKED"}]}"#,
            r#"{"success": false}"#,
            r#"[{"success": false}]"#,
            "not json",
        ] {
            assert_eq!(find(not), None, "{not}");
        }
        let retryable: Vec<u64> = [53100350, 53100361, 53100370, 53100320, 53100351, 53100360]
            .into_iter()
            .filter(|&code| ZuoraFailure { code }.retryable())
            .collect();
        assert_eq!(retryable, [53100350, 53100361, 53100370]);
    }
}
