//! One token per tenant for the whole cluster: the current token sealed in Redis, a refresh
//! lock with a lease and a fencing value so that one replica at a time fetches, fenced
//! writes, compare-and-delete after a 401, and a pub/sub notice when the token changes.

use super::events::{unix_ms, Event};
use super::keys::TenantKey;
use super::seal;
use super::stats::ClusterStats;
use super::{Cluster, ClusterError, Inner};
use redis::Script;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// The fencing counter outlives any lock by far, and still vanishes with an unused tenant.
const FENCE_TTL_MS: u64 = 24 * 3600 * 1000;

/// Takes the lock if it is free, with a fence one higher than any before.
const LOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence
";

/// Stores only if no lock was taken after this one (its fence is still the latest); then
/// releases the lock and tells every replica.
const STORE: &str = r"
if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// Releases the lock only if it is still this holder's.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Deletes the token only if it is still the one that Zuora refused.
const INVALIDATE: &str = r"
local value = redis.call('GET', KEYS[1])
if value and redis.sha1hex(value) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

pub(crate) struct Scripts {
    lock: Script,
    store: Script,
    unlock: Script,
    invalidate: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            lock: Script::new(LOCK),
            store: Script::new(STORE),
            unlock: Script::new(UNLOCK),
            invalidate: Script::new(INVALIDATE),
        }
    }
}

/// Names one sealed value, for [`Cluster::invalidate_if_current`]. Not secret: a digest of
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token opened from Redis (or just stored there). `Debug` never shows the token.
#[derive(Clone)]
pub struct SharedToken {
    access_token: String,
    /// Wall-clock expiry, as sealed by the replica that fetched it.
    pub expires_at: SystemTime,
    pub fingerprint: Fingerprint,
}

impl SharedToken {
    /// The access token itself, for the one place that builds the `Authorization` header.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedToken")
            .field("expires_at", &self.expires_at)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The right to fetch the tenant's next token. Released when dropped (or by a successful
/// [`Cluster::store_token`]); expires by itself after `lease` if its holder dies.
#[derive(Debug)]
pub struct RefreshLock {
    inner: Arc<Inner>,
    key: TenantKey,
    fence: u64,
    done: AtomicBool,
}

impl RefreshLock {
    /// The fencing value: every lock taken later has a higher one.
    pub fn fence(&self) -> u64 {
        self.fence
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let inner = self.inner.clone();
        let lock = inner.names.refresh_lock(&self.key);
        let fence = self.fence;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = inner
                    .call("unlock", |mut c| {
                        let mut call = inner.scripts.token.unlock.key(&lock);
                        call.arg(fence);
                        async move { call.invoke_async::<i64>(&mut c).await }
                    })
                    .await;
            });
        }
    }
}

impl Cluster {
    /// The tenant's shared token if one is stored, opens with `client_secret` and has not
    /// expired. A value that does not open (another secret, tampering) counts as absent.
    pub async fn load_token(&self, key: &TenantKey, client_secret: &str) -> Result<Option<SharedToken>, ClusterError> {
        let inner = &self.inner;
        inner.require_up()?;
        let name = inner.names.token(key);
        let sealed = inner
            .call("load_token", |mut c| async move {
                redis::cmd("GET")
                    .arg(&name)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let opened = match seal::open(client_secret, key.id(), &sealed) {
            Ok(opened) => opened,
            Err(error) => {
                ClusterStats::add(&inner.stats.shared_token_unreadable);
                tracing::warn!(tenant_key = %key, %error, "shared token ignored");
                return Ok(None);
            }
        };
        if opened.expires_at <= SystemTime::now() {
            return Ok(None);
        }
        ClusterStats::add(&inner.stats.shared_token_reads);
        Ok(Some(SharedToken {
            access_token: opened.access_token,
            expires_at: opened.expires_at,
            fingerprint: Fingerprint(seal::fingerprint(&sealed)),
        }))
    }

    /// The refresh lock if no other replica holds it, else `None`.
    pub async fn try_refresh_lock(&self, key: &TenantKey) -> Result<Option<RefreshLock>, ClusterError> {
        let inner = &self.inner;
        inner.require_up()?;
        let lock = inner.names.refresh_lock(key);
        let fence_key = inner.names.fence(key);
        let lease_ms = inner.settings.lease.as_millis() as u64;
        let fence = inner
            .call("refresh_lock", |mut c| {
                let mut call = inner.scripts.token.lock.key(&lock);
                call.key(&fence_key).arg(lease_ms).arg(FENCE_TTL_MS);
                async move { call.invoke_async::<Option<u64>>(&mut c).await }
            })
            .await?;
        Ok(fence.map(|fence| RefreshLock {
            inner: inner.clone(),
            key: key.clone(),
            fence,
            done: AtomicBool::new(false),
        }))
    }

    /// Seals and stores a freshly fetched token under `lock`, releases the lock and notifies
    /// every replica. Refused with [`ClusterError::StaleFence`] if another replica took the
    /// lock since (this one's lease ran out).
    pub async fn store_token(
        &self,
        lock: &RefreshLock,
        access_token: &str,
        expires_at: SystemTime,
        client_secret: &str,
    ) -> Result<SharedToken, ClusterError> {
        let inner = &self.inner;
        inner.require_up()?;
        let key = &lock.key;
        let ttl_ms = match expires_at.duration_since(SystemTime::now()) {
            Ok(left) if left.as_millis() > 0 => left.as_millis() as u64,
            _ => return Err(ClusterError::Expired),
        };
        let sealed = seal::seal(client_secret, key.id(), access_token, expires_at)?;
        let names = (
            inner.names.token(key),
            inner.names.refresh_lock(key),
            inner.names.fence(key),
        );
        let mut call = inner.scripts.token.store.key(&names.0);
        call.key(&names.1)
            .key(&names.2)
            .arg(lock.fence)
            .arg(&sealed[..])
            .arg(ttl_ms);
        let stored = inner
            .call_announcing("store_token", call, Event::Token(key.clone()))
            .await?;
        if stored != 1 {
            return Err(ClusterError::StaleFence { fence: lock.fence });
        }
        lock.done.store(true, Ordering::Release);
        ClusterStats::add(&inner.stats.shared_token_stores);
        tracing::debug!(tenant_key = %key, fence = lock.fence, expires_at_ms = unix_ms(expires_at), "shared token stored");
        Ok(SharedToken {
            access_token: access_token.to_string(),
            expires_at,
            fingerprint: Fingerprint(seal::fingerprint(&sealed)),
        })
    }

    /// Deletes the shared token if it is still the one with `fingerprint` (Zuora refused it),
    /// so that however many replicas see the same 401, it is deleted once and fetched once.
    /// True if this call deleted it.
    pub async fn invalidate_if_current(
        &self,
        key: &TenantKey,
        fingerprint: &Fingerprint,
    ) -> Result<bool, ClusterError> {
        let inner = &self.inner;
        inner.require_up()?;
        let mut call = inner.scripts.token.invalidate.key(inner.names.token(key));
        call.arg(&fingerprint.0);
        let deleted = inner
            .call_announcing("invalidate_token", call, Event::Token(key.clone()))
            .await?
            == 1;
        if deleted {
            ClusterStats::add(&inner.stats.shared_token_invalidations);
            tracing::info!(tenant_key = %key, "shared token invalidated after a 401");
        }
        Ok(deleted)
    }

    /// Changes whenever another replica stores or deletes the shared token of `key`, and
    /// after a (re)join: the moment to call [`Cluster::load_token`] again.
    pub fn token_updates(&self, key: &TenantKey) -> watch::Receiver<u64> {
        let mut senders = self.inner.token_updates.lock().expect("token watch lock");
        senders
            .entry(key.id().to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

impl Inner {
    pub(crate) fn token_changed(&self, key: &TenantKey) {
        let senders = self.token_updates.lock().expect("token watch lock");
        if let Some(sender) = senders.get(key.id()) {
            sender.send_modify(|n| *n += 1);
        }
    }

    pub(crate) fn all_tokens_changed(&self) {
        let senders = self.token_updates.lock().expect("token watch lock");
        for sender in senders.values() {
            sender.send_modify(|n| *n += 1);
        }
    }
}
