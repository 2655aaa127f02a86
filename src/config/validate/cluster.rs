//! Validation of `[cluster]`: the cluster room's own checks, each problem under its full key.

use super::Issues;
use crate::cluster::{settings, ClusterSettings, RawCluster};
use crate::config::raw::Field;

/// The validated settings when `[cluster]` is present and valid.
pub(super) fn cluster(issues: &mut Issues, raw: &Field<RawCluster>) -> Option<ClusterSettings> {
    let raw = issues.field("cluster", raw)?;
    match settings::validate(raw) {
        Ok(settings) => Some(settings),
        Err(problems) => {
            for (key, message) in problems {
                issues.push(key, message);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{keys, refused_at, GOOD};
    use crate::config::*;

    #[test]
    fn absent_means_no_cluster_and_the_caps_get_their_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert!(c.fixed.cluster.is_none());
        let t = &c.live.tenants["default"];
        assert_eq!((t.cluster_max_concurrency, t.fallback_max_concurrency), (40, 40));
        assert_eq!(c.to_redacted_json()["cluster"], serde_json::Value::Null);
    }

    #[test]
    fn the_fallback_share_follows_expected_replicas_unless_set() {
        let text = format!("{GOOD}\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\nexpected_replicas = 3\n");
        let c = Config::from_toml(&text).unwrap();
        let cluster = c.fixed.cluster.as_ref().unwrap();
        assert_eq!(cluster.expected_replicas, 3);
        assert_eq!(c.live.tenants["default"].fallback_max_concurrency, 14);
        let text = text.replace(
            "client_id = \"id\"",
            "client_id = \"id\"\ncluster_max_concurrency = 10\nfallback_max_concurrency = 2",
        );
        let c = Config::from_toml(&text).unwrap();
        let t = &c.live.tenants["default"];
        assert_eq!((t.cluster_max_concurrency, t.fallback_max_concurrency), (10, 2));
        let json = c.to_redacted_json();
        assert_eq!(json["cluster"]["redis_url"], "redis://127.0.0.1:6379");
        assert_eq!(json["tenants"]["default"]["fallback_max_concurrency"], 2);
    }

    #[test]
    fn problems_are_reported_by_full_key() {
        let text = GOOD.replace(
            "client_id = \"id\"",
            "client_id = \"id\"\ncluster_max_concurrency = 0\nfallback_max_concurrency = 0",
        ) + "\n[cluster]\nredis_url = \"redis://u:pw@h\"\ntimeout = \"soon\"\nlese = \"1s\"\n";
        let err = refused_at(
            &text,
            &[
                "cluster.lese",
                "cluster.redis_url",
                "cluster.timeout",
                "tenants.default.cluster_max_concurrency",
                "tenants.default.fallback_max_concurrency",
            ],
        );
        assert!(!err.to_string().contains("pw@"), "{err}");
        let err = Config::from_toml(&format!("cluster = 3\n{GOOD}")).unwrap_err();
        assert_eq!(keys(&err), ["cluster"]);
    }

    #[test]
    fn a_changed_cluster_section_needs_a_restart() {
        let with = |url: &str| Config::from_toml(&format!("{GOOD}\n[cluster]\nredis_url = \"{url}\"\n")).unwrap();
        let a = with("redis://a:6379");
        assert!(a.restart_needed(&with("redis://a:6379")).is_empty());
        assert_eq!(a.restart_needed(&with("redis://b:6379")), ["cluster"]);
        assert_eq!(a.restart_needed(&Config::from_toml(GOOD).unwrap()), ["cluster"]);
    }
}
