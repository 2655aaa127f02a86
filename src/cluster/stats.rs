//! Counters and gauges of the cluster room, as plain atomics: the metrics module reads a
//! [`StatsSnapshot`] when it is scraped, so nothing here knows about Prometheus.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) up: AtomicBool,
    pub(crate) permits_held: AtomicI64,
    pub(crate) permits_waiting: AtomicI64,
    pub(crate) permits_granted: AtomicU64,
    pub(crate) permit_waits: AtomicU64,
    pub(crate) permits_refused_overloaded: AtomicU64,
    pub(crate) permits_refused_unavailable: AtomicU64,
    pub(crate) lease_renewals: AtomicU64,
    pub(crate) fallback_transitions: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) shared_token_reads: AtomicU64,
    pub(crate) shared_token_stores: AtomicU64,
    pub(crate) shared_token_unreadable: AtomicU64,
    pub(crate) shared_token_invalidations: AtomicU64,
    pub(crate) cooldowns_published: AtomicU64,
    pub(crate) cooldowns_received: AtomicU64,
}

/// A reading of the cluster's counters (monotonic, `_total` in Prometheus terms) and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Gauge: Redis answers and the replica runs in cluster mode (`zuora_proxy_cluster_up`).
    pub up: bool,
    /// Gauge: permits this replica holds now.
    pub permits_held: i64,
    /// Gauge: requests of this replica waiting for a permit now.
    pub permits_waiting: i64,
    pub permits_granted: u64,
    /// Permits that were not granted at the first try (queued behind others or at the limit).
    pub permit_waits: u64,
    /// `acquire` gave up at its deadline.
    pub permits_refused_overloaded: u64,
    /// `acquire` could not ask Redis: the caller used its local fallback cap.
    pub permits_refused_unavailable: u64,
    pub lease_renewals: u64,
    /// Switches from cluster mode to local mode (each one logged once).
    pub fallback_transitions: u64,
    /// Redis calls that failed or timed out.
    pub redis_errors: u64,
    /// Shared tokens taken from Redis instead of fetched from Zuora.
    pub shared_token_reads: u64,
    /// Tokens this replica fetched and shared.
    pub shared_token_stores: u64,
    /// Shared tokens that did not open with this replica's secret (rotated secret, tampering).
    pub shared_token_unreadable: u64,
    /// Shared tokens this replica deleted after a 401 (compare-and-delete that matched).
    pub shared_token_invalidations: u64,
    pub cooldowns_published: u64,
    pub cooldowns_received: u64,
}

impl ClusterStats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let u = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            up: self.up.load(Ordering::Relaxed),
            permits_held: self.permits_held.load(Ordering::Relaxed),
            permits_waiting: self.permits_waiting.load(Ordering::Relaxed),
            permits_granted: u(&self.permits_granted),
            permit_waits: u(&self.permit_waits),
            permits_refused_overloaded: u(&self.permits_refused_overloaded),
            permits_refused_unavailable: u(&self.permits_refused_unavailable),
            lease_renewals: u(&self.lease_renewals),
            fallback_transitions: u(&self.fallback_transitions),
            redis_errors: u(&self.redis_errors),
            shared_token_reads: u(&self.shared_token_reads),
            shared_token_stores: u(&self.shared_token_stores),
            shared_token_unreadable: u(&self.shared_token_unreadable),
            shared_token_invalidations: u(&self.shared_token_invalidations),
            cooldowns_published: u(&self.cooldowns_published),
            cooldowns_received: u(&self.cooldowns_received),
        }
    }
}
