//! The mock's OAuth 2.0 token endpoint (`POST /oauth/token`, client credentials in the form
//! body), issuing tokens the API endpoints then accept until they expire or are revoked.

use super::{json_response, State};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How the mock states a token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpiresIn {
    Int(u64),
    Float(f64),
    /// No `expires_in` field: the token lives 3600 s.
    Missing,
}

impl ExpiresIn {
    fn lifetime(self) -> Duration {
        match self {
            ExpiresIn::Int(s) => Duration::from_secs(s),
            ExpiresIn::Float(s) => Duration::from_secs_f64(s),
            ExpiresIn::Missing => Duration::from_secs(3600),
        }
    }
}

/// How the token endpoint behaves.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenMode {
    Normal,
    /// Answer this status with a JSON error body.
    Status(u16),
    /// Answer 429 with `Retry-After`.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
}

/// One call of the token endpoint. The secret is never kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    /// When the request arrived.
    pub at: Instant,
    /// The form's `client_id` (empty when absent).
    pub client_id: String,
    /// Whether a token was issued.
    pub granted: bool,
}

pub(super) async fn endpoint(state: &State, request: Request<Incoming>) -> Response<Bytes> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mode = state.settings.lock().unwrap().token_mode.clone();
    state.token_calls.send_modify(|c| *c += 1);
    let response = match mode {
        TokenMode::Normal => issue(state, &parts.method, &parts.headers, &form),
        TokenMode::Delay(d) => {
            tokio::time::sleep(d).await;
            issue(state, &parts.method, &parts.headers, &form)
        }
        TokenMode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, json!({"message": "mock token endpoint failure"}))
        }
        TokenMode::RateLimited { retry_after_secs } => {
            let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, json!({"message": "Too many requests"}));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
    };
    state.token_requests.lock().unwrap().push(TokenRequest {
        at,
        client_id: form.get("client_id").cloned().unwrap_or_default(),
        granted: response.status() == StatusCode::OK,
    });
    response
}

fn issue(state: &State, method: &Method, headers: &HeaderMap, form: &HashMap<String, String>) -> Response<Bytes> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    if *method != Method::POST || !form_type || headers.contains_key(header::AUTHORIZATION) {
        // Zuora wants the credentials in the form body; a Basic header is a client bug.
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "credentials must be form fields of a POST"}),
        );
    }
    let (expected_id, expected_secret, expires_in) = {
        let s = state.settings.lock().unwrap();
        (s.client_id.clone(), s.client_secret.clone(), s.expires_in)
    };
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("client_id") == Some(&expected_id)
        && form.get("client_secret") == Some(&expected_secret);
    if !ok {
        return json_response(StatusCode::UNAUTHORIZED, json!({"message": "Authentication error"}));
    }
    let serial = state.serial.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("mock-token-{serial}-{}", uuid::Uuid::new_v4().simple());
    state
        .issued
        .lock()
        .unwrap()
        .insert(token.clone(), Instant::now() + expires_in.lifetime());
    let mut answer = json!({
        "access_token": token,
        "token_type": "bearer",
        "scope": "user.8a8aa0ad entity.8a8aa0ad-5ab8-4a9b-9f2e-2f1c5b0c1d3e platform.write service.bulk-data.read tenant.9999",
        "jti": uuid::Uuid::new_v4().simple().to_string(),
    });
    match expires_in {
        ExpiresIn::Int(s) => answer["expires_in"] = json!(s),
        ExpiresIn::Float(s) => answer["expires_in"] = json!(s),
        ExpiresIn::Missing => {}
    }
    json_response(StatusCode::OK, answer)
}
