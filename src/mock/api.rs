//! The mock's REST API: the token check, the answer modes tests switch between (or script
//! call by call), and the endpoints (bulk-data jobs, one account) with Zuora's response headers.

use super::raw::{self, SharedIo};
use super::{json_bytes, json_response, limit, MockBody, State};
use crate::body::GuardedBody;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Zuora's answer when too many requests run at once (also the body of [`ApiMode::Status`]).
pub(super) const EXCEEDED_LIMIT: &str = r#"{"code":"REQUEST_EXCEEDED_LIMIT","message":"Your total number of concurrent requests have exceeded the limit allowed by the system. Please resubmit your request later."}"#;

/// Zuora's challenge on a 401.
pub(super) const CHALLENGE: &str = "Basic realm=Zuora API, ZSession realm=Zuora API, Bearer realm=Zuora API";

/// How the API endpoints answer a request that passed the token check (a request without a
/// valid token always gets 401). Set for every call with
/// [`MockZuora::set_api_mode`](super::MockZuora::set_api_mode), or call by call with
/// [`MockZuora::set_api_script`](super::MockZuora::set_api_script).
#[derive(Debug, Clone, PartialEq)]
pub enum ApiMode {
    Normal,
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Answer this status with Zuora's `REQUEST_EXCEEDED_LIMIT` body, with `Retry-After`
    /// when given.
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    /// Drop the connection without answering.
    Reset,
    /// A `/v1`-style failure inside a 200: `{"success": false, "processId": ..., "reasons":
    /// [{"code": code, "message": ...}]}`. Zuora retries codes ending in 50 (lock
    /// competition), 61 (temporary error) and 70 (concurrency limit).
    BodyError {
        code: u64,
    },
    /// Any answer: this status, these headers (each replaces the mock's header of that name,
    /// e.g. `RateLimit-Remaining`; `Content-Type` defaults to JSON) and this body. For a 503
    /// with `RateLimit-Reset`, a 429 with an HTTP-date `Retry-After`, a 409 for an
    /// `Idempotency-Key` still in progress...
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    // Raw answers, written straight onto the TLS stream; the connection is closed after each.
    // Unless said otherwise they carry the status, headers and body the endpoint gives
    // normally (200 on the mock's endpoints).
    /// `Content-Length` (half the body's length) and `Transfer-Encoding: chunked` at once, the
    /// body chunked.
    BothLengths,
    /// `Transfer-Encoding` set to this coding list, e.g. `"gzip, chunked"`. `gzip` in the list
    /// is applied (as an uncompressed gzip member), other codings are only named; a list
    /// ending in `chunked` is chunked, any other is ended by the close.
    TransferCoding(String),
    /// An unsolicited interim answer: `101 Switching Protocols` (with `Upgrade`) followed by a
    /// WebSocket frame; any other code (102, 103...) is followed by the normal answer.
    Informational(u16),
    /// This status (413, 401...) as soon as the head has arrived, before reading a byte of the
    /// body, then a close; it bites when the request has a large body still on its way.
    EarlyAnswer {
        status: u16,
    },
    /// The normal answer with the status line `HTTP/1.0 200 OK` and a `Content-Length`.
    Http10,
    /// `Content-Length: declared` and the first `after_bytes` of the body, then silence on the
    /// open connection until [`MockZuora::release_stalls`](super::MockZuora::release_stalls)
    /// (the rest is then sent), the client goes away or the mock is dropped; the request stays
    /// in flight meanwhile. The body is [`pattern_bytes`].
    StallBody {
        after_bytes: usize,
        declared: usize,
    },
    /// `Content-Length: declared`, `sent` bytes of [`pattern_bytes`], then a close.
    Truncated {
        declared: usize,
        sent: usize,
    },
    /// The normal body chunked without its last chunk, then a close.
    TruncatedChunked,
}

/// One API request the mock received (token requests are not recorded here).
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body as far as it arrived.
    pub body: Bytes,
    /// Whether the whole body arrived (false when the sender went away mid-body).
    pub body_complete: bool,
}

/// Why the mock ended a connection instead of answering.
#[derive(Debug, thiserror::Error)]
pub(super) enum Hangup {
    #[error("mock dropped the connection on purpose")]
    Reset,
    #[error("mock wrote a raw answer and closed the connection")]
    Raw,
    #[error("mock could not write its raw answer: {0}")]
    RawWrite(#[from] std::io::Error),
}

/// What the mock makes of a request once its head has arrived.
enum Verdict {
    Unauthorized,
    OverLimit(usize),
    Answer(ApiMode),
}

pub(super) async fn handle(
    state: Arc<State>,
    mut io: SharedIo,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Hangup> {
    let mut in_flight = state.flight.enter();
    let (parts, body) = request.into_parts();
    let limits = state.limits();
    // The mode is taken before the call is counted, so a test that waits for the count and
    // then changes the mode never changes it under this call.
    let verdict = if !authorized(&state, &parts.headers) {
        Verdict::Unauthorized
    } else if !in_flight.admit(limits.concurrency) {
        Verdict::OverLimit(limits.concurrency.unwrap_or_default())
    } else {
        Verdict::Answer(state.next_mode())
    };
    let (body, body_complete) = match verdict {
        Verdict::Answer(ApiMode::EarlyAnswer { .. }) => (Bytes::new(), body.is_end_stream()),
        _ => read_body(body).await,
    };
    state.record(Received {
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
        body_complete,
    });
    let zuora = zuora_headers(&parts);
    let (mut response, overrides) = match verdict {
        Verdict::Unauthorized => (unauthorized(), None),
        Verdict::OverLimit(limit) => (limit::rejection(limit, limits.retry_after_secs), None),
        Verdict::Answer(mode) => {
            let normal = endpoint(&parts.method, parts.uri.path());
            if let Some(plan) = raw::plan(&mode, &normal, &zuora) {
                let release = state.release.subscribe();
                raw::send(&mut io, plan, release).await?;
                // Hyper must not write after the raw answer: an error ends the connection silently.
                return Err(Hangup::Raw);
            }
            let mut response = answer(&mode, normal, limits.latency).await?;
            if let (Some(limit), true) = (limits.concurrency, parts.uri.path().contains("/v1")) {
                limit::limit_headers(response.headers_mut(), limit, state.flight.remaining(limit));
            }
            let overrides = match mode {
                ApiMode::Answer { headers, .. } => Some(headers),
                _ => None,
            };
            (response, overrides)
        }
    };
    let headers = response.headers_mut();
    for (name, value) in &zuora {
        headers.insert(name, value.clone());
    }
    hop_by_hop(headers);
    if let Some(given) = &overrides {
        replace_headers(headers, given);
    }
    // The request stays in flight until hyper has taken the last of its body.
    Ok(response.map(|body| GuardedBody::new(Full::new(body), in_flight)))
}

fn authorized(state: &State, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.issued.lock().unwrap().get(token).copied())
        .is_some_and(|expires| Instant::now() < expires)
}

/// Reads the body to its end, or as far as it comes before the sender goes away.
async fn read_body(mut body: Incoming) -> (Bytes, bool) {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            Err(_) => return (read.freeze(), false),
        }
    }
    (read.freeze(), true)
}

fn unauthorized() -> Response<Bytes> {
    let mut r = json_response(StatusCode::UNAUTHORIZED, json!({"message": "Authentication error"}));
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    r
}

/// The answer of the modes hyper sends; `normal` is what the endpoint gives, after `latency`.
async fn answer(mode: &ApiMode, normal: Response<Bytes>, latency: Duration) -> Result<Response<Bytes>, Hangup> {
    match mode {
        ApiMode::Normal if !latency.is_zero() => tokio::time::sleep(latency).await,
        ApiMode::Normal => {}
        ApiMode::Delay(d) => tokio::time::sleep(*d).await,
        ApiMode::Reset => return Err(Hangup::Reset),
        ApiMode::Status {
            status,
            retry_after_secs,
        } => {
            let mut r = json_bytes(status_code(*status), EXCEEDED_LIMIT);
            if let Some(secs) = retry_after_secs {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            return Ok(r);
        }
        ApiMode::BodyError { code } => return Ok(body_error(*code)),
        ApiMode::Answer { status, body, .. } => return Ok(json_bytes(status_code(*status), body.clone())),
        // Raw modes never get here (see `raw::plan`).
        _ => {}
    }
    Ok(normal)
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn body_error(code: u64) -> Response<Bytes> {
    let message = match code % 100 {
        50 => "The operation failed because of a lock competition. Please retry later.",
        61 => "A temporary error occurred. Please retry later.",
        70 => "Your request exceeded the concurrency limit. Please retry later.",
        _ => "The operation failed.",
    };
    let process_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_uppercase();
    json_response(
        StatusCode::OK,
        json!({"success": false, "processId": process_id, "reasons": [{"code": code, "message": message}]}),
    )
}

/// Zuora's headers on every API answer: its request id, the track id echo and the rate limit.
fn zuora_headers(request: &Parts) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let request_id = uuid::Uuid::new_v4().to_string();
    headers.insert("zuora-request-id", HeaderValue::try_from(request_id).expect("uuid"));
    if let Some(track) = request.headers.get("zuora-track-id") {
        headers.insert("zuora-track-id", track.clone());
    }
    headers.insert("ratelimit-limit", HeaderValue::from_static("12500"));
    headers.insert("ratelimit-remaining", HeaderValue::from_static("12499"));
    headers.insert("ratelimit-reset", HeaderValue::from_static("60"));
    headers
}

/// Hop-by-hop headers a proxy must not pass on (raw answers set their own `Connection`).
fn hop_by_hop(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("x-mock-hop"));
    headers.insert("x-mock-hop", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=30"));
}

/// A test's headers replace the mock's of the same names; a name given twice is sent twice.
fn replace_headers(headers: &mut HeaderMap, given: &[(String, String)]) {
    let parsed: Vec<(HeaderName, HeaderValue)> = given
        .iter()
        .filter_map(|(name, value)| Some((name.parse().ok()?, value.parse().ok()?)))
        .collect();
    for (name, _) in &parsed {
        headers.remove(name);
    }
    for (name, value) in parsed {
        headers.append(name, value);
    }
}

fn endpoint(method: &Method, path: &str) -> Response<Bytes> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["bulk-data", "bulk-jobs", id, "aborts"]) => {
            json_response(StatusCode::OK, json!({"id": id, "status": "Aborted"}))
        }
        (&Method::GET, ["bulk-data", "bulk-jobs", id, "summary"]) => json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Aborted", "name": "mock job"}),
        ),
        (&Method::GET, ["bulk-data", "bulk-jobs", _, "downloads"]) => {
            // Opaque bytes standing for a gzipped file: a proxy must pass them on untouched.
            let mut r = Response::new(Bytes::from(download_bytes()));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (&Method::GET, ["v1", "accounts", key]) => json_response(StatusCode::OK, super::account::account(key)),
        (&Method::POST, ["bulk-data", "bulk-jobs", _, "echo"]) => json_response(StatusCode::OK, json!({"echo": true})),
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "Not found"})),
    }
}

/// `len` bytes of the pattern the `downloads` endpoint sends (and stalled or truncated raw
/// answers).
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// The bytes the mock's `downloads` endpoint sends, for comparing with what a caller got.
pub fn download_bytes() -> Vec<u8> {
    pattern_bytes(200_000)
}
