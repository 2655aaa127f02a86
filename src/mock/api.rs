//! The mock's REST API: the token check, the answer modes tests switch between, and the
//! endpoints (bulk-data jobs) with Zuora's response headers.

use super::{json_response, MockBody, State};
use crate::body::full;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the API endpoints behave (the token check still applies first).
#[derive(Debug, Clone, PartialEq)]
pub enum ApiMode {
    Normal,
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Answer this status, with `Retry-After` when given.
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    /// Drop the connection without answering.
    Reset,
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why the mock ended a connection instead of answering.
#[derive(Debug, thiserror::Error)]
pub(super) enum Hangup {
    #[error("mock dropped the connection on purpose")]
    Reset,
}

pub(super) async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<MockBody>, Hangup> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    state.received.lock().unwrap().push(Received {
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    });
    // The mode is read before the call is counted, so a test that waits for the count and
    // then changes the mode never changes it under this call.
    let mode = state.settings.lock().unwrap().api_mode.clone();
    state.api_calls.send_modify(|c| *c += 1);
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = answer(&state, mode, &parts.method, parts.uri.path(), &parts.headers).await?;
    let headers = response.headers_mut();
    headers.insert("zuora-request-id", HeaderValue::try_from(request_id).expect("uuid"));
    if let Some(track) = parts.headers.get("zuora-track-id") {
        headers.insert("zuora-track-id", track.clone());
    }
    headers.insert("ratelimit-limit", HeaderValue::from_static("12500"));
    headers.insert("ratelimit-remaining", HeaderValue::from_static("12499"));
    headers.insert("ratelimit-reset", HeaderValue::from_static("60"));
    // Hop-by-hop headers a proxy must not pass on.
    headers.insert(header::CONNECTION, HeaderValue::from_static("x-mock-hop"));
    headers.insert("x-mock-hop", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=30"));
    Ok(response)
}

async fn answer(
    state: &State,
    mode: ApiMode,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<MockBody>, Hangup> {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.issued.lock().unwrap().get(token).copied())
        .is_some_and(|expires| Instant::now() < expires);
    if !authorized {
        let mut r = json_response(StatusCode::UNAUTHORIZED, json!({"message": "Authentication error"}));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=Zuora API, ZSession realm=Zuora API, Bearer realm=Zuora API"),
        );
        return Ok(r);
    }
    match mode {
        ApiMode::Normal => {}
        ApiMode::Delay(d) => tokio::time::sleep(d).await,
        ApiMode::Reset => return Err(Hangup::Reset),
        ApiMode::Status {
            status,
            retry_after_secs,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = json_response(
                status,
                json!({"code": "REQUEST_EXCEEDED_LIMIT", "message": "Your total number of concurrent requests have exceeded the limit allowed by the system. Please resubmit your request later."}),
            );
            if let Some(secs) = retry_after_secs {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(r);
        }
    }
    Ok(endpoint(method, path))
}

fn endpoint(method: &Method, path: &str) -> Response<MockBody> {
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
            let mut r = Response::new(full(download_bytes()));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (&Method::POST, ["bulk-data", "bulk-jobs", _, "echo"]) => json_response(StatusCode::OK, json!({"echo": true})),
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "Not found"})),
    }
}

/// The bytes the mock's `downloads` endpoint sends, for comparing with what a caller got.
pub fn download_bytes() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}
