//! One 429 cools the whole cluster: a replica publishes "cool down until T" for a tenant key,
//! stored too (so a replica that subscribes later reads it back), and every replica answers
//! `cooling_until` from a local cache fed by pub/sub, without a Redis round trip.

use super::events::{from_unix_ms, unix_ms, Event};
use super::keys::TenantKey;
use super::stats::ClusterStats;
use super::{Cluster, ClusterError, Inner};
use redis::Script;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// No cool-down lasts longer than this, whatever a 429 said: a bogus `Retry-After` must not
/// stop the whole fleet for long. Matches the token manager's cap on waits.
pub const COOLDOWN_MAX_SECS: u64 = 300;

/// Keeps the later of the stored and the new end, prunes ended entries, lets the set expire
/// with its last entry, and tells every replica.
const COOL: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

pub(crate) fn script() -> Script {
    Script::new(COOL)
}

impl Cluster {
    /// Tells every replica to hold requests to `key` until `until` (at most
    /// [`COOLDOWN_MAX_SECS`] from now). This replica knows at once, even if Redis fails.
    pub async fn cool_down(&self, key: &TenantKey, until: SystemTime) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let until = until.min(now + Duration::from_secs(COOLDOWN_MAX_SECS));
        if until <= now {
            return Ok(());
        }
        let until_ms = unix_ms(until);
        inner.note_cooldown(key, until_ms);
        ClusterStats::add(&inner.stats.cooldowns_published);
        if !inner.health.is_up() {
            return Err(ClusterError::Unavailable);
        }
        let mut call = inner.scripts.cool.key(inner.names.cooldowns());
        call.arg(key.id()).arg(until_ms).arg(unix_ms(now));
        inner
            .call_announcing("cool_down", call, Event::Cool(key.clone(), until_ms))
            .await
            .map(|_| ())
    }

    /// When the cool-down of `key` ends, if one is in force; never calls Redis.
    pub fn cooling_until(&self, key: &TenantKey) -> Option<SystemTime> {
        let now = SystemTime::now();
        self.inner
            .cooldowns
            .load()
            .get(key.id())
            .map(|ms| from_unix_ms(*ms))
            .filter(|until| *until > now)
    }
}

impl Inner {
    /// Records a cool-down locally, keeping the later end. True if it extended what was known.
    pub(crate) fn note_cooldown(&self, key: &TenantKey, until_ms: u64) -> bool {
        let now_ms = unix_ms(SystemTime::now());
        let mut extended = false;
        self.cooldowns.rcu(|map| {
            extended = map.get(key.id()).is_none_or(|known| *known < until_ms);
            let mut next: HashMap<String, u64> = map
                .iter()
                .filter(|(_, until)| **until > now_ms)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if extended {
                next.insert(key.id().to_string(), until_ms);
            }
            Arc::new(next)
        });
        extended
    }

    /// Reads back every cool-down still in force (after a (re)subscription).
    pub(crate) async fn load_cooldowns(&self) {
        let set = self.names.cooldowns();
        let now_ms = unix_ms(SystemTime::now());
        let stored = self
            .call("load_cooldowns", |mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&set)
                    .arg(format!("({now_ms}"))
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .query_async::<Vec<(String, f64)>>(&mut c)
                    .await
            })
            .await;
        for (id, until_ms) in stored.unwrap_or_default() {
            if let Some(key) = TenantKey::from_id(&id) {
                self.note_cooldown(&key, until_ms as u64);
            }
        }
    }
}
