//! The cluster-wide concurrency governor: a permit is a lease in a Redis sorted set, taken by
//! one atomic script, renewed while held and released when dropped, so a replica that dies
//! leaks nothing past one lease. Within a replica, waiters take turns in arrival order.

use super::events::Event;
use super::keys::TenantKey;
use super::stats::ClusterStats;
use super::{Cluster, Inner};
use redis::Script;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Waiters look again this often even without a wake-up: a lease that expired (its holder
/// died) sends no message, and a message can be lost while the subscription reconnects.
pub const POLL_BACKSTOP_MS: u64 = 100;

/// Drops expired leases, then adds one if fewer than the limit remain. Scores are Redis's own
/// clock, so replicas' clocks do not matter. The set expires when no lease could be alive.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
  return 1
end
return 0
";

/// Extends a lease. A lease that is gone (Redis restarted, or renewal was late) is added back
/// regardless of the limit: the request is in flight either way, and the count must say so.
/// Returns 1 if the lease had to be added back.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
return added
";

/// Removes a lease and tells waiting replicas.
const RELEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

pub(crate) struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }
}

/// One tenant key's waiting line in this replica.
#[derive(Default)]
pub(crate) struct Queue {
    /// Held by the request at the head of the line. Tokio's mutex is fair: it is handed to
    /// waiters in the order they asked, which is the arrival order.
    turn: Mutex<()>,
    /// Wakes the head when a permit may have been freed.
    pub(crate) wake: Notify,
}

/// Why no permit was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The deadline passed while the cluster was at its limit: answer `overloaded`.
    #[error("no cluster permit before the deadline")]
    Overloaded,
    /// Redis failed or is down: the caller falls back to its local cap.
    #[error("Redis is unavailable; the local cap applies")]
    Unavailable,
}

/// A cluster-wide permit. Renewed in the background while held; dropping it releases it
/// (asynchronously, without delaying the caller). Hold it until the response body ends.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    key: TenantKey,
    member: String,
    renewal: AbortHandle,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.renewal.abort();
        self.inner.stats.permits_held.fetch_sub(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let key = self.key.clone();
        let member = std::mem::take(&mut self.member);
        // Outside a runtime nothing can be sent; the lease then simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.release(&key, &member).await });
        }
    }
}

/// Counts a request in the waiting gauge for as long as it waits.
struct Waiting<'a>(&'a ClusterStats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a ClusterStats) -> Waiting<'a> {
        stats.permits_waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.permits_waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    /// A permit for `key` if fewer than `limit` are held cluster-wide, else waits (in arrival
    /// order within this replica, woken when any replica releases one) until `deadline`.
    /// While Redis is down this answers `Unavailable` at once, without calling it.
    pub async fn acquire(&self, key: &TenantKey, limit: usize, deadline: Instant) -> Result<Permit, Refusal> {
        let inner = &self.inner;
        let refused = |refusal: Refusal| {
            let counter = match refusal {
                Refusal::Overloaded => &inner.stats.permits_refused_overloaded,
                Refusal::Unavailable => &inner.stats.permits_refused_unavailable,
            };
            ClusterStats::add(counter);
            Err(refusal)
        };
        if !inner.health.is_up() {
            return refused(Refusal::Unavailable);
        }
        let queue = inner.queue(key);
        let (_turn, mut waited) = match queue.turn.try_lock() {
            Ok(turn) => (turn, false),
            Err(_) => {
                let _waiting = Waiting::new(&inner.stats);
                match tokio::time::timeout_at(deadline, queue.turn.lock()).await {
                    Ok(turn) => (turn, true),
                    Err(_) => return refused(Refusal::Overloaded),
                }
            }
        };
        let mut up = inner.health.subscribe();
        let mut _waiting = None;
        loop {
            if !inner.health.is_up() {
                return refused(Refusal::Unavailable);
            }
            match inner.try_acquire(key, limit).await {
                Ok(Some(permit)) => {
                    ClusterStats::add(&inner.stats.permits_granted);
                    if waited {
                        ClusterStats::add(&inner.stats.permit_waits);
                    }
                    return Ok(permit);
                }
                Ok(None) => {}
                Err(()) => return refused(Refusal::Unavailable),
            }
            if Instant::now() >= deadline {
                return refused(Refusal::Overloaded);
            }
            waited = true;
            _waiting.get_or_insert_with(|| Waiting::new(&inner.stats));
            let next_look = (Instant::now() + Duration::from_millis(POLL_BACKSTOP_MS)).min(deadline);
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = tokio::time::sleep_until(next_look) => {}
                // Redis failing meanwhile: stop waiting for it, the local cap takes over.
                _ = up.changed() => {}
            }
        }
    }
}

impl Inner {
    pub(crate) fn queue(&self, key: &TenantKey) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("queue map lock");
        if let Some(queue) = queues.get(key.id()) {
            return queue.clone();
        }
        queues.entry(key.id().to_string()).or_default().clone()
    }

    /// One attempt: `Ok(None)` when the cluster is at the limit, `Err` when Redis failed.
    async fn try_acquire(self: &Arc<Self>, key: &TenantKey, limit: usize) -> Result<Option<Permit>, ()> {
        let member = format!("{}:{}", self.instance, self.next_permit.fetch_add(1, Ordering::Relaxed));
        let set = self.names.permits(key);
        let lease_ms = self.settings.lease.as_millis() as u64;
        let result = self
            .call("acquire", |mut c| {
                let mut call = self.scripts.governor.acquire.key(&set);
                call.arg(limit).arg(lease_ms).arg(&member);
                async move { call.invoke_async::<i64>(&mut c).await }
            })
            .await;
        match result {
            Ok(1) => {
                self.stats.permits_held.fetch_add(1, Ordering::Relaxed);
                let renewal = tokio::spawn(renew(self.clone(), key.clone(), member.clone())).abort_handle();
                Ok(Some(Permit {
                    inner: self.clone(),
                    key: key.clone(),
                    member,
                    renewal,
                }))
            }
            Ok(_) => Ok(None),
            Err(_) => {
                // The script may have run before the answer was lost: take the lease back.
                let inner = self.clone();
                let key = key.clone();
                tokio::spawn(async move { inner.release(&key, &member).await });
                Err(())
            }
        }
    }

    /// Removes a lease and wakes waiters here and (through pub/sub) in other replicas.
    pub(crate) async fn release(&self, key: &TenantKey, member: &str) {
        let mut call = self.scripts.governor.release.key(self.names.permits(key));
        call.arg(member);
        let _ = self.call_announcing("release", call, Event::Release(key.clone())).await;
        self.queue(key).wake.notify_one();
    }
}

/// Keeps a held permit's lease alive: every lease/3, so two renewals may fail before it lapses.
async fn renew(inner: Arc<Inner>, key: TenantKey, member: String) {
    let lease_ms = inner.settings.lease.as_millis() as u64;
    let set = inner.names.permits(&key);
    let every = inner.settings.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = inner
            .call("renew", |mut c| {
                let mut call = inner.scripts.governor.renew.key(&set);
                call.arg(lease_ms).arg(&member);
                async move { call.invoke_async::<i64>(&mut c).await }
            })
            .await;
        // On failure `call` switched to local mode already; the next tick tries again.
        if let Ok(added) = renewed {
            ClusterStats::add(&inner.stats.lease_renewals);
            if added == 1 {
                tracing::debug!(tenant_key = %key, "a held permit's lease had lapsed (Redis restarted?); registered again");
            }
        }
    }
}
