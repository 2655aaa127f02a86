//! The caller-side token endpoint: `POST /oauth/token` answered by the proxy itself with a
//! fixed placeholder in Zuora's shape, so that Zuora's SDKs, which fetch a token before any
//! call, work through the proxy unchanged. Nothing here reaches Zuora or holds a credential:
//! the caller's `client_id` / `client_secret` are read off the wire and dropped unlooked-at,
//! and the placeholder they get back is replaced by the real token on every forwarded call
//! (as any caller `Authorization` is).

use crate::error::ProxyError;
use crate::headers::ZUORA_TRACK_ID;
use crate::routes::{IdempotencyKey, PathTemplate, RetryPolicy, Route};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use std::sync::Arc;

/// The endpoint's name in rules, access lines and metrics.
pub const ROUTE_NAME: &str = "caller-token";
/// Where Zuora's SDKs ask for a token: the same path as on Zuora.
pub const PATH: &str = "/oauth/token";
/// What callers get as `access_token`: obviously not a credential, so that finding it in a
/// service's memory or logs says "this goes through the proxy" and nothing more.
pub const PLACEHOLDER: &str = "zuora-auth-proxy-managed";
/// A day: SDKs refresh on their own timers (the Python SDK every 10 minutes) or near
/// expiry, so a long life keeps them from asking often; asking costs Zuora nothing anyway.
pub const EXPIRES_IN_SECS: u64 = 24 * 60 * 60;
/// Zuora sends a space-separated scope list; the placeholder's says who manages the token.
const SCOPE: &str = "zuora-auth-proxy.managed";

/// The endpoint as a route on the allowlist, so that resolution (405 with `Allow: POST`),
/// rules and records treat it like any other.
pub fn route() -> Arc<Route> {
    Arc::new(Route {
        name: ROUTE_NAME.into(),
        method: Method::POST,
        template: PathTemplate::parse(PATH).expect("a literal path is a template"),
        retry: RetryPolicy::default(),
        idempotency_key: IdempotencyKey::default(),
        zuora_body_errors: false,
        track_id_from_trace: false,
    })
}

/// Reads the caller's body (bounded by `max_body`) and drops it, then answers with the
/// placeholder. The body is read rather than left so that the connection stays usable for
/// the caller's next request; its bytes are never kept, parsed or logged.
pub async fn answer<B>(
    body: B,
    headers: &HeaderMap,
    max_body: u64,
    track_id: &HeaderValue,
) -> Result<Response<Full<Bytes>>, ProxyError>
where
    B: Body + Unpin,
{
    drain(body, headers, max_body).await?;
    Ok(placeholder(track_id))
}

async fn drain<B: Body + Unpin>(mut body: B, headers: &HeaderMap, max_body: u64) -> Result<(), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::BodyTooLarge { limit: max_body });
    }
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::BodyRead)?;
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(bytes::Buf::remaining(data) as u64);
            if seen > max_body {
                return Err(ProxyError::BodyTooLarge { limit: max_body });
            }
        }
    }
    Ok(())
}

/// Zuora's token answer, with the placeholder. `Cache-Control: no-store` as RFC 6749 §5.1
/// asks of every token answer, though this one holds nothing worth caching or hiding.
fn placeholder(track_id: &HeaderValue) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "access_token": PLACEHOLDER,
        "token_type": "bearer",
        "expires_in": EXPIRES_IN_SECS,
        "scope": SCOPE,
        "jti": uuid::Uuid::new_v4().simple().to_string(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(ZUORA_TRACK_ID.clone(), track_id.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathMatch;
    use http_body_util::{Empty, StreamBody};

    fn length(n: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        headers
    }

    async fn json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn answers_in_zuoras_shape_whatever_the_body() {
        let track = HeaderValue::from_static("t-1");
        let form = "client_id=abc&client_secret=s3cr3t&grant_type=client_credentials";
        let json_body = r#"{"client_id":"abc","client_secret":"s3cr3t"}"#;
        for body in [form, json_body, ""] {
            let response = answer(Full::new(Bytes::from(body)), &length(body.len()), 1024, &track)
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.headers()["cache-control"], "no-store");
            assert_eq!(response.headers()["zuora-track-id"], "t-1");
            let json = json(response).await;
            assert_eq!(json["access_token"], PLACEHOLDER);
            assert_eq!(json["token_type"], "bearer");
            assert_eq!(json["expires_in"], EXPIRES_IN_SECS);
            assert!(json["scope"].is_string() && json["jti"].as_str().is_some_and(|j| j.len() == 32));
            assert!(!json.to_string().contains("s3cr3t"), "{json}");
        }
        let none = answer(Empty::<Bytes>::new(), &HeaderMap::new(), 1024, &track)
            .await
            .unwrap();
        assert_eq!(json(none).await["access_token"], PLACEHOLDER);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_declared_or_streamed() {
        let track = HeaderValue::from_static("t-2");
        let big = Bytes::from(vec![b'a'; 11]);
        let declared = answer(Full::new(big.clone()), &length(11), 10, &track).await;
        assert_eq!(declared.unwrap_err(), ProxyError::BodyTooLarge { limit: 10 });
        let chunks = futures_util::stream::iter(
            [&big[..6], &big[6..]]
                .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::copy_from_slice(c)))),
        );
        let streamed = answer(StreamBody::new(chunks), &HeaderMap::new(), 10, &track).await;
        assert_eq!(streamed.unwrap_err(), ProxyError::BodyTooLarge { limit: 10 });
        let exact = answer(Full::new(Bytes::from(vec![b'a'; 10])), &length(10), 10, &track).await;
        assert!(exact.is_ok());
    }

    #[test]
    fn the_route_matches_only_its_path() {
        let route = route();
        assert_eq!(route.name, ROUTE_NAME);
        assert_eq!(route.method, Method::POST);
        assert_eq!(route.template.matches("/oauth/token"), PathMatch::Yes);
        assert_eq!(route.template.matches("/oauth/token/x"), PathMatch::No);
        assert_eq!(route.template.matches("/oauth"), PathMatch::No);
        assert_eq!(route.retry.attempts, 0, "nothing is sent, so nothing is retried");
    }
}
