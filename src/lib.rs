//! zuora-auth-proxy: a loopback sidecar that forwards allowlisted Zuora REST calls with an
//! OAuth token it obtains and refreshes itself, so that callers never hold Zuora credentials.
//!
//! [`start`] binds the listeners and returns a [`Running`] proxy; the binary adds signals.

pub mod access_log;
pub mod admin;
pub mod backoff;
pub mod body;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod track_id;
pub mod upstream;

use config::Config;
use metrics::Metrics;
use proxy::Proxy;
use runtime::Runtime;
use server::ConnSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
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
}

/// A started proxy: its bound addresses and the handles to drain and reload it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    proxy: Arc<Proxy>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
}

/// Binds the listeners, starts the token fetchers (without waiting for a first token) and
/// serves. Ports `0` pick free ports; see [`Running::addr`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let listen = config.fixed.listener.listen;
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
        max_connections: config.fixed.listener.max_connections,
        shutdown_grace: config.fixed.listener.shutdown_grace,
        tls: caller_tls,
    };
    let listener = bind(listen).await?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let proxy = Arc::new(Proxy::new(Runtime::build(config, &metrics, None)?, metrics));

    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: listen, source })?;
    let (stop_proxy, stop_rx) = watch::channel(false);
    let handler = {
        let proxy = proxy.clone();
        move |request| {
            let proxy = proxy.clone();
            async move { proxy.handle(request).await }
        }
    };
    let proxy_task = tokio::spawn(server::serve(listener, settings.clone(), handler, stop_rx));

    let (stop_admin, admin_rx) = watch::channel(false);
    let mut admin_addr = None;
    let admin_task = admin_listener.map(|listener| {
        admin_addr = listener.local_addr().ok();
        let proxy = proxy.clone();
        let handler = move |request| admin::handle(proxy.clone(), request);
        // The admin listener stays plain HTTP on its own (loopback) address.
        let settings = ConnSettings { tls: None, ..settings };
        tokio::spawn(server::serve(listener, settings, handler, admin_rx))
    });
    tracing::info!(listen = %addr, admin = ?admin_addr, "zuora-auth-proxy listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        stop_proxy,
        stop_admin,
        proxy_task,
        admin_task,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Running {
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
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
        let _ = self.stop_admin.send(true);
        if let Some(task) = self.admin_task {
            let _ = task.await;
        }
    }

    /// Swaps in a new configuration for new requests. Tenants whose settings did not change
    /// keep their tokens; in-flight requests finish under the configuration they started with.
    /// Listen addresses are not rebound.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let previous = self.proxy.runtime();
        let runtime = Runtime::build(config, self.proxy.metrics(), Some(&previous))?;
        for gone in previous
            .tenants
            .keys()
            .filter(|name| !runtime.tenants.contains_key(*name))
        {
            self.proxy.metrics().forget_tenant(gone);
        }
        self.proxy.swap_runtime(runtime);
        Ok(())
    }

    /// Reloads from a file (what SIGHUP does): validates, swaps, logs the outcome and counts
    /// it in `zuora_proxy_config_reloads_total`. On any error the running configuration stays.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        let outcome = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|config| self.reload(config).map_err(|e| e.to_string()));
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.proxy
            .metrics()
            .config_reloads
            .get_or_create(&metrics::ResultLabel { result })
            .inc();
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
