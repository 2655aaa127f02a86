//! The client toward Zuora: per tenant, one hyper-util pooled client per worker, over rustls,
//! built once and shared by that tenant's API calls and token calls. A request takes the pool
//! of the worker whose thread it runs on, so that a pooled connection's task lives on the
//! same thread as the requests that use it.

use crate::body::UpstreamBody;
use crate::config::TenantSettings;
use crate::tls::{crypto_provider, read_certs, PemError};
use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

type PooledClient = Client<HttpsConnector<Egress>, UpstreamBody>;

/// A tenant's client: one connection pool per worker (`server.workers`). Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    per_worker: Arc<[PooledClient]>,
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

impl UpstreamClient {
    /// Sends `request` over the calling worker's pool.
    pub fn request(&self, request: http::Request<UpstreamBody>) -> hyper_util::client::legacy::ResponseFuture {
        let worker = WORKER.with(Cell::get).min(self.per_worker.len() - 1);
        self.per_worker[worker].request(request)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle pooled connections are closed after this long; Zuora's edge closes them sooner or later anyway.
const POOL_IDLE_TIMEOUT_SECS: u64 = 90;
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

/// Builds the tenant's client, with a pool for each of `workers`: built-in web PKI roots plus
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
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(egress);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(POOL_IDLE_TIMEOUT_SECS));
    // The connector (and its TLS configuration) is shared; each pool is the worker's own.
    let per_worker = (0..workers.max(1)).map(|_| builder.build(https.clone())).collect();
    Ok(UpstreamClient { per_worker })
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
pub fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
