//! Validation: turns the raw configuration into typed settings, collecting every problem with
//! its full key instead of stopping at the first. One file per section; this one holds the
//! collector and the parsers the sections share.

mod cluster;
mod route;
mod rule;
mod server;
mod tenant;
mod tracing;

use super::raw::{Field, RawAdmin, RawConfig, RawLog, RawServer};
use super::{Config, ConfigError, ConfigIssue, FixedSettings, LiveSettings};
use std::net::SocketAddr;
use std::time::Duration;
use url::Url;

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

/// Problems found so far: errors refuse the configuration, warnings only inform.
#[derive(Default)]
struct Issues {
    errors: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
}

fn issue(key: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        key: key.into(),
        message: message.into(),
    }
}

impl Issues {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(issue(key, message));
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(issue(key, message));
    }

    /// Errors so far, so a section can tell whether it added any.
    fn errors(&self) -> usize {
        self.errors.len()
    }

    /// The value of `field` when it was set; a value of the wrong type is an error at `key`.
    fn field<'a, T>(&mut self, key: &str, field: &'a Field<T>) -> Option<&'a T> {
        if let Field::Invalid(why) = field {
            self.push(key, why.clone());
        }
        field.get()
    }

    /// A copyable value, or `default` when it is absent or unreadable.
    fn number<T: Copy>(&mut self, key: &str, field: &Field<T>, default: T) -> T {
        self.field(key, field).copied().unwrap_or(default)
    }

    fn duration(&mut self, key: &str, field: &Field<String>, default_secs: u64) -> Duration {
        match self.field(key, field) {
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
        self.url(
            key,
            value,
            "https",
            "must be an https:// URL (credentials never travel in clear text)",
        )
    }

    /// A URL of `scheme` with a host, no credentials, no query or fragment; `wrong_scheme`
    /// says why another scheme is refused.
    fn url(&mut self, key: &str, value: &str, scheme: &str, wrong_scheme: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(url) if url.scheme() != scheme => {
                self.push(key, wrong_scheme);
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

    /// As [`Issues::field`], and an absent value is an error too.
    fn present<'a, T>(&mut self, key: &str, field: &'a Field<T>) -> Option<&'a T> {
        if matches!(field, Field::Absent) {
            self.push(key, "required");
        }
        self.field(key, field)
    }

    /// A non-blank string, trimmed.
    fn required(&mut self, key: &str, field: &Field<String>) -> Option<String> {
        match self.present(key, field).map(|v| v.trim()) {
            Some("") => {
                self.push(key, "required");
                None
            }
            v => v.map(str::to_string),
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut issues = Issues::default();
    let (no_server, no_log, no_admin) = (RawServer::default(), RawLog::default(), RawAdmin::default());

    let raw_server = issues.field("server", &raw.server).unwrap_or(&no_server);
    let (listener, requests) = server::server(&mut issues, raw_server);
    let raw_log = issues.field("log", &raw.log).unwrap_or(&no_log);
    let log = server::log(&mut issues, raw_log);
    let raw_admin = issues.field("admin", &raw.admin).unwrap_or(&no_admin);
    let (admin_listen, ready_min_ttl) = server::admin(&mut issues, raw_admin, listener.listen);

    let cluster = cluster::cluster(&mut issues, &raw.cluster);
    let tracing = tracing::tracing(&mut issues, &raw.tracing);
    let expected_replicas = cluster.as_ref().map_or(1, |c| c.expected_replicas);
    let tenants = tenant::tenants(&mut issues, &raw.tenants, expected_replicas);
    let routes = route::routes(&mut issues, &raw.routes);
    let known = rule::Known::of(&raw, raw_server);
    let rules = rule::rules(&mut issues, &raw.rules, &known);
    server::readiness(&mut issues, ready_min_ttl, &tenants, &rules);

    if !issues.errors.is_empty() {
        return Err(ConfigError { issues: issues.errors });
    }
    Ok(Config {
        fixed: FixedSettings {
            listener,
            admin_listen,
            log,
            cluster,
            tracing,
        },
        live: LiveSettings {
            requests,
            ready_min_ttl,
            tenants,
            routes,
            rules,
        },
        warnings: issues.warnings,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{keys, refused_at, GOOD};
    use crate::config::*;

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
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
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
        let err = refused_at(
            text,
            &[
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
            ],
        );
        let eu = err.issues.iter().find(|i| i.key == "tenants.eu.base_url").unwrap();
        assert_eq!(eu.message, "relative URL without a base");
        assert!(!err.to_string().contains("x\""), "secrets stay out of errors");
    }

    #[test]
    fn type_errors_are_reported_by_key_with_every_other_problem() {
        let text =
            GOOD.replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_body_bytes = \"big\"\nmax_connections = [1]\ntls = 5",
            )
            .replace(
                "client_id = \"id\"",
                "client_id = \"id\"\nmax_concurrency = -3\nca_file = {}",
            )
            .replace(
                "method = \"POST\"",
                "method = \"POST\"\nidempotent = \"perhaps\"\nretry_on = \"429\"",
            ) + "\n[log]\nformat = \"xml\"\n[[rules]]\nname = \"r\"\ntenant = []\n";
        let err = refused_at(
            &text,
            &[
                "server.max_body_bytes",
                "server.max_connections",
                "server.tls",
                "tenants.default.max_concurrency",
                "tenants.default.ca_file",
                "routes.0.idempotent",
                "routes.0.retry_on",
                "log.format",
                "rules.0.tenant",
            ],
        );
        let keys = keys(&err);
        assert!(!keys.contains(&"(file)"), "{keys:?}");
        let body = err.issues.iter().find(|i| i.key == "server.max_body_bytes").unwrap();
        assert!(body.message.contains("\"big\""), "{}", body.message);
    }

    #[test]
    fn a_whole_section_of_the_wrong_type_is_reported_by_its_key() {
        let err = Config::from_toml("server = 1\nlog = \"x\"\ntenants = []\nroutes = {}\nrules = 2\n").unwrap_err();
        let keys = keys(&err);
        for want in ["server", "log", "tenants", "routes", "rules"] {
            assert!(keys.contains(&want), "{want} missing from {keys:?}");
        }
        // A section that could not be read is one problem, not also a missing section.
        assert_eq!(keys.iter().filter(|k| **k == "tenants").count(), 1, "{keys:?}");
    }
}
