//! Counters and gauges of the cluster room, as plain atomics: the metrics module reads a
//! [`StatsSnapshot`] when it is scraped, so nothing here knows about Prometheus.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Declares each counter once: as an atomic of [`ClusterStats`], as a field of
/// [`StatsSnapshot`], and in [`ClusterStats::snapshot`], so none can be missing from one.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        pub(crate) struct ClusterStats {
            pub(crate) up: AtomicBool,
            pub(crate) permits_held: AtomicI64,
            pub(crate) permits_waiting: AtomicI64,
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A reading of the cluster's counters (monotonic, `_total` in Prometheus terms) and
        /// gauges.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            /// Gauge: Redis answers and the replica runs in cluster mode (`zuora_proxy_cluster_up`).
            pub up: bool,
            /// Gauge: permits this replica holds now.
            pub permits_held: i64,
            /// Gauge: requests of this replica waiting for a permit now.
            pub permits_waiting: i64,
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ClusterStats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    up: self.up.load(Ordering::Relaxed),
                    permits_held: self.permits_held.load(Ordering::Relaxed),
                    permits_waiting: self.permits_waiting.load(Ordering::Relaxed),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    permits_granted,
    /// Permits that were not granted at the first try (queued behind others or at the limit).
    permit_waits,
    /// `acquire` gave up at its deadline.
    permits_refused_overloaded,
    /// `acquire` could not ask Redis: the caller used its local fallback cap.
    permits_refused_unavailable,
    lease_renewals,
    /// Switches from cluster mode to local mode (each one logged once).
    fallback_transitions,
    /// Redis calls that failed or timed out.
    redis_errors,
    /// Shared tokens taken from Redis instead of fetched from Zuora.
    shared_token_reads,
    /// Tokens this replica fetched and shared.
    shared_token_stores,
    /// Shared tokens that did not open with this replica's secret (rotated secret, tampering).
    shared_token_unreadable,
    /// Shared tokens this replica deleted after a 401 (compare-and-delete that matched).
    shared_token_invalidations,
    cooldowns_published,
    cooldowns_received,
}

impl ClusterStats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
