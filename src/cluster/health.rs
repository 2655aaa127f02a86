//! Whether the replica runs in cluster mode: any failed Redis call switches it to local mode at
//! once (logged once per outage, counted); a background prober pings Redis and rejoins when it
//! answers again.

use super::stats::ClusterStats;
use super::Inner;
use std::fmt::Display;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// While Redis is down, how often the prober tries it again.
pub(crate) const PROBE_INTERVAL_MS: u64 = 250;
/// While Redis is up, how often the prober checks it (so an idle replica notices an outage too)
/// and looks at the password file.
pub(crate) const CHECK_INTERVAL_MS: u64 = 1000;

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub(crate) struct Health {
    state: AtomicU8,
    up: watch::Sender<bool>,
    stats: Arc<ClusterStats>,
}

impl Health {
    pub(crate) fn new(stats: Arc<ClusterStats>) -> Health {
        Health {
            state: AtomicU8::new(STARTING),
            up: watch::channel(false).0,
            stats,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// A Redis call failed: local mode from now on. Only the call that makes the switch logs.
    pub(crate) fn fail(&self, what: &str, reason: &dyn Display) {
        ClusterStats::add(&self.stats.redis_errors);
        let previous = self.state.swap(DOWN, Ordering::AcqRel);
        if previous == DOWN {
            tracing::debug!(call = what, %reason, "Redis call failed (already in local mode)");
            return;
        }
        self.stats.up.store(false, Ordering::Relaxed);
        ClusterStats::add(&self.stats.fallback_transitions);
        self.up.send_replace(false);
        tracing::warn!(
            call = what,
            %reason,
            "Redis unavailable: falling back to local mode (own token, local concurrency cap)"
        );
    }

    /// Redis answered the prober. True if this is a (re)join, for the caller to resynchronise.
    pub(crate) fn succeed(&self) -> bool {
        let previous = self.state.swap(UP, Ordering::AcqRel);
        if previous == UP {
            return false;
        }
        self.stats.up.store(true, Ordering::Relaxed);
        self.up.send_replace(true);
        if previous == STARTING {
            tracing::info!("Redis answers: cluster mode");
        } else {
            tracing::info!("Redis answers again: rejoined cluster mode");
        }
        true
    }
}

/// One probe: re-read the password file if it changed, connect if needed, PING within
/// `timeout`. Returns whether Redis answered.
pub(crate) async fn probe(inner: &Inner) -> bool {
    inner.conn.refresh_password().await;
    let mut manager = match inner.conn.manager() {
        Some(manager) => manager,
        None => match inner.conn.connect().await {
            Ok(manager) => manager,
            Err(reason) => {
                inner.health.fail("connect", &reason);
                return false;
            }
        },
    };
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut manager);
    let failure = match tokio::time::timeout(inner.settings.timeout, ping).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {:?}", inner.settings.timeout)),
    };
    match failure {
        None => {
            if inner.health.succeed() {
                inner.rejoined();
            }
            true
        }
        Some(reason) => {
            inner.health.fail("ping", &reason);
            inner.conn.reset();
            false
        }
    }
}

/// Probes forever: often while Redis is down, now and then while it is up, and at once when
/// a call reports a failure.
pub(crate) async fn probe_loop(inner: Arc<Inner>) {
    let mut up = inner.health.subscribe();
    loop {
        let wait = if inner.health.is_up() {
            CHECK_INTERVAL_MS
        } else {
            PROBE_INTERVAL_MS
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            // A failed call flips the state: start probing on the short interval right away.
            _ = up.changed() => continue,
        }
        probe(&inner).await;
    }
}
