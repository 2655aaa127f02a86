//! The client toward Zuora: per tenant, for each worker, a pool of HTTP/1.1 connections to
//! each of the tenant's hosts (REST base and token endpoint), over rustls, shared by that
//! tenant's API calls and token calls. A request takes the pool of the worker whose thread it
//! runs on and drives the exchange from its own task; the connection runs on a task of the
//! same thread. No map is searched: a tenant has one or two hosts, compared in turn.

mod pool;

use crate::body::{UpstreamBody, ZuoraBody};
use crate::config::TenantSettings;
use crate::tls::{crypto_provider, read_certs, PemError};
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use pool::{HostPool, Limits};
use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower_service::Service;

type Connector = HttpsConnector<Egress>;

/// A tenant's client: for each worker (`server.workers`), a pool per host. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// The tenant's hosts, in the order of each worker's pools.
    hosts: Box<[(Scheme, Authority)]>,
    /// Each host's `Host` value, made once (a request that has none gets a shared copy).
    host_headers: Box<[Option<HeaderValue>]>,
    /// `per_worker[w][h]`: worker `w`'s idle connections to `hosts[h]`.
    per_worker: Box<[Box<[Arc<HostPool>]>]>,
}

thread_local! {
    /// The worker this thread serves for; 0 on any thread that is no worker's own (the
    /// runtime `start` was called on runs worker 0, the token fetches and the admin listener).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`'s: its requests take that worker's pools.
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Why a request got no answer from Zuora. Its text names the step that failed, as in
/// "client error (Connect)", its sources say why.
#[derive(Debug)]
pub struct ClientError {
    kind: ClientErrorKind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientErrorKind {
    /// No connection could be made (TCP, egress proxy, TLS).
    Connect,
    /// The connection closed before the request was sent (on a new connection: not retried).
    Canceled,
    /// Sending the request or reading the answer's head failed.
    SendRequest,
}

impl ClientError {
    fn new(kind: ClientErrorKind, source: impl Into<BoxError>) -> ClientError {
        ClientError {
            kind,
            source: Some(source.into()),
        }
    }

    /// Whether no connection could be made: nothing reached Zuora.
    pub fn is_connect(&self) -> bool {
        self.kind == ClientErrorKind::Connect
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client error ({:?})", self.kind)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl UpstreamClient {
    /// Sends `request` (an absolute `https://` URI) over the calling worker's pool for its
    /// host. A request that a reused connection closed before taking (the peer had closed it
    /// while idle) is sent once more, on a new connection: hyper gives such a request back
    /// unsent, so this repeats nothing that reached Zuora.
    ///
    /// The exchange is boxed, as hyper-util's was: awaited inline, its state (the connect
    /// path's among it) made the request path's future larger, copied at each move
    /// (callgrind: 14,000 more instructions of `memcpy` per request).
    pub fn request(&self, request: Request<UpstreamBody>) -> Pin<Box<dyn Future<Output = Answered> + Send + '_>> {
        Box::pin(self.exchange_pooled(request))
    }

    async fn exchange_pooled(&self, mut request: Request<UpstreamBody>) -> Answered {
        let shared = &*self.inner;
        let uri = request.uri().clone();
        let at = shared.host_index(&uri);
        let pool = at.map(|at| shared.pool(at));
        if !request.headers().contains_key(HOST) {
            // A tenant host's value was made once; any other host's is made here.
            let host = match at {
                Some(at) => shared.host_headers[at].clone(),
                None => host_value(&uri),
            };
            if let Some(host) = host {
                request.headers_mut().insert(HOST, host);
            }
        }
        *request.uri_mut() = origin_form(&uri);
        let (response, sender) = shared.exchange(pool.and_then(|p| p.checkout()), &uri, request).await?;
        let at_end = pool.map(|pool| {
            let pool = pool.clone();
            Box::new(move || pool.give_back(sender)) as crate::body::AtEnd
        });
        Ok(response.map(|body| ZuoraBody::new(body, at_end)))
    }
}

/// Zuora's answer, or why there is none.
pub type Answered = Result<Response<ZuoraBody>, ClientError>;

fn send_error(mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>) -> ClientError {
    let kind = if e.take_message().is_some() {
        ClientErrorKind::Canceled
    } else {
        ClientErrorKind::SendRequest
    };
    ClientError::new(kind, e.into_error())
}

impl Shared {
    /// Sends `request` on `pooled` (else on a new connection); a request the pooled one
    /// never took goes once more on a new one. The answer, and the connection it came on.
    async fn exchange(
        &self,
        pooled: Option<SendRequest<UpstreamBody>>,
        uri: &Uri,
        request: Request<UpstreamBody>,
    ) -> Result<(Response<hyper::body::Incoming>, SendRequest<UpstreamBody>), ClientError> {
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => self.connect(uri).await?,
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(request) if reused => {
                    tracing::debug!(error = %e.error(), "a pooled connection closed before the request was sent; sending it on a new one");
                    sender = self.connect(uri).await?;
                    sender.try_send_request(request).await.map_err(send_error)?
                }
                _ => return Err(send_error(e)),
            },
        };
        Ok((response, sender))
    }

    /// Which of the tenant's hosts the URI's is; none for a host that is not the tenant's
    /// (then the connection serves this one request).
    fn host_index(&self, uri: &Uri) -> Option<usize> {
        self.hosts
            .iter()
            .position(|(scheme, authority)| Some(scheme) == uri.scheme() && Some(authority) == uri.authority())
    }

    /// The calling worker's pool for host `at`.
    fn pool(&self, at: usize) -> &Arc<HostPool> {
        let worker = WORKER.with(Cell::get).min(self.per_worker.len() - 1);
        &self.per_worker[worker][at]
    }

    /// A new connection to the URI's host, its HTTP/1.1 state machine running on a task of
    /// the calling thread's runtime.
    ///
    /// Boxed: its state (the TLS handshake's among it) would otherwise sit in every
    /// request's future, also when a pooled connection serves it.
    fn connect<'a>(
        &'a self,
        uri: &'a Uri,
    ) -> Pin<Box<dyn Future<Output = Result<SendRequest<UpstreamBody>, ClientError>> + Send + 'a>> {
        Box::pin(self.connect_now(uri))
    }

    async fn connect_now(&self, uri: &Uri) -> Result<SendRequest<UpstreamBody>, ClientError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| ClientError::new(ClientErrorKind::Connect, e))?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| ClientError::new(ClientErrorKind::Connect, e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ClientError::new(ClientErrorKind::Connect, e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The `Host` value for a URI: its host, and its port when not the scheme's own.
fn host_value(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match uri.port_u16() {
        Some(port) if Some(port) != default_port => HeaderValue::from_str(&format!("{host}:{port}")),
        _ => HeaderValue::from_str(host),
    };
    value.ok()
}

/// The path and query alone, as a request inside a connection (or a CONNECT tunnel) to its
/// host is written.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => Uri::from(path.clone()),
        _ => Uri::from_static("/"),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP keepalive probes on upstream connections, so a dead peer is noticed while idle.
const TCP_KEEPALIVE_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("CA file: {0}")]
    CaFile(#[from] PemError),
    #[error("CA file {path} holds no usable certificate")]
    CaEmpty { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the tenant's client, with pools for each of `workers`: built-in web PKI roots plus
/// the tenant's `ca_file`, HTTPS only.
pub fn build(tenant: &TenantSettings, workers: usize) -> Result<UpstreamClient, UpstreamError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &tenant.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(tenant.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(TCP_KEEPALIVE_SECS)));

    let proxy = match &tenant.proxy_url {
        Some(url) => Matcher::builder().https(url.0.as_str()).build(),
        None => Matcher::from_env(),
    };
    let egress = Egress {
        http,
        proxy: Arc::new(proxy),
        bypass_loopback: tenant.proxy_url.is_none(),
        connect_timeout: tenant.connect_timeout,
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(egress);
    let mut hosts: Vec<(Scheme, Authority)> = Vec::with_capacity(2);
    for url in [&tenant.base_url, &tenant.token_url] {
        if let Some(host) = scheme_and_authority(url) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    let limits = Limits {
        idle_timeout: tenant.pool_idle_timeout,
        max_idle: tenant.pool_max_idle,
    };
    let host_headers = hosts
        .iter()
        .map(|(scheme, authority)| {
            let uri = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query("/");
            uri.build().ok().as_ref().and_then(host_value)
        })
        .collect();
    let per_worker = (0..workers.max(1))
        .map(|_| hosts.iter().map(|_| HostPool::new(limits)).collect())
        .collect();
    Ok(UpstreamClient {
        inner: Arc::new(Shared {
            connector,
            hosts: hosts.into(),
            host_headers,
            per_worker,
        }),
    })
}

/// The scheme and authority a request to `url` carries in its URI.
fn scheme_and_authority(url: &url::Url) -> Option<(Scheme, Authority)> {
    let uri: Uri = url.as_str().parse().ok()?;
    let parts = uri.into_parts();
    Some((parts.scheme?, parts.authority?))
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), UpstreamError> {
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(UpstreamError::CaEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A client error with its causes, for logs ("client error (Connect): tcp connect error: Connection refused").
pub fn describe_client_error(error: &ClientError) -> String {
    error_chain(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// An error and its sources, outermost first.
pub fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

fn is_loopback(uri: &Uri) -> bool {
    match uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']')) {
        Some("localhost") => true,
        Some(host) => host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// TCP toward Zuora: direct, or through a CONNECT tunnel when an egress proxy applies (the
/// tenant's `proxy_url`, else `HTTPS_PROXY` unless `NO_PROXY` names the host or the host is
/// loopback). TLS runs inside the tunnel, end to end with Zuora.
#[derive(Clone)]
pub struct Egress {
    http: HttpConnector,
    proxy: Arc<Matcher>,
    /// An environment proxy is not used for loopback hosts; an explicit `proxy_url` always is.
    bypass_loopback: bool,
    connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("connecting through the egress proxy timed out")]
struct TunnelTimeout;

impl tower_service::Service<Uri> for Egress {
    type Response = EarlyAnswer<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = if self.bypass_loopback && is_loopback(&dst) {
            None
        } else {
            self.proxy.intercept(&dst)
        };
        match intercept {
            None => Box::pin(async move { http.call(dst).await.map(EarlyAnswer::new).map_err(Into::into) }),
            Some(intercept) => {
                let mut tunnel = Tunnel::new(intercept.uri().clone(), http);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                // The proxy's answer to CONNECT counts toward the connect timeout too.
                let limit = self.connect_timeout;
                Box::pin(async move {
                    match tokio::time::timeout(limit, tunnel.call(dst)).await {
                        Ok(result) => result.map(EarlyAnswer::new).map_err(Into::into),
                        Err(_) => Err(TunnelTimeout.into()),
                    }
                })
            }
        }
    }
}

/// A connection to Zuora that keeps an early answer readable. Zuora may answer (413, 401)
/// before it has read the whole request body and close; writing the rest of the body then
/// fails (EPIPE, reset), and hyper, which fails the request on a write error, would lose the
/// answer already waiting to be read. Once the peer is gone, writes are discarded instead:
/// hyper goes on to read the answer, and the connection ends when its read side does (it is
/// never reused: the peer has closed it).
pub struct EarlyAnswer<T> {
    inner: T,
    peer_gone: bool,
}

impl<T> EarlyAnswer<T> {
    fn new(inner: T) -> EarlyAnswer<T> {
        EarlyAnswer {
            inner,
            peer_gone: false,
        }
    }

    /// `written`, unless it says the peer went away: then everything counts as written.
    fn absorb(&mut self, written: Poll<std::io::Result<usize>>, len: usize) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                tracing::debug!(error = %e, "Zuora stopped reading the request; its answer is still read");
                self.peer_gone = true;
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }
}

fn peer_gone(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(error.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for EarlyAnswer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for EarlyAnswer<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.peer_gone {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.absorb(written, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.peer_gone {
            return Poll::Ready(Ok(len));
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.absorb(written, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.peer_gone {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.peer_gone = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.peer_gone {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for EarlyAnswer<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(all(test, feature = "demo"))] // against the embedded mock Zuora
mod tests {
    use super::*;
    use crate::mock::MockZuora;
    use crate::secret::{Secret, SecretSource};
    use http_body_util::{Either, Full};

    fn settings(mock: &MockZuora, ca_file: PathBuf) -> TenantSettings {
        let base_url = url::Url::parse(&mock.base_url()).unwrap();
        TenantSettings {
            name: "t".into(),
            token_url: base_url.join("/oauth/token").unwrap(),
            base_url,
            client_id: "id".into(),
            client_secret: SecretSource::Inline(Secret::new("s")),
            ca_file: Some(ca_file),
            refresh_margin: Duration::from_secs(300),
            token_wait: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 8,
            max_concurrency: 40,
            queue_timeout: Duration::from_secs(10),
            proxy_url: None,
            cluster_max_concurrency: 40,
            fallback_max_concurrency: 40,
        }
    }

    fn request(mock: &MockZuora) -> Request<UpstreamBody> {
        let mut request = Request::new(Either::Left(Full::default()));
        *request.uri_mut() = format!("{}/v1/accounts/A1", mock.base_url()).parse().unwrap();
        let host = host_value(request.uri()).unwrap();
        request.headers_mut().insert(HOST, host);
        *request.uri_mut() = origin_form(&format!("{}/v1/accounts/A1", mock.base_url()).parse().unwrap());
        request
    }

    /// A connection whose state machine has ended, as hyper leaves one that the peer closed
    /// while it sat in the pool: a request sent on it is handed back unsent.
    async fn closed_connection() -> SendRequest<UpstreamBody> {
        let (io, _other_end) = tokio::io::duplex(64);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        drop(connection);
        sender
    }

    #[tokio::test]
    async fn a_request_a_reused_connection_never_took_is_sent_once_on_a_new_one() {
        let mock = MockZuora::builder().start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = build(&settings(&mock, mock.write_ca(dir.path()).unwrap()), 1).unwrap();
        let uri: Uri = mock.base_url().parse().unwrap();
        let stale = closed_connection().await;
        let (response, _) = client.inner.exchange(Some(stale), &uri, request(&mock)).await.unwrap();
        assert_eq!(response.status(), 401, "Zuora's answer (no token was sent)");
        assert_eq!(mock.connections(), 1, "on a new connection");
        assert_eq!(mock.api_calls(), 1, "once");
    }

    #[tokio::test]
    async fn a_request_a_closed_connection_never_took_is_a_canceled_error() {
        let mock = MockZuora::builder().start().await.unwrap();
        let mut stale = closed_connection().await;
        let e = stale
            .try_send_request(request(&mock))
            .await
            .map_err(send_error)
            .unwrap_err();
        assert_eq!(e.to_string(), "client error (Canceled)");
        assert!(!e.is_connect());
        assert_eq!(mock.connections(), 0, "nothing was sent");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_with_its_causes() {
        let mock = MockZuora::builder().start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(&mock, mock.write_ca(dir.path()).unwrap());
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        settings.base_url = url::Url::parse(&format!("https://{closed}")).unwrap();
        let client = build(&settings, 1).unwrap();
        let mut request = request(&mock);
        *request.uri_mut() = format!("https://{closed}/v1/accounts/A1").parse().unwrap();
        let Err(e) = client.request(request).await else {
            panic!("nothing listens there")
        };
        assert!(e.is_connect());
        let described = describe_client_error(&e);
        assert!(described.starts_with("client error (Connect): "), "{described}");
        assert!(described.contains("refused"), "{described}");
    }

    #[test]
    fn loopback_hosts() {
        for (uri, loopback) in [
            ("https://127.0.0.1:443/", true),
            ("https://127.8.9.10/", true),
            ("https://[::1]:8443/", true),
            ("https://localhost/", true),
            ("https://rest.zuora.com/", false),
            ("https://10.0.0.1/", false),
        ] {
            assert_eq!(is_loopback(&uri.parse().unwrap()), loopback, "{uri}");
        }
    }
}
