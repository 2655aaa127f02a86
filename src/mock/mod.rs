//! A mock Zuora over real TLS: an OAuth token endpoint and the bulk-job endpoints, with knobs
//! to make it fail, stall or expire tokens early. `demo` runs it; the tests drive it.

pub mod pki;

use crate::body::{full, ResponseBody};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pki::TestCa;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Client id the mock accepts unless told otherwise.
pub const CLIENT_ID: &str = "mock-client-id";
/// Client secret the mock accepts unless told otherwise.
pub const CLIENT_SECRET: &str = "mock-client-secret";

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

struct Settings {
    client_id: String,
    client_secret: String,
    expires_in: ExpiresIn,
    token_mode: TokenMode,
    api_mode: ApiMode,
}

struct State {
    settings: Mutex<Settings>,
    token_calls: watch::Sender<usize>,
    api_calls: watch::Sender<usize>,
    issued: Mutex<HashMap<String, Instant>>,
    received: Mutex<Vec<Received>>,
    serial: AtomicU64,
    connections: AtomicUsize,
}

/// Builder for [`MockZuora`].
pub struct MockBuilder {
    expires_in: ExpiresIn,
    token_mode: TokenMode,
    client_id: String,
    client_secret: String,
    addr: SocketAddr,
}

impl MockBuilder {
    pub fn expires_in(mut self, expires_in: ExpiresIn) -> Self {
        self.expires_in = expires_in;
        self
    }

    /// How the token endpoint behaves from the start.
    pub fn token_mode(mut self, mode: TokenMode) -> Self {
        self.token_mode = mode;
        self
    }

    pub fn credentials(mut self, client_id: &str, client_secret: &str) -> Self {
        self.client_id = client_id.into();
        self.client_secret = client_secret.into();
        self
    }

    /// Listen here instead of a free loopback port (a restarted mock keeps its address).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    pub async fn start(self) -> std::io::Result<MockZuora> {
        self.start_with_ca(Arc::new(TestCa::new("mock Zuora CA"))).await
    }

    /// Starts with a given CA, so a restarted mock is trusted by the same `ca_file`.
    pub async fn start_with_ca(self, ca: Arc<TestCa>) -> std::io::Result<MockZuora> {
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            settings: Mutex::new(Settings {
                client_id: self.client_id,
                client_secret: self.client_secret,
                expires_in: self.expires_in,
                token_mode: self.token_mode,
                api_mode: ApiMode::Normal,
            }),
            token_calls: watch::channel(0).0,
            api_calls: watch::channel(0).0,
            issued: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
        });
        let acceptor = TlsAcceptor::from(ca.server_config(&["127.0.0.1", "localhost"]));
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        Ok(MockZuora { addr, ca, state, task })
    }
}

/// A running mock Zuora; stops when dropped, closing its connections. To restart it, drop it
/// and start a new one with [`MockBuilder::addr`] and [`MockBuilder::start_with_ca`].
pub struct MockZuora {
    addr: SocketAddr,
    ca: Arc<TestCa>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockZuora {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockZuora {
    pub fn builder() -> MockBuilder {
        MockBuilder {
            expires_in: ExpiresIn::Int(3599),
            token_mode: TokenMode::Normal,
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            addr: ([127, 0, 0, 1], 0).into(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca(&self) -> &Arc<TestCa> {
        &self.ca
    }

    /// Writes the CA certificate into `dir` and returns its path, for a tenant's `ca_file`.
    pub fn write_ca(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("mock-zuora-ca.pem");
        std::fs::write(&path, self.ca.cert_pem())?;
        Ok(path)
    }

    pub fn token_calls(&self) -> usize {
        *self.state.token_calls.borrow()
    }

    /// Calls to any endpoint but the token endpoint.
    pub fn api_calls(&self) -> usize {
        *self.state.api_calls.borrow()
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until the token endpoint was called at least `n` times; false on timeout.
    pub async fn wait_token_calls(&self, n: usize, timeout: Duration) -> bool {
        wait_count(&self.state.token_calls, n, timeout).await
    }

    /// Waits until the API endpoints were called at least `n` times; false on timeout.
    pub async fn wait_api_calls(&self, n: usize, timeout: Duration) -> bool {
        wait_count(&self.state.api_calls, n, timeout).await
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.state.settings.lock().unwrap().token_mode = mode;
    }

    pub fn set_api_mode(&self, mode: ApiMode) {
        self.state.settings.lock().unwrap().api_mode = mode;
    }

    pub fn set_expires_in(&self, expires_in: ExpiresIn) {
        self.state.settings.lock().unwrap().expires_in = expires_in;
    }

    pub fn set_client_secret(&self, secret: &str) {
        self.state.settings.lock().unwrap().client_secret = secret.into();
    }

    /// Forgets every issued token: the next API call with one of them gets a 401.
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().unwrap().clear();
    }

    /// Every API request received (token requests excluded), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn wait_count(counter: &watch::Sender<usize>, n: usize, timeout: Duration) -> bool {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok();
    reached
}

/// Accepts until dropped; its connections die with it, as they would with a crashed server.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(move |request| handle(state.clone(), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

#[derive(Debug, thiserror::Error)]
#[error("mock dropped the connection on purpose")]
struct Dropped;

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<ResponseBody>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if parts.uri.path() == "/oauth/token" {
        return Ok(token_endpoint(&state, &parts.method, &parts.headers, &body).await);
    }
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
    let mut response = api_endpoint(&state, mode, &parts.method, parts.uri.path(), &parts.headers).await?;
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

async fn token_endpoint(state: &State, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response<ResponseBody> {
    let mode = state.settings.lock().unwrap().token_mode.clone();
    state.token_calls.send_modify(|c| *c += 1);
    match mode {
        TokenMode::Normal => {}
        TokenMode::Delay(d) => tokio::time::sleep(d).await,
        TokenMode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json_response(status, json!({"message": "mock token endpoint failure"}));
        }
        TokenMode::RateLimited { retry_after_secs } => {
            let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, json!({"message": "Too many requests"}));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return r;
        }
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
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

async fn api_endpoint(
    state: &State,
    mode: ApiMode,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Dropped> {
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
        ApiMode::Reset => return Err(Dropped),
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
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Ok(match (method, segments.as_slice()) {
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
    })
}

/// The bytes the mock's `downloads` endpoint sends, for comparing with what a caller got.
pub fn download_bytes() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}
