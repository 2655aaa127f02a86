//! Test harness: a mock Zuora over real TLS, the proxy started in-process on `127.0.0.1:0`
//! and wired to it, and a small plain-HTTP client for callers.
#![allow(dead_code)]

pub mod binary;
pub mod raw;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use zuora_auth_proxy::mock::{MockBuilder, MockZuora, CLIENT_ID, CLIENT_SECRET};
use zuora_auth_proxy::Config;
use zuora_auth_proxy::Running;

pub const JOB: &str = "3a3e85c4-96e7-486b-ae02-827120104301";
pub const ENTITY: &str = "8a8aa0ad-5ab8-4a9b-9f2e-2f1c5b0c1d3e";

pub fn abort_path() -> String {
    format!("/bulk-data/bulk-jobs/{JOB}/aborts")
}

pub fn summary_path() -> String {
    format!("/bulk-data/bulk-jobs/{JOB}/summary")
}

pub fn echo_path() -> String {
    format!("/bulk-data/bulk-jobs/{JOB}/echo")
}

/// The routes most tests use: the abort call, plus a GET and a streaming POST for body tests.
pub const ROUTES: &str = r#"
[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"

[[routes]]
name = "job-summary"
method = "GET"
path = "/bulk-data/bulk-jobs/{id:uuid}/summary"

[[routes]]
name = "job-downloads"
method = "GET"
path = "/bulk-data/bulk-jobs/{id:uuid}/downloads"

[[routes]]
name = "echo"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/echo"
"#;

/// Builds a [`Harness`]. Keys are given as TOML `key = value` lines per section.
pub struct HarnessBuilder {
    server: BTreeMap<String, String>,
    admin: BTreeMap<String, String>,
    tenant: BTreeMap<String, String>,
    routes: String,
    rules: String,
    mock: MockBuilder,
    secret_file: Option<String>,
}

impl Default for HarnessBuilder {
    fn default() -> Self {
        let mut server = BTreeMap::new();
        server.insert("listen".into(), "\"127.0.0.1:0\"".into());
        server.insert("request_timeout".into(), "\"10s\"".into());
        server.insert("shutdown_grace".into(), "\"5s\"".into());
        let mut admin = BTreeMap::new();
        admin.insert("listen".into(), "\"127.0.0.1:0\"".into());
        admin.insert("ready_min_ttl".into(), "\"1s\"".into());
        let mut tenant = BTreeMap::new();
        tenant.insert("client_id".into(), format!("\"{CLIENT_ID}\""));
        tenant.insert("token_wait".into(), "\"3s\"".into());
        HarnessBuilder {
            server,
            admin,
            tenant,
            routes: ROUTES.into(),
            rules: String::new(),
            mock: MockZuora::builder(),
            secret_file: Some(CLIENT_SECRET.into()),
        }
    }
}

impl HarnessBuilder {
    pub fn server(mut self, key: &str, toml_value: &str) -> Self {
        self.server.insert(key.into(), toml_value.into());
        self
    }
    pub fn admin(mut self, key: &str, toml_value: &str) -> Self {
        self.admin.insert(key.into(), toml_value.into());
        self
    }
    pub fn tenant(mut self, key: &str, toml_value: &str) -> Self {
        self.tenant.insert(key.into(), toml_value.into());
        self
    }
    pub fn routes(mut self, text: &str) -> Self {
        self.routes = text.into();
        self
    }
    /// `[[rules]]` tables; `{tenant}` is the tenant's name (`default`).
    pub fn rules(mut self, text: &str) -> Self {
        self.rules = text.into();
        self
    }
    pub fn mock(mut self, f: impl FnOnce(MockBuilder) -> MockBuilder) -> Self {
        self.mock = f(self.mock);
        self
    }
    /// Use an inline secret instead of the default secret file.
    pub fn inline_secret(mut self) -> Self {
        self.secret_file = None;
        self.tenant
            .insert("client_secret".into(), format!("\"{CLIENT_SECRET}\""));
        self
    }

    pub async fn start(self) -> Harness {
        let mock = self.mock.start().await.expect("mock starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = mock.write_ca(dir.path()).expect("CA written");
        let secret_path = dir.path().join("client-secret");
        let mut tenant = self.tenant.clone();
        tenant
            .entry("base_url".into())
            .or_insert(format!("\"{}\"", mock.base_url()));
        tenant.insert("ca_file".into(), format!("{:?}", ca_file.display().to_string()));
        if let Some(secret) = &self.secret_file {
            std::fs::write(&secret_path, format!("{secret}\n")).unwrap();
            tenant.insert(
                "client_secret_file".into(),
                format!("{:?}", secret_path.display().to_string()),
            );
        }
        let text = format!(
            "[server]\n{}\n[admin]\n{}\n[log]\nformat = \"json\"\n[tenants.default]\n{}\n{}\n{}",
            lines(&self.server),
            lines(&self.admin),
            lines(&tenant),
            self.routes,
            self.rules
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let proxy = zuora_auth_proxy::start(config).await.expect("proxy starts");
        Harness {
            mock,
            proxy,
            dir,
            secret_path,
            config_text: text,
        }
    }
}

fn lines(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// A running mock Zuora and a proxy wired to it.
pub struct Harness {
    pub mock: MockZuora,
    pub proxy: Running,
    pub dir: tempfile::TempDir,
    pub secret_path: PathBuf,
    pub config_text: String,
}

impl Harness {
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin_addr.expect("admin listener"))
    }

    /// Stops the in-process proxy (it drains at once: nothing is in flight) so that a binary can
    /// take its place; hands back the mock, the temp dir and the configuration text.
    pub async fn stop_proxy(self) -> (MockZuora, tempfile::TempDir, String) {
        let Harness {
            mock,
            proxy,
            dir,
            config_text,
            ..
        } = self;
        proxy.begin_shutdown();
        proxy.wait().await;
        (mock, dir, config_text)
    }

    /// Waits until the proxy holds a token (the first fetch is in the background).
    pub async fn wait_for_token(&self) {
        assert!(
            self.mock.wait_token_calls(1, Duration::from_secs(10)).await,
            "no token fetch"
        );
        self.proxy
            .probe()
            .wait_for_token("default", Duration::from_secs(10))
            .await
            .expect("token in time");
    }
}

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

pub async fn post(url: &str, headers: &[(&str, &str)]) -> Answer {
    call(Method::POST, url, headers, Bytes::new()).await
}

pub async fn get(url: &str) -> Answer {
    call(Method::GET, url, &[], Bytes::new()).await
}

/// Writes raw bytes to the proxy and reads until the server closes or `timeout` passes.
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---- Helpers for refusal, token, upstream, body and binary tests ----

/// The `Zuora-Track-Id` of a request Zuora received, or `""`.
pub fn track_of(headers: &HeaderMap) -> String {
    headers
        .get("zuora-track-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The admin listener's `/metrics` text.
pub async fn metrics_text(h: &Harness) -> String {
    let answer = get(&h.admin_url("/metrics")).await;
    assert_eq!(answer.status, 200);
    String::from_utf8(answer.body.to_vec()).expect("UTF-8")
}

/// The value of the sample line `series value` in a metrics text (`series` is `name{labels}`,
/// exactly), if the series is there.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{series}: bad value {v:?}")))
}

/// [`sample`], reading a series that does not exist (yet) as 0, as an untouched counter reads.
pub fn sample_or_zero(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// Held for a whole test so that the tests of one test binary that take it run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The default tenant's usable token, as the proxy shows it.
pub fn token(h: &Harness) -> Option<zuora_auth_proxy::TokenView> {
    h.proxy.probe().token("default")
}

/// A loopback address nothing listens on: bound to find a free port, then released.
pub fn closed_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}

/// Checks one answer the proxy made itself: status, `x-zuora-proxy-error`, JSON content type,
/// a body of exactly `error`, `message` and `track_id`, and a track id equal to the header's.
/// Returns the track id.
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

/// A request body of fixed chunks with no declared length, so hyper sends it chunked.
pub struct Chunked(std::collections::VecDeque<Bytes>);

impl Chunked {
    /// `count` chunks of `size` bytes each.
    pub fn new(count: usize, size: usize) -> Chunked {
        Chunked(
            (0..count)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect(),
        )
    }
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(hyper::body::Frame::data(chunk))))
    }
}

/// How long [`eventually`] waits by default; `TEST_PATIENCE_SECS` stretches it on a slow
/// machine.
pub fn patience() -> Duration {
    let secs = std::env::var("TEST_PATIENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// Waits until `probe` returns `Some`, looking again every few milliseconds, for at most
/// [`patience`]; panics naming `what`. For conditions that have no notification to await
/// (a gauge, a phase), not as a sleep between steps.
pub async fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, patience(), probe).await
}

/// [`eventually`] with its own patience.
pub async fn eventually_within<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {patience:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
