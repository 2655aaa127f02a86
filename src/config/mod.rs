//! Configuration: the `config` crate layers the TOML file and `ZUORA_PROXY__*` environment
//! variables into [`raw::RawConfig`]; [`Config::try_from`] validates that into typed settings,
//! reporting every bad key by its full name.

pub mod raw;
mod restart;
mod validate;

use crate::routes::{Route, Rule};
use crate::secret::SecretSource;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

pub use raw::RawConfig;

/// Prefix of environment variables that override file keys (`ZUORA_PROXY__SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "ZUORA_PROXY";
/// Environment variable naming the configuration file.
pub const CONFIG_PATH_ENV: &str = "ZUORA_PROXY_CONFIG";
/// Configuration file used when neither `--config` nor `ZUORA_PROXY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/zuora-auth-proxy.toml";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Owner and group may connect; nobody else.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_UPSTREAM_BODY_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// One serving thread: a sidecar shares its cores with the application it serves.
pub const DEFAULT_WORKERS: u64 = 1;
pub const DEFAULT_CALLER_TOKEN_ENDPOINT: bool = true;
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_READY_MIN_TTL_SECS: u64 = 60;
/// Zuora's own guidance refreshes about five minutes early.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 300;
pub const DEFAULT_TOKEN_WAIT_SECS: u64 = 5;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Zuora's edge closes idle connections sooner or later anyway.
pub const DEFAULT_POOL_IDLE_TIMEOUT_SECS: u64 = 90;
/// Idle connections kept per worker: above any concurrency a tenant is allowed by default.
pub const DEFAULT_POOL_MAX_IDLE: u64 = 512;
/// The most idle connections a pool may be told to keep.
pub const MAX_POOL_MAX_IDLE: u64 = 100_000;
/// Zuora's default per-tenant concurrency limit.
pub const DEFAULT_MAX_CONCURRENCY: u64 = 40;
/// With `[cluster]`, the same limit counted across every replica.
pub const DEFAULT_CLUSTER_MAX_CONCURRENCY: u64 = 40;
pub const DEFAULT_QUEUE_TIMEOUT_SECS: u64 = 10;

/// Validated configuration, in two parts: what is bound at start and what a reload swaps.
#[derive(Debug, Clone)]
pub struct Config {
    /// Read once at start (listeners, limits bound to connections, log). A reload that
    /// changes any of it keeps the running value and names the key that needs a restart.
    pub fixed: FixedSettings,
    /// Swapped by a reload for new requests; in-flight requests keep the one they started with.
    pub live: LiveSettings,
    /// Problems that do not stop the proxy but will hurt (a secret file not mounted yet, a
    /// readiness bar above a refresh margin), for `check-config` and the logs to show.
    pub warnings: Vec<ConfigIssue>,
}

/// The start-time part of the configuration.
#[derive(Debug, Clone)]
pub struct FixedSettings {
    pub listener: ListenerSettings,
    /// `None` when the admin listener is disabled.
    pub admin_listen: Option<SocketAddr>,
    pub log: LogSettings,
    /// `[cluster]`: the Redis the replicas coordinate through, connected once at start.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// `[tracing]`: sampling of new traces and the span export, set up once at start.
    pub tracing: TracingSettings,
}

/// How traces are sampled and where their spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Share of new traces that are sampled (a caller's trace keeps the caller's decision).
    pub sample_ratio: f64,
    /// `None`: no span is exported (nor made).
    pub export: Option<crate::trace::ExportSettings>,
}

/// The reloadable part of the configuration.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub requests: RequestLimits,
    /// `/readyz` needs every routable tenant's token valid at least this long.
    pub ready_min_ttl: Duration,
    pub tenants: BTreeMap<String, Arc<TenantSettings>>,
    pub routes: Vec<Arc<Route>>,
    pub rules: Vec<Arc<Rule>>,
}

/// The caller-facing listener: bound at start, never changed by a reload.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub listen: Listen,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Serving threads (`server.workers`), each with its own socket on `listen`.
    pub workers: usize,
    pub tls: Option<TlsSettings>,
}

/// Where callers connect: a TCP address, or a Unix socket (`unix:/path` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(UnixSocketSettings),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(unix) => write!(f, "unix:{}", unix.path.as_path().display()),
        }
    }
}

/// A Unix-socket listener: its path, and who may connect to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocketSettings {
    pub path: SocketPath,
    /// Permission bits of the socket file (connecting needs write permission).
    pub mode: u32,
    /// Group the socket file is given, resolved from `server.socket_group`.
    pub group: Option<u32>,
}

/// A Unix socket's path, held inline: an address (`sun_path`) has room for 107 bytes and a
/// NUL, so no longer path could be bound, and a fixed buffer keeps [`Listen`] `Copy` like
/// the socket address it stands beside.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SocketPath {
    len: u8,
    bytes: [u8; SocketPath::MAX_LEN],
}

impl SocketPath {
    /// The longest path a Unix socket address holds (Linux `sun_path`, less its NUL).
    pub const MAX_LEN: usize = 107;

    /// `None` when the path is empty, longer than [`SocketPath::MAX_LEN`] or holds a NUL.
    pub fn new(path: &Path) -> Option<SocketPath> {
        let raw = path.as_os_str().as_bytes();
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.contains(&0) {
            return None;
        }
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(SocketPath {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.bytes[..usize::from(self.len)]))
    }
}

impl fmt::Debug for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_path().fmt(f)
    }
}

/// Limits read per request, so a reload changes them for the next request.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub request_timeout: Duration,
    pub max_body_bytes: u64,
    /// Zuora's answer body must bring data at least this often; else it is cut.
    pub upstream_body_timeout: Duration,
    /// `POST /oauth/token` is answered by the proxy with a placeholder (route `caller-token`);
    /// off, that path is refused like any unlisted one.
    pub caller_token_endpoint: bool,
}

/// Settings of the caller-facing TLS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// One Zuora tenant: where it lives and the OAuth client that speaks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSettings {
    pub name: String,
    pub base_url: Url,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretSource,
    pub ca_file: Option<PathBuf>,
    pub refresh_margin: Duration,
    pub token_wait: Duration,
    pub connect_timeout: Duration,
    /// An idle connection to Zuora is closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per worker per host; 0 keeps none (a connection per request).
    pub pool_max_idle: usize,
    pub max_concurrency: usize,
    pub queue_timeout: Duration,
    /// Explicit egress proxy; `None` means the `HTTPS_PROXY` / `NO_PROXY` environment.
    pub proxy_url: Option<ProxyUrl>,
    /// With `[cluster]`: requests in flight to the tenant (per entity) across all replicas.
    pub cluster_max_concurrency: usize,
    /// With `[cluster]`: this replica's cap while Redis is unavailable.
    pub fallback_max_concurrency: usize,
}

/// An egress proxy URL, which may carry credentials: `Debug` and `Display` redact them.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(pub Url);

impl ProxyUrl {
    /// The URL with any password replaced, safe for output.
    pub fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("REDACTED"));
        }
        url.to_string()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// One problem found in the configuration, named by its full key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, so an operator fixes them all in one pass.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(f, "{n} configuration problem{}", if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            issues: vec![ConfigIssue {
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

impl Config {
    /// Loads `path`, applies `ZUORA_PROXY__*` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests never touch the real one).
    pub fn load_with_env(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let source = config::File::from(path).format(config::FileFormat::Toml);
        if !path.is_file() {
            return Err(ConfigError::single(
                path.display().to_string(),
                "configuration file not found",
            ));
        }
        Self::from_layers(source, env)
    }

    /// Unknown keys and invalid values are reported together.
    fn from_layers<S>(file: S, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let (raw, mut issues) = RawConfig::from_source(file, env)?;
        match (Config::try_from(raw), issues.is_empty()) {
            (Ok(config), true) => Ok(config),
            (Ok(_), false) => Err(ConfigError { issues }),
            (Err(invalid), _) => {
                issues.extend(invalid.issues);
                Err(ConfigError { issues })
            }
        }
    }

    /// Parses and validates TOML text with no environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_layers(
            config::File::from_str(text, config::FileFormat::Toml),
            std::iter::empty(),
        )
    }
}

impl RawConfig {
    /// Layers the file and the environment into the raw structure, with the unknown keys
    /// found on the way (each an issue). A value of the wrong type stays in its field for
    /// validation to report; only a file that is not TOML at all fails here.
    fn from_source<S>(
        file: S,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(RawConfig, Vec<ConfigIssue>), ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let prefix = format!("{ENV_PREFIX}__");
        let env: HashMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
        let layered = config::Config::builder()
            .add_source(file)
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    // Values stay strings ("0123" is a client id, not 123); typed fields parse them.
                    .try_parsing(false)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError::single("(file)", e.to_string()))?;
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(layered, |path| {
            unknown.push(ConfigIssue {
                key: validate::key_of(&path),
                message: "unknown key".into(),
            });
        })
        .map_err(|e| ConfigError::single("(file)", e.to_string()))?;
        Ok((raw, unknown))
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        validate::validate(raw)
    }
}

impl Config {
    /// The effective configuration as JSON, secrets redacted, for `check-config`.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        use serde_json::json;
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        let tenants: serde_json::Map<String, serde_json::Value> = self
            .live
            .tenants
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    json!({
                        "base_url": t.base_url.as_str(),
                        "token_url": t.token_url.as_str(),
                        "client_id": t.client_id,
                        "client_secret": t.client_secret.to_string(),
                        "ca_file": t.ca_file.as_ref().map(|p| p.display().to_string()),
                        "refresh_margin": secs(t.refresh_margin),
                        "token_wait": secs(t.token_wait),
                        "connect_timeout": secs(t.connect_timeout),
                        "pool_idle_timeout": secs(t.pool_idle_timeout),
                        "pool_max_idle": t.pool_max_idle,
                        "max_concurrency": t.max_concurrency,
                        "queue_timeout": secs(t.queue_timeout),
                        "proxy_url": t.proxy_url.as_ref().map(ProxyUrl::redacted),
                        "cluster_max_concurrency": t.cluster_max_concurrency,
                        "fallback_max_concurrency": t.fallback_max_concurrency,
                    }),
                )
            })
            .collect();
        json!({
            "server": {
                "listen": self.fixed.listener.listen.to_string(),
                "socket_mode": match self.fixed.listener.listen {
                    Listen::Unix(unix) => Some(format!("{:04o}", unix.mode)),
                    Listen::Tcp(_) => None,
                },
                "socket_group": match self.fixed.listener.listen {
                    Listen::Unix(unix) => unix.group,
                    Listen::Tcp(_) => None,
                },
                "request_timeout": secs(self.live.requests.request_timeout),
                "upstream_body_timeout": secs(self.live.requests.upstream_body_timeout),
                "max_body_bytes": self.live.requests.max_body_bytes,
                "caller_token_endpoint": self.live.requests.caller_token_endpoint,
                "shutdown_grace": secs(self.fixed.listener.shutdown_grace),
                "header_read_timeout": secs(self.fixed.listener.header_read_timeout),
                "max_header_bytes": self.fixed.listener.max_header_bytes,
                "idle_timeout": secs(self.fixed.listener.idle_timeout),
                "max_connections": self.fixed.listener.max_connections,
                "workers": self.fixed.listener.workers,
                "tls": self.fixed.listener.tls.as_ref().map(|t| json!({
                    "cert_file": t.cert_file.display().to_string(),
                    "key_file": t.key_file.display().to_string(),
                    "client_ca_file": t.client_ca_file.as_ref().map(|p| p.display().to_string()),
                    "handshake_timeout": secs(t.handshake_timeout),
                })),
            },
            "log": {
                "format": match self.fixed.log.format { LogFormat::Json => "json", LogFormat::Text => "text" },
                "level": self.fixed.log.level,
            },
            "admin": {
                "listen": self.fixed.admin_listen.map(|a| a.to_string()).unwrap_or_default(),
                "ready_min_ttl": secs(self.live.ready_min_ttl),
            },
            "cluster": self.fixed.cluster.as_ref().map(crate::cluster::ClusterSettings::to_json),
            "tracing": {
                "otlp_endpoint": self.fixed.tracing.export.as_ref().map(|e| e.endpoint.as_str()),
                "service_name": self.fixed.tracing.export.as_ref().map(|e| e.service_name.as_str()),
                "sample_ratio": self.fixed.tracing.sample_ratio,
                "queue_size": self.fixed.tracing.export.as_ref().map(|e| e.queue_size),
                "export_interval": self.fixed.tracing.export.as_ref().map(|e| secs(e.export_interval)),
            },
            "tenants": tenants,
            "routes": self.live.routes.iter().map(|r| json!({
                "name": r.name,
                "method": r.method.as_str(),
                "path": r.template.to_string(),
                "retry_attempts": r.retry.attempts,
                "retry_on": r.retry.describe(),
                "idempotent": r.retry.idempotent,
                "idempotency_key": r.idempotency_key.as_str(),
                "zuora_body_errors": r.zuora_body_errors,
                "track_id_from_trace": r.track_id_from_trace,
            })).collect::<Vec<_>>(),
            "rules": self.live.rules.iter().map(|r| json!({
                "name": r.name,
                "routes": r.routes,
                "when_client_cert_subject": r.when_client_cert_subject,
                "when_peer_uid": r.when_peer_uid,
                "when_peer_gid": r.when_peer_gid,
                "when_headers": r.when_headers.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
                "tenant": r.tenant,
                "entity_ids": r.entity_ids,
                "org_ids": r.org_ids,
                "track_id_prefix": r.track_id_prefix,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::secret::Secret;

    /// A valid file: one tenant, one route, no rules.
    pub(crate) const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [tenants.default]
        base_url = "https://rest.test.zuora.com"
        client_id = "id"
        client_secret = "s3cr3t"
        [[routes]]
        name = "abort-bulk-job"
        method = "POST"
        path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"
    "#;

    pub(crate) fn keys(err: &ConfigError) -> Vec<&str> {
        err.issues.iter().map(|i| i.key.as_str()).collect()
    }

    /// Loads `text`, which must be refused with a problem at each of the `wanted` keys (and
    /// maybe more); returns the error for what else the test checks.
    pub(crate) fn refused_at(text: &str, wanted: &[&str]) -> ConfigError {
        let err = Config::from_toml(text).unwrap_err();
        let found = keys(&err);
        for want in wanted {
            assert!(found.contains(want), "{want} missing from {found:?}");
        }
        err
    }

    #[test]
    fn unknown_keys_are_errors_with_full_names() {
        let text = format!("{GOOD}\n[admin]\nlisten = \"\"\nlisen = \"x\"\n[tenants.default.extra]\na = 1\n");
        let err = Config::from_toml(&text).unwrap_err();
        let keys = keys(&err);
        assert!(keys.contains(&"admin.lisen"), "{keys:?}");
        assert!(keys.contains(&"tenants.default.extra"), "{keys:?}");
        let text = format!("{GOOD}\n[[rules]]\nname = \"r\"\ntenant = \"default\"\nentity = []\n");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.issues[0].key, "rules.0.entity");
    }

    #[test]
    fn environment_overrides_file_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD).unwrap();
        let env = [
            (
                "ZUORA_PROXY__TENANTS__DEFAULT__CLIENT_ID".to_string(),
                "0123".to_string(),
            ),
            (
                "ZUORA_PROXY__TENANTS__DEFAULT__CLIENT_SECRET".to_string(),
                "1e3".to_string(),
            ),
            ("ZUORA_PROXY__SERVER__MAX_BODY_BYTES".to_string(), "4096".to_string()),
            (
                "ZUORA_PROXY__TENANTS__DEFAULT__MAX_CONCURRENCY".to_string(),
                "7".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load_with_env(&path, env).unwrap();
        // Secrets and ids that look like numbers stay exactly as written.
        assert_eq!(c.live.tenants["default"].client_id, "0123");
        assert_eq!(
            c.live.tenants["default"].client_secret,
            SecretSource::Inline(Secret::new("1e3"))
        );
        // Environment values are strings; numeric and boolean keys read them.
        assert_eq!(c.live.requests.max_body_bytes, 4096);
        assert_eq!(c.live.tenants["default"].max_concurrency, 7);
        let bad = [("ZUORA_PROXY__SERVER__LISTN".to_string(), "x".to_string())];
        let err = Config::load_with_env(&path, bad).unwrap_err();
        assert_eq!(err.issues[0].key, "server.listn");
        let bad = [
            ("ZUORA_PROXY__SERVER__MAX_BODY_BYTES".to_string(), "big".to_string()),
            ("ZUORA_PROXY__SERVER__IDLE_TIMEOUT".to_string(), "soon".to_string()),
        ];
        let err = Config::load_with_env(&path, bad).unwrap_err();
        assert_eq!(keys(&err), ["server.max_body_bytes", "server.idle_timeout"], "{err}");
    }

    #[test]
    fn booleans_and_numbers_are_read_from_text_as_the_environment_gives_them() {
        let text = GOOD.replace(
            "method = \"POST\"",
            "method = \"POST\"\nidempotent = \"true\"\nretry_attempts = \"2\"\nretry_on = [\"503\"]",
        );
        let c = Config::from_toml(&text).unwrap();
        assert!(c.live.routes[0].retry.idempotent);
        assert_eq!(c.live.routes[0].retry.attempts, 2);
    }

    #[test]
    fn redacted_output_has_no_secret() {
        let c = Config::from_toml(GOOD).unwrap();
        let json = c.to_redacted_json().to_string();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains("<redacted>"));
    }

    #[test]
    fn the_raw_configuration_does_not_show_secrets_in_debug() {
        let text = GOOD.replace(
            "client_id = \"id\"",
            "client_id = \"id\"\nproxy_url = \"http://u:pw0rd@proxy:3128\"",
        );
        let config = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .unwrap();
        let raw: RawConfig = config.try_deserialize().unwrap();
        let debug = format!("{raw:?}");
        assert!(debug.contains("rest.test.zuora.com"), "{debug}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("pw0rd"), "{debug}");
    }
}
