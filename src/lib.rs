//! zuora-auth-proxy: a loopback sidecar that forwards allowlisted Zuora REST calls with an
//! OAuth token it obtains and refreshes itself, so that callers never hold Zuora credentials.
//!
//! [`start`] binds the listeners and returns a [`Running`] proxy; the binary adds signals,
//! the configuration file watch ([`Running::watch_config`]) and systemd's readiness
//! protocol ([`sd_notify`]).
//! [`Probe`] is what tests and tooling may observe besides HTTP; [`mock`] is the fake Zuora
//! that `demo` and the tests run against. Both are built only with the cargo feature `demo`
//! (on by default), which the production build leaves out.
//!
//! Layering: every module imports only modules on a floor below its own.
//! 1. Leaves, importing nothing of the crate: `tls` (crypto provider, PEM), `secret`,
//!    `headers`, `body`, `backoff`, `track_id`, `labels`, `trace` (W3C trace context, OTLP
//!    span export), and `routes::template`,
//!    `server::framing`, `server::timeouts`, and `cluster` (Redis coordination).
//! 2. `routes` (allowlist, rules, caller identity, retry reasons) and `error` (every answer
//!    the proxy makes itself), then `caller_token` (the placeholder token endpoint for SDKs);
//!    `mock` (test infrastructure over `body` and `tls`).
//! 3. `config` (raw and validated settings, over `routes` and `secret`) and `metrics`.
//! 4. `telemetry` (log setup) then `access_log`; `upstream` (the TLS client toward Zuora).
//! 5. `token` (per-tenant token manager, over `upstream` and `metrics`).
//! 6. `tenant` (a tenant's client, token, slots and meters) and `server` (listeners, the
//!    workers' sockets and threads, connection deadlines, caller TLS, drain), which knows
//!    nothing of what it serves.
//! 7. `snapshot` (the configuration in force with its tenants), then `proxy` (the request
//!    path), then `admin` (health, readiness, metrics), then `demo` and this file.

mod access_log;
mod admin;
mod backoff;
mod body;
mod caller_token;
/// Replicas coordinated through Redis/Valkey (permits, shared token, cool-downs). Public so
/// that its tests can drive several instances against one real Redis.
pub mod cluster;
mod config;
#[cfg(feature = "demo")]
mod demo;
mod error;
mod headers;
mod labels;
mod metrics;
#[cfg(feature = "demo")]
pub mod mock;
mod proxy;
mod routes;
mod secret;
mod server;
mod snapshot;
mod telemetry;
mod tenant;
mod tls;
mod token;
mod trace;
mod track_id;
mod upstream;

pub use config::{Config, ConfigError, ConfigIssue, CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH};
#[cfg(feature = "demo")]
pub use demo::{run as run_demo, DIR_PREFIX as DEMO_DIR_PREFIX, SAMPLE_JOB_ID as DEMO_JOB_ID};
pub use telemetry::{init as init_logging, LogGuard};
pub use token::Phase as TokenPhase;

use config::Listen;
use metrics::Metrics;
use proxy::Proxy;
use server::ConnSettings;
use snapshot::Snapshot;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("listener TLS: {0}")]
    Tls(#[from] server::tls::TlsError),
    #[error("Unix socket: {0}")]
    UnixSocket(#[from] server::unix::UnixSocketError),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot start a worker thread: {0}")]
    Worker(std::io::Error),
}

/// A started proxy: its bound addresses and the handles to drain and reload it.
pub struct Running {
    /// The TCP address callers connect to; unspecified (`0.0.0.0:0`) when they connect to a
    /// Unix socket, see [`Running::socket_path`].
    pub addr: SocketAddr,
    /// The Unix socket callers connect to, when `server.listen` is `unix:`.
    pub socket_path: Option<PathBuf>,
    pub admin_addr: Option<SocketAddr>,
    proxy: Arc<Proxy>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    /// Worker 0, on the runtime `start` was called on.
    proxy_task: JoinHandle<()>,
    /// Workers 1 and up (`server.workers`), each on a thread of its own.
    workers: Vec<server::workers::Worker>,
    admin_task: Option<JoinHandle<()>>,
}

/// Binds the listeners, starts the token fetchers (without waiting for a first token) and
/// serves. Ports `0` pick free ports; see [`Running::addr`]. Worker 0, the token fetchers and
/// the admin listener run on the calling runtime; with `server.workers` > 1, each further
/// worker gets a thread with a current-thread runtime and a socket of its own on the same port.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::with_cluster(config.fixed.cluster.is_some());
    let metrics = Arc::new(metrics.with_spans(config.fixed.tracing.export.as_ref()));
    let listen = config.fixed.listener.listen;
    let workers = config.fixed.listener.workers;
    let max_connections = config.fixed.listener.max_connections;
    let admin_listen = config.fixed.admin_listen;
    let caller_tls = config
        .fixed
        .listener
        .tls
        .as_ref()
        .map(server::tls::CallerTls::new)
        .transpose()?;
    let settings = ConnSettings {
        header_read_timeout: config.fixed.listener.header_read_timeout,
        idle_timeout: config.fixed.listener.idle_timeout,
        max_header_bytes: config.fixed.listener.max_header_bytes,
        slots: Arc::new(Semaphore::new(max_connections)),
        shutdown_grace: config.fixed.listener.shutdown_grace,
        tls: caller_tls,
        on_refusal: None,
        open: None,
        accepted: None,
    };
    // Worker 0's listener, and the sockets of the others (validation allows one worker only
    // on a Unix socket).
    let (listener, more_sockets, addr, socket_path) = match listen {
        Listen::Tcp(wanted) => {
            let bind_error = |source| StartError::Bind { addr: wanted, source };
            let mut sockets = server::workers::bind_tcp(wanted, workers).map_err(bind_error)?;
            let more = sockets.split_off(1);
            let first = TcpListener::from_std(sockets.remove(0)).map_err(bind_error)?;
            let addr = first.local_addr().map_err(bind_error)?;
            (server::Listener::Tcp(first), more, addr, None)
        }
        Listen::Unix(unix) => {
            let path = unix.path.as_path();
            let socket = server::unix::UnixSocketListener::bind(path, unix.mode, unix.group)?;
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            (
                server::Listener::Unix(socket),
                Vec::new(),
                unspecified,
                Some(path.to_path_buf()),
            )
        }
    };
    let admin_listener = match admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // A Redis that does not answer is no reason to refuse to start: the replica starts in
    // local mode and joins when Redis answers.
    let cluster = match &config.fixed.cluster {
        Some(settings) => Some(cluster::Cluster::start(settings.clone()).await?),
        None => None,
    };
    let snapshot = Snapshot::build(config, &metrics, None, cluster.as_ref())?;
    let proxy = Arc::new(Proxy::new(snapshot, metrics));

    let shown = match &socket_path {
        Some(path) => format!("unix:{}", path.display()),
        None => addr.to_string(),
    };
    let (stop_proxy, stop_rx) = watch::channel(false);
    let handler = {
        let proxy = proxy.clone();
        move |request| {
            let proxy = proxy.clone();
            // Boxed once, here: the request's future is a few KiB, and the listener and hyper
            // would otherwise copy the whole of it at each of their moves before it first runs.
            Box::pin(async move { proxy.handle(request).await })
        }
    };
    let proxy_settings = ConnSettings {
        open: Some(proxy.metrics().open_connections()),
        on_refusal: Some({
            let proxy = proxy.clone();
            Arc::new(move |refusal| record_refusal(&proxy, refusal))
        }),
        ..settings.clone()
    };
    let worker_settings = |worker: usize| ConnSettings {
        accepted: Some(proxy.metrics().connections_accepted(worker)),
        ..proxy_settings.clone()
    };
    let mut more_workers = Vec::with_capacity(more_sockets.len());
    for (index, socket) in (1..).zip(more_sockets) {
        let (settings, handler, stop) = (worker_settings(index), handler.clone(), stop_rx.clone());
        let worker = server::workers::spawn(format!("zap-worker-{index}"), move || async move {
            upstream::enter_worker(index);
            // Registered with the worker's own runtime, on its thread.
            match TcpListener::from_std(socket) {
                Ok(listener) => server::serve(listener, settings, handler, stop).await,
                Err(error) => tracing::error!(worker = index, %error, "worker cannot listen"),
            }
        })
        .map_err(StartError::Worker)?;
        more_workers.push(worker);
    }
    let proxy_task = tokio::spawn(server::serve(listener, worker_settings(0), handler, stop_rx));

    let (stop_admin, admin_rx) = watch::channel(false);
    let mut admin_addr = None;
    let admin_task = admin_listener.map(|listener| {
        admin_addr = listener.local_addr().ok();
        let proxy = proxy.clone();
        let handler = move |request| admin::handle(proxy.clone(), request);
        // The admin listener stays plain HTTP on its own (loopback) address; what its HTTP
        // layer refuses is no proxy request.
        let settings = ConnSettings {
            tls: None,
            // Slots of its own: the callers' connections never crowd out a probe.
            slots: Arc::new(Semaphore::new(max_connections)),
            ..settings
        };
        tokio::spawn(server::serve(listener, settings, handler, admin_rx))
    });
    tracing::info!(
        listen = %shown,
        admin = admin_addr.map(tracing::field::display),
        workers,
        "zuora-auth-proxy listening"
    );
    Ok(Running {
        addr,
        socket_path,
        admin_addr,
        proxy,
        stop_proxy,
        stop_admin,
        proxy_task,
        workers: more_workers,
        admin_task,
    })
}

/// A request the HTTP layer refused before any handler saw it still leaves an access line
/// and a count under the route `(none)`; its method and path were never read.
fn record_refusal(proxy: &Proxy, refusal: server::Refusal) {
    let seconds = refusal.head_time.as_secs_f64();
    proxy
        .snapshot()
        .route_meters(None)
        .answered(refusal.status.as_u16(), seconds);
    proxy.metrics().proxy_error(refusal.code);
    access_log::emit(&access_log::AccessRecord {
        status: refusal.status.as_u16(),
        duration: refusal.head_time,
        total: refusal.head_time,
        error: Some(refusal.code),
        peer: Some(refusal.peer),
        // Its head was never read: a trace of its own, so that every line has one.
        trace_id: Some(trace::context::new_trace_id()),
        span_id: Some(trace::context::new_span_id()),
        ..Default::default()
    });
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// How often the configuration file is looked at for a change (as often as the listener
/// certificate can change: a handshake after its files changed sees the new one).
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// One version of a file, as far as a watcher can tell without reading it. Kubernetes
/// updates a mounted ConfigMap by swapping a symlink, which shows as a new inode behind the
/// same path; an edit in place changes the modification time or the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// The file behind `path`, symlinks followed; `None` while it cannot be read (in the
    /// middle of a swap, say).
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// Tells systemd (`Type=notify`) about the service's state, e.g. `READY=1` or
/// `STOPPING=1`, by a datagram to `$NOTIFY_SOCKET` (sd_notify(3)); `Ok(false)` when not
/// started by systemd. A few lines rather than a crate: one datagram to one address.
pub fn sd_notify(state: &str) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket address (Linux), named without the leading `@`.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sender.send_to(state.as_bytes(), Path::new(&socket))?;
        }
    }
    Ok(true)
}

/// A tenant's token as tests and tooling may see it: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    /// 1 for the first token fetched, one more for each later one.
    pub generation: u64,
    pub expires_at: tokio::time::Instant,
    /// The proxy stops injecting the token at this moment, a little before it expires.
    pub usable_until: tokio::time::Instant,
}

impl TokenView {
    fn of(token: &token::Token) -> TokenView {
        TokenView {
            generation: token.generation,
            expires_at: token.expires_at,
            usable_until: token.use_by(),
        }
    }
}

/// What may be observed of a running proxy from outside its request path: its tokens and
/// its metrics. Cheap to clone; it is the whole interface tests use besides HTTP.
#[derive(Clone)]
pub struct Probe(Arc<Proxy>);

impl Probe {
    /// The tenant's token if it is usable now.
    pub fn token(&self, tenant: &str) -> Option<TokenView> {
        let token = self.0.snapshot().tenants.get(tenant)?.tokens.current()?;
        Some(TokenView::of(&token))
    }

    /// What the tenant's token fetcher is doing.
    pub fn token_phase(&self, tenant: &str) -> Option<TokenPhase> {
        Some(self.0.snapshot().tenants.get(tenant)?.tokens.state().phase)
    }

    /// Waits at most `within` for the tenant to hold a usable token.
    pub async fn wait_for_token(&self, tenant: &str, within: std::time::Duration) -> Option<TokenView> {
        let tokens = self.0.snapshot().tenants.get(tenant)?.tokens.clone();
        let token = tokio::time::timeout(within, tokens.wait_usable()).await.ok()?;
        Some(TokenView::of(&token))
    }

    /// The metrics as `/metrics` serves them (Prometheus text format 0.0.4).
    pub fn metrics_text(&self) -> String {
        admin::refresh_gauges(&self.0);
        self.0.metrics().encode()
    }
}

impl Running {
    pub fn probe(&self) -> Probe {
        Probe(self.proxy.clone())
    }

    /// Starts draining: readiness turns 503 at once, the listener stops accepting, in-flight
    /// requests finish within `server.shutdown_grace`. The admin listener serves until the
    /// drain is over.
    pub fn begin_shutdown(&self) {
        if !self.proxy.is_draining() {
            tracing::info!("shutdown requested; draining");
        }
        self.proxy.set_draining();
        let _ = self.stop_proxy.send(true);
    }

    /// Waits for the drain to finish, then stops the admin listener.
    pub async fn wait(self) {
        let _ = self.proxy_task.await;
        for worker in self.workers {
            worker.finished().await;
        }
        let _ = self.stop_admin.send(true);
        if let Some(task) = self.admin_task {
            let _ = task.await;
        }
    }

    /// Swaps in a new configuration for new requests. Tenants whose settings did not change
    /// keep their tokens; in-flight requests finish under the configuration they started with.
    /// Listen addresses are not rebound.
    pub fn reload(&self, mut config: Config) -> Result<(), StartError> {
        let previous = self.proxy.snapshot();
        let keys = previous.config.restart_needed(&config);
        if !keys.is_empty() {
            tracing::warn!(
                keys = %keys.join(", "),
                "these keys need a restart to change; the running values stay"
            );
        }
        // Listeners, their limits and the log were set up at start: they stay as they are.
        config.fixed = previous.config.fixed.clone();
        for warning in &config.warnings {
            tracing::warn!(key = %warning.key, message = %warning.message, "configuration warning");
        }
        let snapshot = Snapshot::build(config, self.proxy.metrics(), Some(&previous), previous.cluster.as_ref())?;
        for gone in previous
            .tenants
            .keys()
            .filter(|name| !snapshot.tenants.contains_key(*name))
        {
            self.proxy.metrics().forget_tenant(gone);
        }
        self.proxy.swap_snapshot(snapshot);
        Ok(())
    }

    /// Watches the configuration file and reloads it ([`Running::reload_from`], as SIGHUP
    /// does) each time it changes, looking every [`CONFIG_POLL`]. Runs until dropped. A
    /// version that fails validation is reported once, and the next change is awaited.
    pub async fn watch_config(&self, path: &Path) {
        let mut seen = FileStamp::of(path);
        let mut ticks = tokio::time::interval(CONFIG_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = FileStamp::of(path);
            // A file gone for a moment (a swap in progress) is waited for, not reloaded.
            if now.is_some() && now != seen {
                seen = now;
                tracing::info!(path = %path.display(), "configuration file changed");
                let _ = self.reload_from(path);
            }
        }
    }

    /// Reloads from a file (what SIGHUP does): validates, swaps, logs the outcome and counts
    /// it in `zuora_proxy_config_reloads_total`. On any error the running configuration stays.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        let outcome = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|config| self.reload(config).map_err(|e| e.to_string()));
        let result = if outcome.is_ok() {
            metrics::ReloadResult::Ok
        } else {
            metrics::ReloadResult::Error
        };
        self.proxy.metrics().config_reloaded(result);
        match &outcome {
            Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
            Err(error) => tracing::error!(
                path = %path.display(),
                %error,
                "configuration reload refused; the previous configuration stays in force"
            ),
        }
        outcome
    }
}
