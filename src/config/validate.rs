//! Turns the raw configuration into typed settings, collecting every problem with its full
//! key instead of stopping at the first.

use super::raw::{RawConfig, RawRoute, RawRule, RawTenant};
use super::*;
use crate::routes::{PathTemplate, RetryPolicy, Route, Rule};
use crate::secret::Secret;
use crate::track_id;
use http::{HeaderName, HeaderValue, Method, StatusCode};

/// More retries than this only multiply load on a struggling Zuora.
const MAX_RETRY_ATTEMPTS: u32 = 5;

/// A `serde_ignored` path as a configuration key (`tenants.eu.base_ur`, `routes.0.nme`).
pub(super) fn key_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(key_of(parent), &index.to_string()),
        Path::Map { parent, key } => join(key_of(parent), key),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

fn join(parent: String, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default_secs: u64) -> Duration {
        match value {
            None => Duration::from_secs(default_secs),
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        key,
                        format!("invalid duration {text:?} ({e}); write e.g. \"30s\" or \"5m\""),
                    );
                    Duration::from_secs(default_secs)
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(
                    key,
                    format!("invalid socket address {value:?}; write e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }

    fn https_url(&mut self, key: &str, value: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(url) if url.scheme() != "https" => {
                self.push(key, "must be an https:// URL (credentials never travel in clear text)");
                None
            }
            Ok(url) if url.host_str().is_none() => {
                self.push(key, "URL has no host");
                None
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                self.push(key, "URL must not carry credentials");
                None
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                self.push(key, "URL must not have a query or fragment");
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                self.push(key, e.to_string());
                None
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut issues = Issues::default();
    let placeholder: SocketAddr = ([127, 0, 0, 1], 0).into();

    let server = {
        let s = &raw.server;
        let listen = issues
            .socket_addr("server.listen", s.listen.as_deref().unwrap_or(DEFAULT_LISTEN))
            .unwrap_or(placeholder);
        let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_header_bytes = s.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if max_header_bytes < 8192 {
            issues.push(
                "server.max_header_bytes",
                "must be at least 8192 (the HTTP parser's smallest buffer)",
            );
        }
        let requests = RequestLimits {
            request_timeout: issues.duration(
                "server.request_timeout",
                s.request_timeout.as_deref(),
                DEFAULT_REQUEST_TIMEOUT_SECS,
            ),
            max_body_bytes,
        };
        let listener = ListenerSettings {
            listen,
            shutdown_grace: issues.duration(
                "server.shutdown_grace",
                s.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE_SECS,
            ),
            header_read_timeout: issues.duration(
                "server.header_read_timeout",
                s.header_read_timeout.as_deref(),
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
            ),
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            idle_timeout: issues.duration(
                "server.idle_timeout",
                s.idle_timeout.as_deref(),
                DEFAULT_IDLE_TIMEOUT_SECS,
            ),
            max_connections: match s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) {
                0 => {
                    issues.push("server.max_connections", "must be at least 1");
                    1
                }
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            tls: s.tls.as_ref().and_then(|t| server_tls(&mut issues, t)),
        };
        (listener, requests)
    };
    let (listener, requests) = server;
    for (key, d) in [
        ("server.request_timeout", requests.request_timeout),
        ("server.header_read_timeout", listener.header_read_timeout),
        ("server.idle_timeout", listener.idle_timeout),
    ] {
        if d.is_zero() {
            issues.push(key, "must be greater than zero");
        }
    }

    let log = LogSettings {
        format: match raw.log.format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                issues.push(
                    "log.format",
                    format!("unknown format {other:?}; use \"json\" or \"text\""),
                );
                LogFormat::Json
            }
        },
        level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log.level) {
        issues.push("log.level", format!("invalid filter {:?}: {e}", log.level));
    }

    let admin_listen = match raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN).trim() {
        "" => None,
        addr => issues.socket_addr("admin.listen", addr),
    };
    let ready_min_ttl = issues.duration(
        "admin.ready_min_ttl",
        raw.admin.ready_min_ttl.as_deref(),
        DEFAULT_READY_MIN_TTL_SECS,
    );

    let mut tenants = BTreeMap::new();
    if raw.tenants.is_empty() {
        issues.push("tenants", "at least one tenant is required");
    }
    for (name, t) in &raw.tenants {
        if let Some(tenant) = tenant(&mut issues, name, t) {
            tenants.insert(name.clone(), Arc::new(tenant));
        }
    }

    let mut routes: Vec<Arc<Route>> = Vec::new();
    if raw.routes.is_empty() {
        issues.push(
            "routes",
            "at least one route is required: nothing else is ever forwarded",
        );
    }
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = route(&mut issues, i, r) {
            if routes.iter().any(|other| other.name == route.name) {
                issues.push(
                    format!("routes.{i}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            routes.push(Arc::new(route));
        }
    }

    let mut rules: Vec<Arc<Rule>> = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        if let Some(rule) = rule(&mut issues, i, r, &raw) {
            rules.push(Arc::new(rule));
        }
    }
    if raw.rules.is_empty() {
        // With one tenant and no rules, every allowed route goes to that tenant.
        match raw.tenants.keys().collect::<Vec<_>>().as_slice() {
            [only] => rules.push(Arc::new(Rule {
                name: "default".into(),
                routes: None,
                when_headers: Vec::new(),
                when_client_cert_subject: None,
                tenant: (*only).clone(),
                entity_ids: Vec::new(),
                org_ids: Vec::new(),
                track_id_prefix: None,
                entity_header: None,
                org_header: None,
            })),
            [] => {}
            _ => issues.push(
                "rules",
                "with more than one tenant, rules must say which tenant each request goes to",
            ),
        }
    }

    if issues.0.is_empty() {
        Ok(Config {
            fixed: FixedSettings {
                listener,
                admin_listen,
                log,
            },
            live: LiveSettings {
                requests,
                ready_min_ttl,
                tenants,
                routes,
                rules,
            },
        })
    } else {
        Err(ConfigError { issues: issues.0 })
    }
}

fn server_tls(issues: &mut Issues, t: &super::raw::RawServerTls) -> Option<TlsSettings> {
    let before = issues.0.len();
    let mut file = |key: &str, value: &Option<String>, required: bool| -> Option<PathBuf> {
        match value {
            None if required => {
                issues.push(key, "required when [server.tls] is set");
                None
            }
            None => None,
            Some(path) if !Path::new(path).is_file() => {
                issues.push(key, format!("no such file {path}"));
                None
            }
            Some(path) => Some(PathBuf::from(path)),
        }
    };
    let cert_file = file("server.tls.cert_file", &t.cert_file, true);
    let key_file = file("server.tls.key_file", &t.key_file, true);
    let client_ca_file = file("server.tls.client_ca_file", &t.client_ca_file, false);
    let handshake_timeout = issues.duration(
        "server.tls.handshake_timeout",
        t.handshake_timeout.as_deref(),
        DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
    );
    if issues.0.len() != before {
        return None;
    }
    Some(TlsSettings {
        cert_file: cert_file?,
        key_file: key_file?,
        client_ca_file,
        handshake_timeout,
    })
}

fn tenant(issues: &mut Issues, name: &str, t: &RawTenant) -> Option<TenantSettings> {
    let key = |field: &str| format!("tenants.{name}.{field}");
    let before = issues.0.len();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        issues.push(
            format!("tenants.{name}"),
            "tenant names use letters, digits, '-' and '_'",
        );
    }
    let base_url = match t.base_url.as_deref() {
        None => {
            issues.push(key("base_url"), "required");
            None
        }
        Some(text) => issues.https_url(&key("base_url"), text),
    };
    let token_url = match (t.token_url.as_deref(), &base_url) {
        (Some(text), _) => issues.https_url(&key("token_url"), text),
        (None, Some(base)) => {
            let mut url = base.clone();
            let path = format!("{}/oauth/token", base.path().trim_end_matches('/'));
            url.set_path(&path);
            Some(url)
        }
        (None, None) => None,
    };
    let client_id = match t.client_id.as_deref().map(str::trim) {
        None | Some("") => {
            issues.push(key("client_id"), "required");
            String::new()
        }
        Some(id) => id.to_string(),
    };
    let client_secret = match (&t.client_secret, &t.client_secret_file) {
        (Some(_), Some(_)) => {
            issues.push(
                key("client_secret"),
                "set client_secret or client_secret_file, not both",
            );
            None
        }
        (None, None) => {
            issues.push(key("client_secret_file"), "required (or client_secret)");
            None
        }
        (Some(s), None) if s.trim().is_empty() => {
            issues.push(key("client_secret"), "is empty");
            None
        }
        (Some(s), None) => Some(SecretSource::Inline(Secret::new(s.trim()))),
        (None, Some(path)) if path.trim().is_empty() => {
            issues.push(key("client_secret_file"), "is empty");
            None
        }
        (None, Some(path)) => Some(SecretSource::File(PathBuf::from(path))),
    };
    let ca_file = t.ca_file.as_ref().map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            issues.push(key("ca_file"), format!("no such file {}", path.display()));
        }
    }
    let refresh_margin = issues.duration(
        &key("refresh_margin"),
        t.refresh_margin.as_deref(),
        DEFAULT_REFRESH_MARGIN_SECS,
    );
    let token_wait = issues.duration(&key("token_wait"), t.token_wait.as_deref(), DEFAULT_TOKEN_WAIT_SECS);
    let connect_timeout = issues.duration(
        &key("connect_timeout"),
        t.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT_SECS,
    );
    if connect_timeout.is_zero() {
        issues.push(key("connect_timeout"), "must be greater than zero");
    }
    let max_concurrency = match t.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY) {
        0 => {
            issues.push(key("max_concurrency"), "must be at least 1");
            1
        }
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let queue_timeout = issues.duration(
        &key("queue_timeout"),
        t.queue_timeout.as_deref(),
        DEFAULT_QUEUE_TIMEOUT_SECS,
    );
    let proxy_url = match t.proxy_url.as_deref().map(str::trim) {
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
    if issues.0.len() != before {
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
        max_concurrency,
        queue_timeout,
        proxy_url,
    })
}

fn route(issues: &mut Issues, i: usize, r: &RawRoute) -> Option<Route> {
    let key = |field: &str| format!("routes.{i}.{field}");
    let name = required(issues, &key("name"), r.name.as_deref());
    let method = match r.method.as_deref() {
        None => {
            issues.push(key("method"), "required");
            None
        }
        Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(Method::CONNECT) | Ok(Method::TRACE) => {
                issues.push(key("method"), "CONNECT and TRACE are never forwarded");
                None
            }
            Ok(method) => Some(method),
            Err(_) => {
                issues.push(key("method"), format!("invalid method {m:?}"));
                None
            }
        },
    };
    let template = match r.path.as_deref() {
        None => {
            issues.push(key("path"), "required");
            None
        }
        Some(p) => PathTemplate::parse(p)
            .map_err(|e| issues.push(key("path"), format!("{p:?}: {e}")))
            .ok(),
    };
    let mut retry = RetryPolicy {
        attempts: r.retry_attempts.unwrap_or(0),
        idempotent: r.idempotent.unwrap_or(false),
        ..RetryPolicy::default()
    };
    for (j, on) in r.retry_on.iter().flatten().enumerate() {
        match on.trim() {
            "connect" => retry.on_connect = true,
            code @ ("429" | "502" | "503" | "504") => retry
                .on_status
                .push(StatusCode::from_bytes(code.as_bytes()).expect("listed codes")),
            other => issues.push(
                format!("routes.{i}.retry_on.{j}"),
                format!("{other:?} is not one of \"429\", \"502\", \"503\", \"504\", \"connect\""),
            ),
        }
    }
    if retry.attempts > MAX_RETRY_ATTEMPTS {
        issues.push(key("retry_attempts"), format!("at most {MAX_RETRY_ATTEMPTS}"));
    }
    if retry.attempts > 0 && retry.on_status.is_empty() && !retry.on_connect {
        issues.push(
            key("retry_on"),
            "retry_attempts is set but retry_on names nothing to retry",
        );
    }
    Some(Route {
        name: name?,
        method: method?,
        template: template?,
        retry,
    })
}

fn rule(issues: &mut Issues, i: usize, r: &RawRule, raw: &RawConfig) -> Option<Rule> {
    let key = |field: &str| format!("rules.{i}.{field}");
    let before = issues.0.len();
    let name = required(issues, &key("name"), r.name.as_deref());
    let tenant = required(issues, &key("tenant"), r.tenant.as_deref());
    if let Some(t) = &tenant {
        if !raw.tenants.contains_key(t) {
            issues.push(key("tenant"), format!("no tenant named {t:?}"));
        }
    }
    if let Some(routes) = &r.routes {
        for (j, route) in routes.iter().enumerate() {
            if !raw.routes.iter().any(|x| x.name.as_deref() == Some(route)) {
                issues.push(format!("rules.{i}.routes.{j}"), format!("no route named {route:?}"));
            }
        }
    }
    let mut when_headers = Vec::new();
    for (header, value) in r.when_headers.iter().flatten() {
        match HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) {
            Ok(name) => when_headers.push((name, value.clone())),
            Err(_) => issues.push(format!("rules.{i}.when_headers.{header}"), "invalid header name"),
        }
    }
    let entity_ids = r.entity_ids.clone().unwrap_or_default();
    for (j, id) in entity_ids.iter().enumerate() {
        if uuid::Uuid::try_parse(id).is_err() || id.len() != 36 {
            issues.push(
                format!("rules.{i}.entity_ids.{j}"),
                format!("{id:?} is not an entity id (a UUID)"),
            );
        }
    }
    let org_ids = r.org_ids.clone().unwrap_or_default();
    for (j, id) in org_ids.iter().enumerate() {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            issues.push(format!("rules.{i}.org_ids.{j}"), format!("{id:?} is not an org id"));
        }
    }
    if r.when_client_cert_subject.is_some() && raw.server.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
        issues.push(
            key("when_client_cert_subject"),
            "needs [server.tls] with client_ca_file: plain-HTTP callers have no certificate",
        );
    }
    if let Some(prefix) = &r.track_id_prefix {
        if !track_id::is_valid_prefix(prefix) {
            issues.push(
                key("track_id_prefix"),
                format!(
                    "at most {} visible US-ASCII characters, none of : ; \" '",
                    track_id::MAX_PREFIX_LEN
                ),
            );
        }
    }
    if issues.0.len() != before {
        return None;
    }
    let header =
        |ids: &[String]| (!ids.is_empty()).then(|| HeaderValue::try_from(ids.join(",")).expect("ids were checked"));
    Some(Rule {
        name: name?,
        routes: r.routes.clone(),
        when_headers,
        when_client_cert_subject: r.when_client_cert_subject.clone(),
        tenant: tenant?,
        entity_header: header(&entity_ids),
        org_header: header(&org_ids),
        entity_ids,
        org_ids,
        track_id_prefix: r.track_id_prefix.clone(),
    })
}

fn required(issues: &mut Issues, key: &str, value: Option<&str>) -> Option<String> {
    match value.map(str::trim) {
        None | Some("") => {
            issues.push(key, "required");
            None
        }
        Some(v) => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
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

    #[test]
    fn a_minimal_file_gets_defaults_and_an_implicit_rule() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(
            c.live.requests.request_timeout,
            Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS)
        );
        assert_eq!(c.live.requests.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let t = &c.live.tenants["default"];
        assert_eq!(t.token_url.as_str(), "https://rest.test.zuora.com/oauth/token");
        assert_eq!(t.refresh_margin, Duration::from_secs(DEFAULT_REFRESH_MARGIN_SECS));
        assert_eq!(c.live.rules.len(), 1);
        assert_eq!(c.live.rules[0].tenant, "default");
        assert_eq!(c.fixed.admin_listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));
    }

    #[test]
    fn every_bad_key_is_reported_by_name() {
        let text = r#"
            [server]
            listen = "nowhere"
            request_timeout = "soon"
            [log]
            format = "xml"
            [tenants.eu]
            base_url = "rest.eu.zuora.com"
            client_secret = "x"
            client_secret_file = "/x"
            [tenants.us]
            base_url = "http://rest.zuora.com"
            client_id = "id"
            client_secret = "x"
            refresh_margin = "5 parsecs"
            [[routes]]
            name = "abort"
            method = "POST"
            path = "/bulk-data/bulk-jobs/{id:int}/aborts"
            [[rules]]
            name = "r"
            tenant = "nope"
            routes = ["missing"]
            entity_ids = ["not-a-uuid"]
            track_id_prefix = "a:b"
        "#;
        let err = Config::from_toml(text).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for want in [
            "server.listen",
            "server.request_timeout",
            "log.format",
            "tenants.eu.base_url",
            "tenants.eu.client_id",
            "tenants.eu.client_secret",
            "tenants.us.base_url",
            "tenants.us.refresh_margin",
            "routes.0.path",
            "rules.0.tenant",
            "rules.0.routes.0",
            "rules.0.entity_ids.0",
            "rules.0.track_id_prefix",
        ] {
            assert!(keys.contains(&want), "{want} missing from {keys:?}");
        }
        let eu = err.issues.iter().find(|i| i.key == "tenants.eu.base_url").unwrap();
        assert_eq!(eu.message, "relative URL without a base");
        assert!(!err.to_string().contains("x\""), "secrets stay out of errors");
    }

    #[test]
    fn unknown_keys_are_errors_with_full_names() {
        let text = format!("{GOOD}\n[admin]\nlisten = \"\"\nlisen = \"x\"\n[tenants.default.extra]\na = 1\n");
        let err = Config::from_toml(&text).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"admin.lisen"), "{keys:?}");
        assert!(keys.contains(&"tenants.default.extra"), "{keys:?}");
        let text = format!("{GOOD}\n[[rules]]\nname = \"r\"\ntenant = \"default\"\nentity = []\n");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.issues[0].key, "rules.0.entity");
    }

    #[test]
    fn environment_overrides_file_keys() {
        let dir = std::env::temp_dir().join(format!("zap-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
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
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load_with_env(&path, env).unwrap();
        // Secrets and ids that look like numbers stay exactly as written.
        assert_eq!(c.live.tenants["default"].client_id, "0123");
        assert_eq!(
            c.live.tenants["default"].client_secret,
            SecretSource::Inline(Secret::new("1e3"))
        );
        assert_eq!(c.live.requests.max_body_bytes, 4096);
        let bad = [("ZUORA_PROXY__SERVER__LISTN".to_string(), "x".to_string())];
        let err = Config::load_with_env(&path, bad).unwrap_err();
        assert_eq!(err.issues[0].key, "server.listn");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn several_tenants_need_rules() {
        let text = GOOD.replace("[[routes]]", "[tenants.eu]\nbase_url = \"https://rest.eu.zuora.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\n[[routes]]");
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.issues[0].key, "rules");
    }

    #[test]
    fn redacted_output_has_no_secret() {
        let c = Config::from_toml(GOOD).unwrap();
        let json = c.to_redacted_json().to_string();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains("<redacted>"));
    }
}
