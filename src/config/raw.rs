//! The configuration as written: a serde mirror of the TOML file and its environment
//! overrides, before any validation. Every field is a [`Field`], so that a missing value gets
//! its default and a value of the wrong type is reported by its full key together with every
//! other problem, instead of aborting the load at the first one.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

/// One key as written: absent, a value, or the reason it could not be read as `T`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Set(T),
    /// The value has the wrong type, e.g. `max_body_bytes = "big"`; the text says why.
    Invalid(String),
}

impl<T> Field<T> {
    /// The value when it was set and readable; validation reports the other cases.
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Set(value) => Some(value),
            Field::Absent | Field::Invalid(_) => None,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The layered configuration is an in-memory tree: a failed value has already been taken
        // out of its parent, so the parent carries on with the next key. The message never
        // shows a string that was read successfully, so an inline secret cannot appear in it.
        Ok(match T::deserialize(deserializer) {
            Ok(value) => Field::Set(value),
            Err(e) => Field::Invalid(e.to_string()),
        })
    }
}

/// A string that may hold a credential (an inline secret, a proxy URL with a password):
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of sections")]
pub struct RawConfig {
    /// The caller-facing listener.
    pub server: Field<RawServer>,
    /// Log output.
    pub log: Field<RawLog>,
    /// The admin listener (health, readiness, metrics).
    pub admin: Field<RawAdmin>,
    /// Zuora tenants by name: base URL plus OAuth client.
    pub tenants: Field<BTreeMap<String, Field<RawTenant>>>,
    /// The allowlist of method + path templates that may be forwarded.
    pub routes: Field<Vec<Field<RawRoute>>>,
    /// Routing rules, first match wins: they choose tenant, entity/org headers, track-id prefix.
    pub rules: Field<Vec<Field<RawRule>>>,
    /// Replicas coordinated through Redis/Valkey; absent means every replica acts alone.
    pub cluster: Field<crate::cluster::RawCluster>,
    /// Trace context and the optional OTLP export of spans.
    pub tracing: Field<RawTracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([server])")]
pub struct RawServer {
    /// Socket address for callers, e.g. `127.0.0.1:8080`, or `unix:/run/zuora-auth-proxy.sock`.
    pub listen: Field<String>,
    /// Octal permission bits of a Unix socket (`unix:` listen only), e.g. `"0660"`.
    pub socket_mode: Field<String>,
    /// Group (name or gid) a Unix socket is given (`unix:` listen only).
    pub socket_group: Field<GroupRef>,
    /// Deadline for a whole request: token wait plus upstream until response headers.
    pub request_timeout: Field<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Field<u64>,
    /// Longest pause between two reads of Zuora's answer body before it is cut.
    pub upstream_body_timeout: Field<String>,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Field<String>,
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Field<String>,
    /// Largest request head (request line plus headers) accepted, in bytes.
    pub max_header_bytes: Field<u64>,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Field<String>,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: Field<u64>,
    /// Threads serving callers, each with its own listening socket and runtime.
    pub workers: Field<u64>,
    /// Answer `POST /oauth/token` locally with a placeholder token (route `caller-token`), so
    /// that Zuora's SDKs work unchanged; default true.
    pub caller_token_endpoint: Field<bool>,
    /// Serve HTTPS (and optionally require client certificates) instead of plain HTTP.
    pub tls: Field<RawServerTls>,
}

/// A group by name or by number; from the environment a number arrives as text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a group name or gid")]
pub enum GroupRef {
    Id(u32),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([server.tls])")]
pub struct RawServerTls {
    /// PEM certificate chain presented to callers; re-read when it changes.
    pub cert_file: Field<String>,
    /// PEM private key of that certificate.
    pub key_file: Field<String>,
    /// PEM CA certificates: when set, every caller must present a certificate signed by one.
    pub client_ca_file: Field<String>,
    /// A caller must finish the TLS handshake within this time.
    pub handshake_timeout: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([log])")]
pub struct RawLog {
    /// `json` or `text`.
    pub format: Field<String>,
    /// A level (`info`) or `target=level` directives (`warn,access=info`); `RUST_LOG` wins when set.
    pub level: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([tracing])")]
pub struct RawTracing {
    /// `http://` URL of an OTLP/HTTP (protobuf) collector's traces endpoint, e.g.
    /// `http://127.0.0.1:4318/v1/traces`; absent or empty: no export.
    pub otlp_endpoint: Field<String>,
    /// `service.name` of the exported spans.
    pub service_name: Field<String>,
    /// Share of new traces (those the caller did not start) that are sampled, 0 to 1.
    pub sample_ratio: Field<f64>,
    /// Finished spans waiting for export, at most; more are dropped and counted.
    pub queue_size: Field<u64>,
    /// How long a finished span may wait before its batch is sent.
    pub export_interval: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([admin])")]
pub struct RawAdmin {
    /// Socket address of the admin listener; empty disables it.
    pub listen: Field<String>,
    /// `/readyz` needs every routable tenant to hold a token valid at least this long.
    pub ready_min_ttl: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([tenants.<name>])")]
pub struct RawTenant {
    /// Zuora REST base URL, e.g. `https://rest.test.zuora.com`.
    pub base_url: Field<String>,
    /// OAuth token endpoint; default `base_url` + `/oauth/token`.
    pub token_url: Field<String>,
    /// OAuth client id.
    pub client_id: Field<String>,
    /// OAuth client secret inline (prefer `client_secret_file`).
    pub client_secret: Field<Redacted>,
    /// File holding the OAuth client secret; surrounding whitespace is trimmed.
    pub client_secret_file: Field<String>,
    /// PEM file of extra trust roots, added to the built-in ones.
    pub ca_file: Field<String>,
    /// Refresh the token this long before it expires.
    pub refresh_margin: Field<String>,
    /// How long a request may wait for a token when none is valid.
    pub token_wait: Field<String>,
    /// TCP connect timeout toward Zuora.
    pub connect_timeout: Field<String>,
    /// An idle connection to Zuora is closed after this long.
    pub pool_idle_timeout: Field<String>,
    /// Idle connections to Zuora kept per worker (per host); more are closed.
    pub pool_max_idle: Field<u64>,
    /// Requests in flight to this tenant at once (Zuora's default concurrency limit is 40).
    pub max_concurrency: Field<u64>,
    /// How long a request may queue for a concurrency slot before a 503 `overloaded`.
    pub queue_timeout: Field<String>,
    /// `http://[user:password@]host:port` of a corporate proxy to tunnel through (CONNECT).
    /// Default: the `HTTPS_PROXY` / `NO_PROXY` environment.
    pub proxy_url: Field<Redacted>,
    /// With `[cluster]`: requests in flight to this tenant across all replicas.
    pub cluster_max_concurrency: Field<u64>,
    /// With `[cluster]`: this replica's cap while Redis is unavailable; default
    /// `ceil(cluster_max_concurrency / cluster.expected_replicas)`.
    pub fallback_max_concurrency: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([[routes]])")]
pub struct RawRoute {
    /// Name used in rules, logs and metrics.
    pub name: Field<String>,
    /// HTTP method, e.g. `POST`.
    pub method: Field<String>,
    /// Path template with `{name}` or `{name:uuid}` placeholders.
    pub path: Field<String>,
    /// Retries after the first attempt (default 0).
    pub retry_attempts: Field<u32>,
    /// What to retry on: any of "429", "502", "503", "504", "connect".
    pub retry_on: Field<Vec<String>>,
    /// The call is safe to repeat even though its method is not idempotent.
    pub idempotent: Field<bool>,
    /// `"generate"`: a POST or PATCH sent without an `Idempotency-Key` gets one from the
    /// proxy, kept for all its attempts; `"caller"` (the default): only the caller's.
    pub idempotency_key: Field<String>,
    /// Read small JSON 200 answers for Zuora's `"success": false` limit errors (reason codes
    /// ending in 50, 61 or 70) and retry them as a 429 (default false).
    pub zuora_body_errors: Field<bool>,
    /// A request sent without a `Zuora-Track-Id` gets its trace id as track id (after the
    /// rule's prefix), so that Zuora, the logs and the trace share one id (default false).
    pub track_id_from_trace: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table ([[rules]])")]
pub struct RawRule {
    /// Name used in logs.
    pub name: Field<String>,
    /// Route names this rule applies to; absent means every route.
    pub routes: Field<Vec<String>>,
    /// Request headers that must all be present with exactly these values.
    pub when_headers: Field<BTreeMap<String, String>>,
    /// The caller's client certificate (TLS listener with client_ca_file) must have this
    /// common name, or this whole subject in RFC 4514 form (`CN=billing,O=Acme`).
    pub when_client_cert_subject: Field<String>,
    /// The caller's uid (`SO_PEERCRED`, Unix-socket listener only) must be one of these.
    pub when_peer_uid: Field<Vec<u32>>,
    /// The caller's primary gid (`SO_PEERCRED`, Unix-socket listener only) must be one of these.
    pub when_peer_gid: Field<Vec<u32>>,
    /// Tenant the request is sent to.
    pub tenant: Field<String>,
    /// Sent as `Zuora-Entity-Ids`.
    pub entity_ids: Field<Vec<String>>,
    /// Sent comma-joined as `Zuora-Org-Ids`.
    pub org_ids: Field<Vec<String>>,
    /// Generated track ids look like `<prefix>-<32 hex>`.
    pub track_id_prefix: Field<String>,
}
