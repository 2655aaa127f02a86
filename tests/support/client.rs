//! A caller of the proxy: plain-HTTP requests with their answers collected, and the checks
//! every test makes of an answer the proxy made itself.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A caller's answer, body collected.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one plain-HTTP request and collects the answer.
pub async fn call(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(request.body(Full::new(body.into())).unwrap()).await
}

/// A POST with no body.
#[allow(dead_code)] // not every test file sends a bare POST
pub async fn post(url: &str, headers: &[(&str, &str)]) -> Answer {
    call(Method::POST, url, headers, Bytes::new()).await
}

#[allow(dead_code)] // not every test file sends a GET
pub async fn get(url: &str) -> Answer {
    call(Method::GET, url, &[], Bytes::new()).await
}

/// Sends a plain-HTTP request with any body type (a streamed one, say) and collects the answer.
pub async fn send<B>(request: Request<B>) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// POSTs to `url` with `Zuora-Track-Id: track`, which the proxy refuses with `status` and
/// `code` (see [`assert_refusal`]) under the same track id. How long the refusal took.
#[allow(dead_code)] // for the test files that time a refusal
pub async fn timed_refusal(url: &str, track: &str, status: u16, code: &str) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    let answer = post(url, &[("zuora-track-id", track)]).await;
    let took = started.elapsed();
    assert_eq!(assert_refusal(&answer, status, code), track);
    took
}

/// Checks one answer the proxy made itself: status, `x-zuora-proxy-error`, JSON content type,
/// a body of exactly `error`, `message` and `track_id`, and a track id equal to the header's.
/// Returns the track id.
#[allow(dead_code)] // not every test file is refused
pub fn assert_refusal(answer: &Answer, status: u16, code: &str) -> String {
    assert_eq!(answer.status.as_u16(), status, "{code}: {:?}", answer.body);
    assert_eq!(answer.header("x-zuora-proxy-error"), Some(code), "{code}");
    assert_eq!(answer.header("content-type"), Some("application/json"), "{code}");
    let json = answer.json();
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("{code}: body is not an object: {json}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "track_id"], "{code}: {json}");
    assert_eq!(json["error"], code, "{json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{code}: {json}"
    );
    let track = answer
        .header("zuora-track-id")
        .unwrap_or_else(|| panic!("{code}: no track id header"))
        .to_string();
    assert_eq!(
        json["track_id"],
        track.as_str(),
        "{code}: body and header track ids differ"
    );
    track
}
