//! The `[cluster]` section: its raw serde form, its validated settings and the checks between
//! them, each problem named by its full key (`cluster.redis_url: ...`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// Every Redis key and channel starts with this unless `key_prefix` says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "zuora-auth-proxy";
/// A Redis call that takes longer than this counts as a failure: a slow Redis must never add
/// more than this to a request.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
/// A permit (and a refresh lock) outlives a holder that vanished by at most this long.
pub const DEFAULT_LEASE_SECS: u64 = 30;
pub const DEFAULT_EXPECTED_REPLICAS: u64 = 1;
/// A lease shorter than this would be renewed more often than a Redis round trip allows for.
pub const MIN_LEASE_MS: u64 = 1000;
/// Longer than this, `timeout` is no longer "never noticeable": it would hold every request
/// for seconds while Redis hangs.
pub const MAX_TIMEOUT_MS: u64 = 5000;
const MAX_KEY_PREFIX_LEN: usize = 64;

/// `[cluster]` as written. Every field is optional so that validation can report all problems.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct RawCluster {
    /// `redis://host:port[/db]` or `rediss://host:port[/db]` (TLS); a user name may be given,
    /// never a password.
    pub redis_url: Option<String>,
    /// PEM file of extra trust roots for `rediss://`, added to the built-in ones.
    pub ca_file: Option<String>,
    /// File holding the Redis password (surrounding whitespace trimmed); re-read when it changes.
    pub password_file: Option<String>,
    /// Prefix of every Redis key and channel the proxy uses.
    pub key_prefix: Option<String>,
    /// Longest a Redis call may take before the replica falls back to local mode.
    pub timeout: Option<String>,
    /// Lifetime of a permit lease (renewed while held) and of a token-refresh lock.
    pub lease: Option<String>,
    /// Replicas expected to share a tenant; sizes the fallback share of its concurrency.
    pub expected_replicas: Option<u64>,
}

/// Validated `[cluster]` settings. `Debug` shows no password (there is none inside: it stays
/// in `password_file`, and a URL carrying one is refused).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub redis_url: Url,
    pub ca_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub lease: Duration,
    pub expected_replicas: u64,
}

impl ClusterSettings {
    /// Settings for `redis_url` with every other key at its default.
    pub fn new(redis_url: Url) -> ClusterSettings {
        ClusterSettings {
            redis_url,
            ca_file: None,
            password_file: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            lease: Duration::from_secs(DEFAULT_LEASE_SECS),
            expected_replicas: DEFAULT_EXPECTED_REPLICAS,
        }
    }

    /// The URL as safe to print: a password, should one have slipped in, is replaced.
    pub fn redacted_url(&self) -> String {
        let mut url = self.redis_url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("REDACTED"));
        }
        url.to_string()
    }

    /// The effective settings for `check-config`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "redis_url": self.redacted_url(),
            "ca_file": self.ca_file.as_ref().map(|p| p.display().to_string()),
            "password_file": self.password_file.as_ref().map(|p| p.display().to_string()),
            "key_prefix": self.key_prefix,
            "timeout": humantime::format_duration(self.timeout).to_string(),
            "lease": humantime::format_duration(self.lease).to_string(),
            "expected_replicas": self.expected_replicas,
        })
    }
}

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis_url", &self.redacted_url())
            .field("ca_file", &self.ca_file)
            .field("password_file", &self.password_file)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("expected_replicas", &self.expected_replicas)
            .finish()
    }
}

/// The local cap a replica falls back to while Redis is unavailable: its share of the
/// tenant's cluster-wide cap, rounded up so that every replica can still send something.
pub fn fallback_share(cluster_max_concurrency: usize, expected_replicas: u64) -> usize {
    let replicas = usize::try_from(expected_replicas.max(1)).unwrap_or(usize::MAX);
    cluster_max_concurrency.div_ceil(replicas).max(1)
}

/// Checks `[cluster]` and applies defaults. On failure, every problem as `(full key, message)`.
pub fn validate(raw: &RawCluster) -> Result<ClusterSettings, Vec<(String, String)>> {
    let mut issues = Vec::new();
    let mut push = |key: &str, message: String| issues.push((format!("cluster.{key}"), message));

    let redis_url = match raw.redis_url.as_deref().map(str::trim) {
        None | Some("") => {
            push("redis_url", "required when [cluster] is set".into());
            None
        }
        Some(text) => match check_url(text) {
            Ok(url) => Some(url),
            Err(message) => {
                push("redis_url", message);
                None
            }
        },
    };
    let tls = redis_url.as_ref().is_some_and(|u| u.scheme() == "rediss");

    let ca_file = raw.ca_file.as_deref().map(|p| PathBuf::from(p.trim()));
    if let Some(path) = &ca_file {
        if redis_url.is_some() && !tls {
            push("ca_file", "only used with a rediss:// URL".into());
        }
        check_file(path).unwrap_or_else(|m| push("ca_file", m));
    }
    let password_file = raw.password_file.as_deref().map(|p| PathBuf::from(p.trim()));
    if let Some(path) = &password_file {
        check_file(path).unwrap_or_else(|m| push("password_file", m));
    }

    let key_prefix = raw.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX).to_string();
    if key_prefix.is_empty() || key_prefix.len() > MAX_KEY_PREFIX_LEN {
        push("key_prefix", format!("1 to {MAX_KEY_PREFIX_LEN} characters"));
    } else if !key_prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
    {
        // Braces would change the hash slot of every key; spaces would split log fields.
        push(
            "key_prefix",
            "only ASCII letters, digits and - _ . : / are allowed".into(),
        );
    }

    let timeout = duration(&mut push, "timeout", raw.timeout.as_deref(), DEFAULT_TIMEOUT_MS);
    if timeout.is_zero() {
        push("timeout", "must be greater than zero".into());
    } else if timeout > Duration::from_millis(MAX_TIMEOUT_MS) {
        push("timeout", format!("at most {MAX_TIMEOUT_MS}ms"));
    }
    let lease = duration(&mut push, "lease", raw.lease.as_deref(), DEFAULT_LEASE_SECS * 1000);
    if lease < Duration::from_millis(MIN_LEASE_MS) {
        push("lease", format!("at least {MIN_LEASE_MS}ms"));
    } else if lease < timeout * 10 {
        // Renewal runs every lease/3; it must fit several Redis calls in that time.
        push("lease", "must be at least ten times cluster.timeout".into());
    }

    let expected_replicas = raw.expected_replicas.unwrap_or(DEFAULT_EXPECTED_REPLICAS);
    if expected_replicas == 0 {
        push("expected_replicas", "must be at least 1".into());
    }

    match redis_url {
        Some(redis_url) if issues.is_empty() => Ok(ClusterSettings {
            redis_url,
            ca_file,
            password_file,
            key_prefix,
            timeout,
            lease,
            expected_replicas,
        }),
        _ => Err(issues),
    }
}

fn check_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{e}"))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err("must be a redis:// or rediss:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    if url.password().is_some() {
        return Err("must not carry a password: put it in cluster.password_file".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(format!("path {:?} is not a database number", url.path()));
    }
    Ok(url)
}

fn check_file(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    if !path.is_file() {
        return Err(format!("no such file {}", path.display()));
    }
    Ok(())
}

fn duration(push: &mut impl FnMut(&str, String), key: &str, value: Option<&str>, default_ms: u64) -> Duration {
    match value {
        None => Duration::from_millis(default_ms),
        Some(text) => humantime::parse_duration(text.trim()).unwrap_or_else(|e| {
            push(
                key,
                format!("invalid duration {text:?} ({e}); write e.g. \"50ms\" or \"30s\""),
            );
            Duration::from_millis(default_ms)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawCluster {
        RawCluster {
            redis_url: Some(url.into()),
            ..RawCluster::default()
        }
    }

    #[test]
    fn defaults() {
        let s = validate(&raw("redis://127.0.0.1:6379")).unwrap();
        assert_eq!(s.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(s.timeout, Duration::from_millis(50));
        assert_eq!(s.lease, Duration::from_secs(30));
        assert_eq!(s.expected_replicas, 1);
        assert_eq!(s.ca_file, None);
        assert_eq!(s, ClusterSettings::new(Url::parse("redis://127.0.0.1:6379").unwrap()));
    }

    #[test]
    fn every_problem_by_full_key() {
        let bad = RawCluster {
            redis_url: Some("http://x".into()),
            ca_file: Some("/nonexistent/ca.pem".into()),
            password_file: Some("/nonexistent/pw".into()),
            key_prefix: Some("a b".into()),
            timeout: Some("soon".into()),
            lease: Some("10ms".into()),
            expected_replicas: Some(0),
        };
        let issues = validate(&bad).unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.redis_url",
                "cluster.ca_file",
                "cluster.password_file",
                "cluster.key_prefix",
                "cluster.timeout",
                "cluster.lease",
                "cluster.expected_replicas"
            ]
        );
        assert!(validate(&RawCluster::default())
            .unwrap_err()
            .contains(&("cluster.redis_url".into(), "required when [cluster] is set".into())));
    }

    #[test]
    fn url_table() {
        for ok in [
            "redis://h",
            "rediss://h:6380",
            "redis://user@h/3",
            "redis://[::1]:6379/0",
        ] {
            assert!(validate(&raw(ok)).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("redis://:pw@h", "password"),
            ("redis://u:pw@h", "password"),
            ("rediss://h/#insecure", "fragment"),
            ("redis://h/?protocol=resp3", "query"),
            ("redis://h/x", "database"),
            ("unix:///tmp/redis.sock", "redis://"),
            ("redis://", "host"),
            ("h:6379", "redis://"),
        ] {
            let issues = validate(&raw(bad)).unwrap_err();
            assert!(issues[0].1.contains(needle), "{bad}: {issues:?}");
        }
    }

    #[test]
    fn ca_file_needs_tls_and_timeout_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let mut r = raw("redis://h");
        r.ca_file = Some(ca.display().to_string());
        assert_eq!(validate(&r).unwrap_err()[0].0, "cluster.ca_file");
        r.redis_url = Some("rediss://h".into());
        assert_eq!(validate(&r).unwrap().ca_file, Some(ca));
        for (timeout, lease, key) in [("0ms", "30s", "cluster.timeout"), ("6s", "60s", "cluster.timeout")] {
            let mut r = raw("redis://h");
            r.timeout = Some(timeout.into());
            r.lease = Some(lease.into());
            assert_eq!(validate(&r).unwrap_err()[0].0, key, "{timeout}");
        }
        let mut r = raw("redis://h");
        r.timeout = Some("500ms".into());
        r.lease = Some("2s".into());
        assert_eq!(validate(&r).unwrap_err()[0].0, "cluster.lease");
    }

    #[test]
    fn debug_and_json_never_show_a_password() {
        let mut s = ClusterSettings::new(Url::parse("redis://u@h").unwrap());
        // Even one built by hand around a URL with a password.
        s.redis_url = Url::parse("redis://u:hunter2@h").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.to_json().to_string().contains("hunter2"));
        assert_eq!(s.to_json()["timeout"], "50ms");
    }

    #[test]
    fn fallback_share_rounds_up() {
        assert_eq!(fallback_share(40, 1), 40);
        assert_eq!(fallback_share(40, 3), 14);
        assert_eq!(fallback_share(40, 8), 5);
        assert_eq!(fallback_share(40, 100), 1);
        assert_eq!(fallback_share(0, 0), 1);
    }
}
