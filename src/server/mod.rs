//! Listeners: the accept loop (bounded by `max_connections`), optional TLS toward callers,
//! per-connection HTTP/1 settings and timeouts, and graceful drain.

mod framing;
pub mod timeouts;
pub mod tls;

use crate::body::{GuardedBody, ResponseBody};
use crate::routes::ClientIdentity;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use timeouts::{Activity, HeadVerdict, TrafficIo};
use tls::CallerTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// After a failed accept (out of file descriptors, say), pause before the next one so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// How connections of one listener behave.
#[derive(Clone)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// Connections beyond this wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// How long in-flight requests may still run once shutdown begins.
    pub shutdown_grace: Duration,
    /// TLS toward callers; plain HTTP when `None`.
    pub tls: Option<CallerTls>,
}

/// Serves `listener` until `shutdown` turns true, then stops accepting, lets in-flight
/// requests finish (idle keep-alive connections close at once) for at most the grace period.
pub async fn serve<H, F>(listener: TcpListener, settings: ConnSettings, handler: H, mut shutdown: watch::Receiver<bool>)
where
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
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let local = listener.local_addr().ok();
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
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(listener = ?local, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            handler: handler.clone(),
            settings: settings.clone(),
            watcher: graceful.watcher(),
        };
        connections.spawn(async move {
            let _permit = permit;
            match &connection.settings.tls {
                None => connection.run(stream, None).await,
                Some(tls) => match tls.clone().accept(stream).await {
                    Ok((stream, identity)) => connection.run(stream, identity).await,
                    Err(error) => tracing::debug!(%error, "TLS handshake with a caller failed"),
                },
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
            listener = ?local,
            connections = connections.len(),
            grace_s = settings.shutdown_grace.as_secs_f64(),
            "shutdown grace expired; cutting the remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    } else {
        tracing::info!(listener = ?local, connections = open, "drained");
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
    async fn run<I>(self, io: I, identity: Option<ClientIdentity>)
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
        let service = service_fn(move |mut request: Request<Incoming>| {
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
                }
            }
            // Dropping the connection closes the socket.
            reason = watchdog => tracing::debug!(reason, "connection closed"),
        }
    }
}
