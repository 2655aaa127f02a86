//! The configuration as written: a serde mirror of the TOML file and its environment
//! overrides, before any validation. Every field is optional here so that validation can
//! apply defaults and report every problem at once, each by its full key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawConfig {
    /// The caller-facing listener.
    #[serde(default)]
    pub server: RawServer,
    /// Log output.
    #[serde(default)]
    pub log: RawLog,
    /// The admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Zuora tenants by name: base URL plus OAuth client.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// The allowlist of method + path templates that may be forwarded.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Routing rules, first match wins: they choose tenant, entity/org headers, track-id prefix.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawServer {
    /// Socket address for plain-HTTP callers, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Deadline for a whole request: token wait plus upstream until response headers.
    pub request_timeout: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Option<String>,
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Option<String>,
    /// Largest request head (request line plus headers) accepted, in bytes.
    pub max_header_bytes: Option<u64>,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Option<String>,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: Option<u64>,
    /// Serve HTTPS (and optionally require client certificates) instead of plain HTTP.
    pub tls: Option<RawServerTls>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawServerTls {
    /// PEM certificate chain presented to callers; re-read when it changes.
    pub cert_file: Option<String>,
    /// PEM private key of that certificate.
    pub key_file: Option<String>,
    /// PEM CA certificates: when set, every caller must present a certificate signed by one.
    pub client_ca_file: Option<String>,
    /// A caller must finish the TLS handshake within this time.
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawLog {
    /// `json` or `text`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `zuora_auth_proxy=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawAdmin {
    /// Socket address of the admin listener; empty disables it.
    pub listen: Option<String>,
    /// `/readyz` needs every routable tenant to hold a token valid at least this long.
    pub ready_min_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawTenant {
    /// Zuora REST base URL, e.g. `https://rest.test.zuora.com`.
    pub base_url: Option<String>,
    /// OAuth token endpoint; default `base_url` + `/oauth/token`.
    pub token_url: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// OAuth client secret inline (prefer `client_secret_file`).
    pub client_secret: Option<String>,
    /// File holding the OAuth client secret; surrounding whitespace is trimmed.
    pub client_secret_file: Option<String>,
    /// PEM file of extra trust roots, added to the built-in ones.
    pub ca_file: Option<String>,
    /// Refresh the token this long before it expires.
    pub refresh_margin: Option<String>,
    /// How long a request may wait for a token when none is valid.
    pub token_wait: Option<String>,
    /// TCP connect timeout toward Zuora.
    pub connect_timeout: Option<String>,
    /// Requests in flight to this tenant at once (Zuora's default concurrency limit is 40).
    pub max_concurrency: Option<u64>,
    /// How long a request may queue for a concurrency slot before a 503 `overloaded`.
    pub queue_timeout: Option<String>,
    /// `http://[user:password@]host:port` of a corporate proxy to tunnel through (CONNECT).
    /// Default: the `HTTPS_PROXY` / `NO_PROXY` environment.
    pub proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawRoute {
    /// Name used in rules, logs and metrics.
    pub name: Option<String>,
    /// HTTP method, e.g. `POST`.
    pub method: Option<String>,
    /// Path template with `{name}` or `{name:uuid}` placeholders.
    pub path: Option<String>,
    /// Retries after the first attempt (default 0).
    pub retry_attempts: Option<u32>,
    /// What to retry on: any of "429", "502", "503", "504", "connect".
    pub retry_on: Option<Vec<String>>,
    /// The call is safe to repeat even though its method is not idempotent.
    pub idempotent: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawRule {
    /// Name used in logs.
    pub name: Option<String>,
    /// Route names this rule applies to; absent means every route.
    pub routes: Option<Vec<String>>,
    /// Request headers that must all be present with exactly these values.
    pub when_headers: Option<BTreeMap<String, String>>,
    /// The caller's client certificate (TLS listener with client_ca_file) must have this
    /// common name, or this whole subject in RFC 4514 form (`CN=billing,O=Acme`).
    pub when_client_cert_subject: Option<String>,
    /// Tenant the request is sent to.
    pub tenant: Option<String>,
    /// Sent as `Zuora-Entity-Ids`.
    pub entity_ids: Option<Vec<String>>,
    /// Sent comma-joined as `Zuora-Org-Ids`.
    pub org_ids: Option<Vec<String>>,
    /// Generated track ids look like `<prefix>-<32 hex>`.
    pub track_id_prefix: Option<String>,
}
