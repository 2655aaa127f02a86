//! Listeners: the accept loop (bounded by `max_connections`) on TCP or a Unix socket,
//! optional TLS toward callers, per-connection HTTP/1 settings and timeouts, the requests
//! the HTTP layer refuses itself, and graceful drain; [`workers`] binds one socket per worker
//! and runs the workers beyond the first on threads of their own.

mod framing;
pub mod timeouts;
pub mod tls;
pub mod unix;
pub mod workers;

use crate::body::{GuardedBody, ResponseBody};
use crate::routes::{ClientIdentity, Peer};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use timeouts::{Activity, HeadVerdict, TrafficIo};
use tls::CallerTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use unix::UnixSocketListener;

/// After a failed accept (out of file descriptors, say), pause before the next one so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// How connections of one listener behave.
#[derive(Clone)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// One slot per connection served (`max_connections`), shared by every worker of a
    /// listener; without a free one, callers wait in the kernel's accept backlog.
    pub slots: Arc<Semaphore>,
    /// How long in-flight requests may still run once shutdown begins.
    pub shutdown_grace: Duration,
    /// TLS toward callers; plain HTTP when `None`.
    pub tls: Option<CallerTls>,
    /// Told of every request the HTTP layer answered itself, which no handler ever sees.
    pub on_refusal: Option<OnRefusal>,
    /// Counts the connections being served.
    pub open: Option<Gauge>,
    /// Counts the connections this worker accepted.
    pub accepted: Option<Counter>,
}

/// One served connection on the `open` gauge, for as long as its task lives.
struct Open(Option<Gauge>);

impl Open {
    fn enter(gauge: &Option<Gauge>) -> Open {
        if let Some(gauge) = gauge {
            gauge.inc();
        }
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0 {
            gauge.dec();
        }
    }
}

/// See [`ConnSettings::on_refusal`].
pub type OnRefusal = Arc<dyn Fn(Refusal) + Send + Sync>;

/// A request head hyper refused: it wrote its own answer (empty body) and closed.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub status: StatusCode,
    /// `malformed_request`, `request_head_too_large` or `uri_too_long`.
    pub code: &'static str,
    pub peer: Peer,
    /// From the head's first byte to the refusal.
    pub head_time: Duration,
}

impl Refusal {
    /// What hyper answered before it gave up on a connection, if it answered: 400 for a
    /// malformed head, 431 for one over `max_buf_size`, 414 for a URI over its own limit.
    /// An HTTP/2 preface or an internal error gets no answer.
    fn of(error: &hyper::Error) -> Option<(StatusCode, &'static str)> {
        if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
            return None;
        }
        let text = error.to_string();
        if error.is_parse_too_large() {
            // hyper tells its URI limit from a long head by the message alone.
            return Some(if text.starts_with("URI too long") {
                (StatusCode::URI_TOO_LONG, "uri_too_long")
            } else {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request_head_too_large")
            });
        }
        if text.starts_with("internal error") {
            return None;
        }
        Some((StatusCode::BAD_REQUEST, "malformed_request"))
    }
}

/// Where callers connect.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocketListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

/// An accepted connection, before TLS.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// The next connection and who made it. A Unix-socket caller whose credentials cannot be
    /// read is dropped: rules could not tell who it is.
    async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), Peer::Tcp(addr)))
            }
            Listener::Unix(listener) => loop {
                let (stream, _) = listener.listener().accept().await?;
                match stream.peer_cred() {
                    Ok(cred) => {
                        let peer = Peer::Unix {
                            uid: cred.uid(),
                            gid: cred.gid(),
                            pid: cred.pid(),
                        };
                        return Ok((Stream::Unix(stream), peer));
                    }
                    Err(error) => tracing::warn!(%error, "caller's credentials unreadable; connection closed"),
                }
            },
        }
    }

    /// For logs: the address or `unix:` path.
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "tcp".to_string(), |addr| addr.to_string()),
            Listener::Unix(listener) => format!("unix:{}", listener.path().display()),
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then stops accepting, lets in-flight
/// requests finish (idle keep-alive connections close at once) for at most the grace period.
/// A Unix socket's file is removed once it stops accepting.
pub async fn serve<H, F>(
    listener: impl Into<Listener>,
    settings: ConnSettings,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        // Header and idle deadlines are TimedIo's, which can tell them apart.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    let limit = settings.slots.clone();
    let listener = listener.into();
    let local = listener.describe();
    // Connection tasks, so that those still running when the grace expires can be cut.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // Take a connection slot first: past the limit, callers wait in the backlog.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(listener = %local, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let connection = Connection {
            builder: builder.clone(),
            handler: handler.clone(),
            settings: settings.clone(),
            watcher: graceful.watcher(),
        };
        if let Some(accepted) = &settings.accepted {
            accepted.inc();
        }
        let open = Open::enter(&settings.open);
        connections.spawn(async move {
            let _permit = permit;
            let _open = open;
            match stream {
                Stream::Tcp(stream) => connection.start(stream, peer).await,
                Stream::Unix(stream) => connection.start(stream, peer).await,
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = %local,
            connections = connections.len(),
            grace_s = settings.shutdown_grace.as_secs_f64(),
            "shutdown grace expired; cutting the remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    } else {
        tracing::info!(listener = %local, connections = open, "drained");
    }
}

/// Marks a request whose head carried both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// One accepted connection, before its IO type is known (plain or TLS).
struct Connection<H> {
    builder: http1::Builder,
    handler: H,
    settings: ConnSettings,
    watcher: Watcher,
}

impl<H, F> Connection<H>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    /// Completes the TLS handshake if the listener has TLS, then serves.
    async fn start<I>(self, io: I, peer: Peer)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.settings.tls {
            None => self.run(io, None, peer).await,
            Some(tls) => match tls.clone().accept(io).await {
                Ok((io, identity)) => self.run(io, identity, peer).await,
                Err(error) => tracing::debug!(%error, "TLS handshake with a caller failed"),
            },
        }
    }

    async fn run<I>(self, io: I, identity: Option<ClientIdentity>, peer: Peer)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let watchdog = timeouts::watchdog(
            activity.clone(),
            self.settings.header_read_timeout,
            self.settings.idle_timeout,
        );
        let io = TrafficIo::new(io, activity.clone());
        let handler = self.handler;
        let on_refusal = self.settings.on_refusal.clone();
        let head_clock = activity.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer);
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let (busy, verdict) = activity.begin();
            // hyper has dropped Content-Length if Transfer-Encoding came with it. A scanned head
            // says whether it did; a pipelined head was not scanned, so a chunked one is refused
            // too rather than trusted.
            let chunked = request.headers().contains_key(http::header::TRANSFER_ENCODING);
            if verdict == HeadVerdict::Ambiguous || (verdict == HeadVerdict::Unscanned && chunked) {
                request.extensions_mut().insert(AmbiguousFraming);
            }
            let response = handler(request);
            // The connection stays busy until the response body has been sent, so that a
            // pause mid-body is never taken for an idle connection.
            async move { Ok::<_, Infallible>(response.await.map(|body| GuardedBody::new(body, busy))) }
        });
        let connection = self
            .watcher
            .watch(self.builder.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                    if let (Some(hook), Some((status, code))) = (&on_refusal, Refusal::of(&error)) {
                        hook(Refusal { status, code, peer, head_time: head_clock.head_elapsed() });
                    }
                }
            }
            // Dropping the connection closes the socket.
            reason = watchdog => tracing::debug!(reason, "connection closed"),
        }
    }
}
