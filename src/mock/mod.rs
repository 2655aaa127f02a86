//! A mock Zuora over real TLS: an OAuth token endpoint, the bulk-job endpoints and one account
//! endpoint, with knobs to make it fail, stall, refuse or expire tokens early. `demo` runs it;
//! the tests drive it. This file holds the builder, the handle tests drive, the shared state
//! and the accept loop.

mod account;
mod api;
mod limit;
pub mod pki;
mod raw;
#[cfg(test)]
mod tests;
mod token;

pub use api::{download_bytes, pattern_bytes, ApiMode, Received};
pub use token::{ExpiresIn, TokenMode, TokenRequest};

use crate::body::GuardedBody;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use limit::Flight;
use pki::TestCa;
use raw::SharedIo;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Every answer's body; an API answer's holds its request's place in flight until sent.
type MockBody = GuardedBody<Full<Bytes>>;

/// Client id the mock accepts unless told otherwise.
pub const CLIENT_ID: &str = "mock-client-id";
/// Client secret the mock accepts unless told otherwise.
pub const CLIENT_SECRET: &str = "mock-client-secret";

struct Settings {
    client_id: String,
    client_secret: String,
    expires_in: ExpiresIn,
    token_mode: TokenMode,
    api_mode: ApiMode,
    /// Modes for the next API calls, one each, before `api_mode` applies again.
    api_script: VecDeque<ApiMode>,
    limits: Limits,
}

/// The knobs read once per API request.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    /// API requests handled at once; more get Zuora's 429.
    concurrency: Option<usize>,
    /// `Retry-After` on those 429s.
    retry_after_secs: Option<u64>,
    /// Added before every `ApiMode::Normal` answer.
    latency: Duration,
}

struct State {
    settings: Mutex<Settings>,
    token_calls: watch::Sender<usize>,
    token_requests: Mutex<Vec<TokenRequest>>,
    api_calls: watch::Sender<usize>,
    issued: Mutex<HashMap<String, Instant>>,
    received: Mutex<Vec<Received>>,
    serial: AtomicU64,
    connections: AtomicUsize,
    flight: Arc<Flight>,
    /// Bumped to release the answers stalled by [`ApiMode::StallBody`].
    release: watch::Sender<u64>,
}

/// Builder for [`MockZuora`].
pub struct MockBuilder {
    settings: Settings,
    addr: SocketAddr,
}

impl MockBuilder {
    pub fn expires_in(mut self, expires_in: ExpiresIn) -> Self {
        self.settings.expires_in = expires_in;
        self
    }

    /// How the token endpoint behaves from the start.
    pub fn token_mode(mut self, mode: TokenMode) -> Self {
        self.settings.token_mode = mode;
        self
    }

    /// How the API endpoints answer from the start (see [`MockZuora::set_api_mode`]).
    pub fn api_mode(mut self, mode: ApiMode) -> Self {
        self.settings.api_mode = mode;
        self
    }

    /// The first API calls' modes (see [`MockZuora::set_api_script`]).
    pub fn api_script(mut self, modes: Vec<ApiMode>) -> Self {
        self.settings.api_script = modes.into();
        self
    }

    /// Zuora's concurrency limit (see [`MockZuora::set_concurrency_limit`]).
    pub fn concurrency_limit(mut self, limit: usize) -> Self {
        self.settings.limits.concurrency = Some(limit);
        self
    }

    /// `Retry-After` on the concurrency limit's 429s (see [`MockZuora::set_concurrency_retry_after`]).
    pub fn concurrency_retry_after(mut self, secs: u64) -> Self {
        self.settings.limits.retry_after_secs = Some(secs);
        self
    }

    /// The time every normal API answer takes (see [`MockZuora::set_latency`]).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.settings.limits.latency = latency;
        self
    }

    pub fn credentials(mut self, client_id: &str, client_secret: &str) -> Self {
        self.settings.client_id = client_id.into();
        self.settings.client_secret = client_secret.into();
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
            settings: Mutex::new(self.settings),
            token_calls: watch::channel(0).0,
            token_requests: Mutex::new(Vec::new()),
            api_calls: watch::channel(0).0,
            issued: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            flight: Arc::new(Flight::new()),
            release: watch::channel(0).0,
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
            settings: Settings {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                expires_in: ExpiresIn::Int(3599),
                token_mode: TokenMode::Normal,
                api_mode: ApiMode::Normal,
                api_script: VecDeque::new(),
                limits: Limits::default(),
            },
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

    /// Calls of the token endpoint, counted as they arrive.
    pub fn token_calls(&self) -> usize {
        *self.state.token_calls.borrow()
    }

    /// Every answered call of the token endpoint, oldest first (a call still waiting in
    /// [`TokenMode::Delay`] is counted by [`MockZuora::token_calls`] but not listed yet).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.token_requests.lock().unwrap().clone()
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

    /// The next API calls that pass the token check get these modes, one each in order;
    /// after them the mode of [`MockZuora::set_api_mode`] applies again (`Normal` unless
    /// changed). Replaces any script not yet used up. A script of one 503 models "503 once,
    /// then 200".
    pub fn set_api_script(&self, modes: Vec<ApiMode>) {
        self.state.settings.lock().unwrap().api_script = modes.into();
    }

    /// Zuora's concurrency limit: an API request that arrives while `limit` others are being
    /// handled gets 429 with Zuora's `REQUEST_EXCEEDED_LIMIT` body and its headers
    /// (`Concurrency-Limit-Type: Default`, `Concurrency-Limit-Limit`,
    /// `Concurrency-Limit-Remaining: 0`, `RateLimit-*`, and `Retry-After` when set). Answers
    /// under the limit on `/v1` paths carry the `Concurrency-Limit-*` headers too. `None`: no
    /// limit (the default).
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.state.settings.lock().unwrap().limits.concurrency = limit;
    }

    /// `Retry-After` (seconds) on the concurrency limit's 429s; `None` (the default) sends none,
    /// as in Zuora's rate-limit guide.
    pub fn set_concurrency_retry_after(&self, secs: Option<u64>) {
        self.state.settings.lock().unwrap().limits.retry_after_secs = secs;
    }

    /// Every [`ApiMode::Normal`] answer waits this long first (zero by default). Requests keep
    /// their place under the concurrency limit meanwhile, so a 50 ms, limit-40 Zuora is
    /// `set_latency(50 ms)` with `set_concurrency_limit(Some(40))`.
    pub fn set_latency(&self, latency: Duration) {
        self.state.settings.lock().unwrap().limits.latency = latency;
    }

    /// API requests in flight now: from the arrival of the head until the answer's body has
    /// been sent (429s and 401s included).
    pub fn in_flight(&self) -> usize {
        self.state.flight.in_flight()
    }

    /// The most API requests in flight at once so far (429s included: they were sent).
    pub fn peak_concurrency(&self) -> usize {
        self.state.flight.peak()
    }

    /// API requests refused with 429 for the concurrency limit so far (each is in
    /// [`MockZuora::received`] too: Zuora did receive it).
    pub fn rejected_429(&self) -> usize {
        self.state.flight.rejected()
    }

    /// Waits until at least `n` API requests are in flight at once; false on timeout.
    pub async fn wait_in_flight(&self, n: usize, timeout: Duration) -> bool {
        self.state.flight.wait_in_flight(n, timeout).await
    }

    /// Waits until no API request is in flight; false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        self.state.flight.wait_idle(timeout).await
    }

    /// Lets every answer stalled by [`ApiMode::StallBody`] now send the rest of its body.
    pub fn release_stalls(&self) {
        self.state.release.send_modify(|n| *n += 1);
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

    /// One header of every API request received, oldest first (`""` where a request had none).
    pub fn received_header(&self, name: &str) -> Vec<String> {
        let received = self.state.received.lock().unwrap();
        received
            .iter()
            .map(|r| r.headers.get(name).map_or("", |v| v.to_str().unwrap_or("")).to_string())
            .collect()
    }
}

impl State {
    fn limits(&self) -> Limits {
        self.settings.lock().unwrap().limits
    }

    /// The mode for the API call now being answered: the script's next one, else the set mode.
    fn next_mode(&self) -> ApiMode {
        let mut settings = self.settings.lock().unwrap();
        match settings.api_script.pop_front() {
            Some(mode) => mode,
            None => settings.api_mode.clone(),
        }
    }

    fn record(&self, received: Received) {
        self.received.lock().unwrap().push(received);
        self.api_calls.send_modify(|c| *c += 1);
    }
}

/// Waits until `counter` reaches `n`; false on timeout.
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
            let io = SharedIo::new(tls);
            let raw_io = io.clone();
            let service = service_fn(move |request| handle(state.clone(), raw_io.clone(), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(io), service).await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    io: SharedIo,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, api::Hangup> {
    if request.uri().path() == "/oauth/token" {
        let response = token::endpoint(&state, request).await;
        return Ok(response.map(|body| GuardedBody::new(Full::new(body), ())));
    }
    api::handle(state, io, request).await
}

/// The `Content-Type` of the mock's JSON answers.
const JSON: &str = "application/json; charset=utf-8";

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    json_bytes(status, body.to_string())
}

fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}
