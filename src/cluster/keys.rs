//! Names in Redis: a tenant key is a hash of tenant base URL + client id (+ entity id), never
//! of the secret, and every Redis key and channel is derived from it and the prefix.

use ring::digest;
use std::fmt;

/// Hex digits kept of the SHA-256: 128 bits, far from any collision between tenants.
const ID_HEX_LEN: usize = 32;

/// What the cluster coordinates on: one Zuora tenant's OAuth client, optionally narrowed to
/// one entity (Zuora counts concurrency per entity with Multi-entity).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantKey {
    id: String,
}

impl TenantKey {
    /// `base_url` is the tenant's REST base URL (a trailing `/` makes no difference);
    /// `entity` is the rule's `Zuora-Entity-Ids` value, if it sets one.
    pub fn new(base_url: &str, client_id: &str, entity: Option<&str>) -> TenantKey {
        let mut ctx = digest::Context::new(&digest::SHA256);
        // Length-prefixed parts, so that no two different triples hash the same input.
        for part in [Some(base_url.trim_end_matches('/')), Some(client_id), entity] {
            match part {
                Some(p) => {
                    ctx.update(&(p.len() as u64).to_be_bytes());
                    ctx.update(p.as_bytes());
                }
                None => ctx.update(&u64::MAX.to_be_bytes()),
            }
        }
        let hex: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        TenantKey {
            id: hex[..ID_HEX_LEN].to_string(),
        }
    }

    /// The hex id used inside Redis key names and pub/sub messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn from_id(id: &str) -> Option<TenantKey> {
        (id.len() == ID_HEX_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| TenantKey { id: id.into() })
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantKey({})", self.id)
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Key and channel names under one prefix. The tenant id sits in a `{hash tag}` so that a
/// tenant's keys share one slot and its multi-key scripts stay valid on a sharded Redis.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names { prefix: prefix.into() }
    }

    /// Sorted set of permit leases: member = permit id, score = expiry (Redis time, ms).
    pub(crate) fn permits(&self, key: &TenantKey) -> String {
        format!("{}:{{{}}}:permits", self.prefix, key.id)
    }

    /// The sealed shared token.
    pub(crate) fn token(&self, key: &TenantKey) -> String {
        format!("{}:{{{}}}:token", self.prefix, key.id)
    }

    /// The token-refresh lock; its value is the holder's fence.
    pub(crate) fn refresh_lock(&self, key: &TenantKey) -> String {
        format!("{}:{{{}}}:refresh-lock", self.prefix, key.id)
    }

    /// The fencing counter of the refresh lock.
    pub(crate) fn fence(&self, key: &TenantKey) -> String {
        format!("{}:{{{}}}:fence", self.prefix, key.id)
    }

    /// Sorted set of cool-downs: member = tenant id, score = end (wall clock, ms).
    pub(crate) fn cooldowns(&self) -> String {
        format!("{}:cooldowns", self.prefix)
    }

    /// The one pub/sub channel: `release <id>`, `cool <id> <until ms>`, `token <id>`.
    pub(crate) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let a = TenantKey::new("https://rest.test.zuora.com", "client", None);
        assert_eq!(a, TenantKey::new("https://rest.test.zuora.com/", "client", None));
        assert_eq!(a.id().len(), ID_HEX_LEN);
        let others = [
            TenantKey::new("https://rest.test.zuora.com", "client2", None),
            TenantKey::new("https://rest.eu.zuora.com", "client", None),
            TenantKey::new("https://rest.test.zuora.com", "client", Some("e1")),
            TenantKey::new("https://rest.test.zuora.com", "client", Some("")),
            // Moving a byte between parts changes the key.
            TenantKey::new("https://rest.test.zuora.co", "mclient", None),
        ];
        for (i, k) in others.iter().enumerate() {
            assert_ne!(&a, k, "{i}");
        }
        assert_eq!(TenantKey::from_id(a.id()), Some(a.clone()));
        assert_eq!(TenantKey::from_id("zz"), None);
    }

    #[test]
    fn names_carry_a_hash_tag() {
        let n = Names::new("p");
        let k = TenantKey::new("https://h", "c", None);
        assert_eq!(n.permits(&k), format!("p:{{{}}}:permits", k.id()));
        assert_eq!(n.events(), "p:events");
    }
}
