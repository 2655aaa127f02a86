//! Validation of `[tenants.<name>]`: where each Zuora tenant lives and the OAuth client that
//! speaks for it.

use super::Issues;
use crate::config::raw::{Field, RawTenant};
use crate::config::*;
use crate::secret::Secret;

pub(super) fn tenants(
    issues: &mut Issues,
    raw: &Field<BTreeMap<String, Field<RawTenant>>>,
    expected_replicas: u64,
) -> BTreeMap<String, Arc<TenantSettings>> {
    let mut tenants = BTreeMap::new();
    let written = issues.field("tenants", raw);
    if written.is_none_or(BTreeMap::is_empty) && !matches!(raw, Field::Invalid(_)) {
        issues.push("tenants", "at least one tenant is required");
    }
    for (name, t) in written.into_iter().flatten() {
        if let Some(tenant) = issues
            .field(&format!("tenants.{name}"), t)
            .and_then(|t| tenant(issues, name, t, expected_replicas))
        {
            tenants.insert(name.clone(), Arc::new(tenant));
        }
    }
    tenants
}

fn check_name(issues: &mut Issues, name: &str) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        issues.push(
            format!("tenants.{name}"),
            "tenant names use lower-case letters, digits, '-' and '_'",
        );
    } else if name.chars().any(|c| c.is_ascii_uppercase()) {
        issues.push(
            format!("tenants.{name}"),
            format!(
                "tenant names are lower case: environment overrides address tenants in lower case \
                 (ZUORA_PROXY__TENANTS__{}__CLIENT_ID sets tenants.{}), so none could reach this one; \
                 call it {:?}",
                name.to_ascii_uppercase(),
                name.to_ascii_lowercase(),
                name.to_ascii_lowercase()
            ),
        );
    }
}

fn tenant(issues: &mut Issues, name: &str, t: &RawTenant, expected_replicas: u64) -> Option<TenantSettings> {
    let key = |field: &str| format!("tenants.{name}.{field}");
    let before = issues.errors();
    check_name(issues, name);
    let base_url = issues
        .present(&key("base_url"), &t.base_url)
        .and_then(|text| issues.https_url(&key("base_url"), text));
    let token_url = match (issues.field(&key("token_url"), &t.token_url), &base_url) {
        (Some(text), _) => issues.https_url(&key("token_url"), text),
        (None, Some(base)) => {
            let mut url = base.clone();
            let path = format!("{}/oauth/token", base.path().trim_end_matches('/'));
            url.set_path(&path);
            Some(url)
        }
        (None, None) => None,
    };
    let client_id = issues.required(&key("client_id"), &t.client_id).unwrap_or_default();
    let client_secret = client_secret(issues, name, t);
    let ca_file = issues.field(&key("ca_file"), &t.ca_file).map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            issues.push(key("ca_file"), format!("no such file {}", path.display()));
        }
    }
    let refresh_margin = issues.duration(&key("refresh_margin"), &t.refresh_margin, DEFAULT_REFRESH_MARGIN_SECS);
    let token_wait = issues.duration(&key("token_wait"), &t.token_wait, DEFAULT_TOKEN_WAIT_SECS);
    let connect_timeout = issues.duration(
        &key("connect_timeout"),
        &t.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT_SECS,
    );
    if connect_timeout.is_zero() {
        issues.push(key("connect_timeout"), "must be greater than zero");
    }
    let (pool_idle_timeout, pool_max_idle) = pool(issues, name, t);
    let max_concurrency = match issues.number(&key("max_concurrency"), &t.max_concurrency, DEFAULT_MAX_CONCURRENCY) {
        0 => {
            issues.push(key("max_concurrency"), "must be at least 1");
            1
        }
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let (cluster_max_concurrency, fallback_max_concurrency) = cluster_caps(issues, name, t, expected_replicas);
    let queue_timeout = issues.duration(&key("queue_timeout"), &t.queue_timeout, DEFAULT_QUEUE_TIMEOUT_SECS);
    let proxy_url = match issues.field(&key("proxy_url"), &t.proxy_url).map(|p| p.0.trim()) {
        None | Some("") => None,
        Some(text) => match Url::parse(text) {
            Ok(url) if url.scheme() == "http" && url.host_str().is_some() => Some(ProxyUrl(url)),
            Ok(_) => {
                issues.push(
                    key("proxy_url"),
                    "must be http://[user:password@]host:port (the tunnel to Zuora is TLS end to end)",
                );
                None
            }
            Err(e) => {
                issues.push(key("proxy_url"), e.to_string());
                None
            }
        },
    };
    if issues.errors() != before {
        return None;
    }
    Some(TenantSettings {
        name: name.to_string(),
        base_url: base_url?,
        token_url: token_url?,
        client_id,
        client_secret: client_secret?,
        ca_file,
        refresh_margin,
        token_wait,
        connect_timeout,
        pool_idle_timeout,
        pool_max_idle,
        max_concurrency,
        queue_timeout,
        proxy_url,
        cluster_max_concurrency,
        fallback_max_concurrency,
    })
}

/// How long an idle connection to Zuora is kept (more than zero), and how many are kept idle
/// per worker (0 to `MAX_POOL_MAX_IDLE`).
fn pool(issues: &mut Issues, name: &str, t: &RawTenant) -> (Duration, usize) {
    let key = |field: &str| format!("tenants.{name}.{field}");
    let idle_timeout = issues.duration(
        &key("pool_idle_timeout"),
        &t.pool_idle_timeout,
        DEFAULT_POOL_IDLE_TIMEOUT_SECS,
    );
    if idle_timeout.is_zero() {
        issues.push(
            key("pool_idle_timeout"),
            "must be greater than zero (pool_max_idle = 0 keeps no idle connection)",
        );
    }
    let max_idle = issues.number(&key("pool_max_idle"), &t.pool_max_idle, DEFAULT_POOL_MAX_IDLE);
    if max_idle > MAX_POOL_MAX_IDLE {
        issues.push(key("pool_max_idle"), format!("must be at most {MAX_POOL_MAX_IDLE}"));
    }
    let max_idle = usize::try_from(max_idle.min(MAX_POOL_MAX_IDLE)).unwrap_or(usize::MAX);
    (idle_timeout, max_idle)
}

/// The cluster-wide cap and the fallback share, each at least 1.
fn cluster_caps(issues: &mut Issues, name: &str, t: &RawTenant, expected_replicas: u64) -> (usize, usize) {
    let key = |field: &str| format!("tenants.{name}.{field}");
    let at_least_one = |issues: &mut Issues, field: &str, value: u64| match value {
        0 => {
            issues.push(key(field), "must be at least 1");
            1
        }
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let written = issues.number(
        &key("cluster_max_concurrency"),
        &t.cluster_max_concurrency,
        DEFAULT_CLUSTER_MAX_CONCURRENCY,
    );
    let cluster_max = at_least_one(issues, "cluster_max_concurrency", written);
    let fallback = match issues.field(&key("fallback_max_concurrency"), &t.fallback_max_concurrency) {
        Some(&n) => at_least_one(issues, "fallback_max_concurrency", n),
        None => crate::cluster::fallback_share(cluster_max, expected_replicas),
    };
    (cluster_max, fallback)
}

fn client_secret(issues: &mut Issues, name: &str, t: &RawTenant) -> Option<SecretSource> {
    let key = |field: &str| format!("tenants.{name}.{field}");
    let inline = issues.field(&key("client_secret"), &t.client_secret);
    let file = issues.field(&key("client_secret_file"), &t.client_secret_file);
    match (inline, file) {
        (Some(_), Some(_)) => {
            issues.push(
                key("client_secret"),
                "set client_secret or client_secret_file, not both",
            );
            None
        }
        (None, None) => {
            if matches!(t.client_secret, Field::Absent) && matches!(t.client_secret_file, Field::Absent) {
                issues.push(key("client_secret_file"), "required (or client_secret)");
            }
            None
        }
        (Some(s), None) if s.0.trim().is_empty() => {
            issues.push(key("client_secret"), "is empty");
            None
        }
        (Some(s), None) => Some(SecretSource::Inline(Secret::new(s.0.trim()))),
        (None, Some(path)) if path.trim().is_empty() => {
            issues.push(key("client_secret_file"), "is empty");
            None
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            secret_file_warning(issues, &key("client_secret_file"), &path);
            Some(SecretSource::File(path))
        }
    }
}

/// The file is read at every token fetch, and a mounted secret (Kubernetes) may appear a
/// little after start: a file that cannot be read now is worth a warning, not a refusal.
fn secret_file_warning(issues: &mut Issues, key: &str, path: &Path) {
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read ({e})"),
        Ok(meta) if !meta.is_file() => "is not a file".to_string(),
        Ok(_) => match std::fs::File::open(path) {
            Ok(_) => return,
            Err(e) => format!("cannot be read ({e})"),
        },
    };
    issues.warn(
        key,
        format!(
            "{} {problem}: token fetches fail until it can be read (a mounted secret may appear after start)",
            path.display()
        ),
    );
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{keys, GOOD};
    use crate::config::*;

    #[test]
    fn a_tenant_name_in_upper_case_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD.replace("[tenants.default]", "[tenants.EU]")).unwrap();
        let env = [(
            "ZUORA_PROXY__TENANTS__EU__CLIENT_ID".to_string(),
            "id-from-env".to_string(),
        )];
        let err = Config::load_with_env(&path, env).unwrap_err();
        let upper = err
            .issues
            .iter()
            .find(|i| i.key == "tenants.EU")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(upper.message.contains("lower case"), "{}", upper.message);
        assert!(
            upper.message.contains("ZUORA_PROXY__TENANTS__EU__CLIENT_ID"),
            "{}",
            upper.message
        );
        // Without the file's tenant the variable would have made a tenant of its own.
        assert!(keys(&err).contains(&"tenants.eu.base_url"), "{err}");
    }

    #[test]
    fn a_secret_file_that_cannot_be_read_yet_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-yet-mounted");
        let with_file = |path: &Path| {
            GOOD.replace(
                "client_secret = \"s3cr3t\"",
                &format!("client_secret_file = {:?}", path.display().to_string()),
            )
        };
        for path in [missing.as_path(), dir.path()] {
            let c = Config::from_toml(&with_file(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
            assert_eq!(c.warnings[0].key, "tenants.default.client_secret_file");
            assert!(
                c.warnings[0].message.contains(&path.display().to_string()),
                "{}",
                c.warnings[0]
            );
            assert_eq!(
                c.live.tenants["default"].client_secret,
                SecretSource::File(path.to_path_buf())
            );
        }
        let present = dir.path().join("secret");
        std::fs::write(&present, "s3cr3t\n").unwrap();
        let c = Config::from_toml(&with_file(&present)).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
