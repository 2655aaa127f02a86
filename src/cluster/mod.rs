//! The cluster room: replicas of the proxy that serve one Zuora tenant coordinate through
//! Redis (or Valkey): a cluster-wide concurrency governor, one shared token, cluster-wide
//! cool-downs after a 429, and a local fallback the moment Redis fails.
//!
//! [`Cluster::start`] connects (or starts in local mode if Redis does not answer); every call
//! is bounded by `cluster.timeout`, and any failure switches the replica to local mode at
//! once ([`Cluster::is_up`] turns false) until a background probe finds Redis again. Keys in
//! Redis are derived from a [`TenantKey`] (a hash of base URL, client id and entity), never
//! from a secret; tokens in Redis are sealed with a key derived from the client secret.

mod conn;
mod cooldown;
mod events;
mod governor;
mod health;
mod keys;
mod seal;
pub mod settings;
mod shared_token;
mod stats;

pub use cooldown::COOLDOWN_MAX_SECS;
pub use governor::{Permit, Refusal, POLL_BACKSTOP_MS};
pub use keys::TenantKey;
pub use seal::SealError;
pub use settings::{fallback_share, ClusterSettings, RawCluster};
pub use shared_token::{Fingerprint, RefreshLock, SharedToken};
pub use stats::StatsSnapshot;

use arc_swap::ArcSwap;
use events::Event;
use keys::Names;
use redis::aio::ConnectionManager;
use redis::RedisResult;
use stats::ClusterStats;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why a cluster operation did not happen. None of these ever carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("cannot set up the Redis client: {0}")]
    Client(redis::RedisError),
    /// Redis is down (local mode): nothing was sent.
    #[error("Redis is unavailable (local mode)")]
    Unavailable,
    #[error("Redis call {what} gave no answer within {timeout:?}")]
    Timeout { what: &'static str, timeout: Duration },
    #[error("Redis call {what} failed: {source}")]
    Redis {
        what: &'static str,
        source: redis::RedisError,
    },
    /// Another replica took the refresh lock after this one's lease ran out.
    #[error("the refresh lock with fence {fence} was superseded; the token was not stored")]
    StaleFence { fence: u64 },
    #[error("the token has already expired")]
    Expired,
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A replica's handle on the cluster. Cheap to clone; the background prober and subscriber
/// stop when the last clone is dropped (permits and locks still held are released then).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("settings", &self.inner.settings)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// What a permit or a lock shows of the cluster it came from: the replica's instance name.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Scripts {
    governor: governor::Scripts,
    token: shared_token::Scripts,
    cool: redis::Script,
}

pub(crate) struct Inner {
    settings: ClusterSettings,
    names: Names,
    conn: conn::Conn,
    health: health::Health,
    stats: Arc<ClusterStats>,
    scripts: Scripts,
    /// Waiting lines by tenant key id.
    queues: Mutex<HashMap<String, Arc<governor::Queue>>>,
    /// Cool-down ends (wall clock, ms) by tenant key id; read lock-free on the request path.
    cooldowns: ArcSwap<HashMap<String, u64>>,
    token_updates: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Names this replica's leases, so that leases of different replicas never collide.
    instance: String,
    next_permit: AtomicU64,
}

impl Cluster {
    /// Connects to Redis and starts the prober and the event subscriber. Returns once Redis
    /// has answered a first PING, or has failed to within the connect timeout (the replica
    /// then starts in local mode and joins when Redis answers). Errors only for settings
    /// that can never work (an unreadable `ca_file`, a URL the client refuses).
    pub async fn start(settings: ClusterSettings) -> Result<Cluster, ClusterError> {
        // The Redis client's rustls uses the process default; make sure it is ring, as everywhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stats = Arc::new(ClusterStats::default());
        let inner = Arc::new(Inner {
            names: Names::new(&settings.key_prefix),
            conn: conn::Conn::new(&settings).await?,
            health: health::Health::new(stats.clone()),
            stats,
            scripts: Scripts {
                governor: governor::Scripts::new(),
                token: shared_token::Scripts::new(),
                cool: cooldown::script(),
            },
            queues: Mutex::default(),
            cooldowns: ArcSwap::default(),
            token_updates: Mutex::default(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            next_permit: AtomicU64::new(0),
            settings,
        });
        if health::probe(&inner).await {
            // Read the cool-downs in force before the first request asks.
            inner.load_cooldowns().await;
        }
        let tasks = vec![
            tokio::spawn(health::probe_loop(inner.clone())).abort_handle(),
            tokio::spawn(events::subscribe_loop(inner.clone())).abort_handle(),
        ];
        tracing::info!(
            redis = %inner.settings.redacted_url(),
            key_prefix = %inner.settings.key_prefix,
            up = inner.health.is_up(),
            "cluster coordination started"
        );
        Ok(Cluster {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    /// Cluster mode (true) or local mode (false). Never waits.
    pub fn is_up(&self) -> bool {
        self.inner.health.is_up()
    }

    /// Changes at each switch between cluster mode and local mode.
    pub fn watch_up(&self) -> watch::Receiver<bool> {
        self.inner.health.subscribe()
    }

    /// The counters and gauges, for the metrics module.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }
}

impl Inner {
    /// Runs one Redis operation on the current connection, bounded by `timeout`. A failure
    /// switches to local mode before it is returned.
    /// Runs a script that changes the keys of `invocation` and, when it did, tells the other
    /// replicas: the script's last two arguments are the event channel and `event`.
    async fn call_announcing(
        &self,
        what: &'static str,
        mut invocation: redis::ScriptInvocation<'_>,
        event: Event,
    ) -> Result<i64, ClusterError> {
        invocation.arg(self.names.events()).arg(event.encode());
        self.call(
            what,
            |mut c| async move { invocation.invoke_async::<i64>(&mut c).await },
        )
        .await
    }

    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.conn.manager() else {
            self.health.fail(what, &"not connected");
            return Err(ClusterError::Unavailable);
        };
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, op(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => {
                self.health.fail(what, &source);
                Err(ClusterError::Redis { what, source })
            }
            Err(_) => {
                self.health.fail(what, &format_args!("no answer within {timeout:?}"));
                Err(ClusterError::Timeout { what, timeout })
            }
        }
    }

    fn require_up(&self) -> Result<(), ClusterError> {
        if self.health.is_up() {
            Ok(())
        } else {
            Err(ClusterError::Unavailable)
        }
    }

    /// After a (re)subscription: what missed messages would have said.
    async fn resync(&self) {
        if self.health.is_up() {
            self.load_cooldowns().await;
        }
        self.wake_all();
        self.all_tokens_changed();
    }

    /// After the prober found Redis again: waiters try at once, token managers look again.
    fn rejoined(&self) {
        self.wake_all();
        self.all_tokens_changed();
    }

    fn wake_all(&self) {
        for queue in self.queues.lock().expect("queue map lock").values() {
            queue.wake.notify_one();
        }
    }

    fn dispatch(&self, event: Event) {
        match event {
            Event::Release(key) => {
                let queue = self.queues.lock().expect("queue map lock").get(key.id()).cloned();
                if let Some(queue) = queue {
                    queue.wake.notify_one();
                }
            }
            Event::Cool(key, until_ms) => {
                if self.note_cooldown(&key, until_ms) {
                    ClusterStats::add(&self.stats.cooldowns_received);
                    tracing::info!(tenant_key = %key, until_ms, "cluster cool-down received");
                }
            }
            Event::Token(key) => self.token_changed(&key),
        }
    }
}
