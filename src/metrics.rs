//! Prometheus metrics. Label values come from configuration names, status codes and fixed
//! error codes only, never from caller input, so the series count stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Route label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantResult {
    pub tenant: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<TenantLabel, Histogram, fn() -> Histogram>,
    pub token_fetches: Family<TenantResult, Counter>,
    pub token_expires_in: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    pub in_flight: Family<TenantLabel, Gauge>,
    pub proxy_errors: Family<CodeLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub queue_length: Family<TenantLabel, Gauge>,
    pub queue_wait: Family<TenantLabel, Histogram, fn() -> Histogram>,
    pub retries: Family<RouteReason, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReason {
    pub route: String,
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("zuora_proxy");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            token_fetches: Family::default(),
            token_expires_in: Family::default(),
            in_flight: Family::default(),
            proxy_errors: Family::default(),
            config_reloads: Family::default(),
            queue_length: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by route and status", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time Zuora took to send response headers, by tenant",
            m.upstream_duration.clone(),
        );
        registry.register(
            "token_fetches",
            "Token endpoint calls, by tenant and result",
            m.token_fetches.clone(),
        );
        registry.register(
            "token_expires_in_seconds",
            "Seconds until the current token expires (negative: expired or none)",
            m.token_expires_in.clone(),
        );
        registry.register(
            "in_flight",
            "Requests being forwarded to Zuora, by tenant",
            m.in_flight.clone(),
        );
        registry.register(
            "proxy_errors",
            "Answers made by the proxy itself, by error code",
            m.proxy_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "queue_length",
            "Requests waiting for a concurrency slot, by tenant",
            m.queue_length.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time requests waited for a concurrency slot, by tenant",
            m.queue_wait.clone(),
        );
        registry.register(
            "retries",
            "Requests sent to Zuora again, by route and reason",
            m.retries.clone(),
        );
        // Series that alerts use with increase()/rate() exist from the start, at zero.
        for result in ["ok", "error"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        for code in crate::error::CODES {
            let _ = m.proxy_errors.get_or_create(&CodeLabel { code });
        }
        Metrics { registry, ..m }
    }

    /// Drops the series of a tenant that a reload removed, so they do not linger frozen.
    pub fn forget_tenant(&self, tenant: &str) {
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.in_flight.remove(&label);
        self.queue_length.remove(&label);
        self.queue_wait.remove(&label);
        self.upstream_duration.remove(&label);
        self.token_expires_in.remove(&label);
        for result in crate::token::fetch::FETCH_RESULTS {
            self.token_fetches.remove(&TenantResult {
                tenant: tenant.to_string(),
                result,
            });
        }
    }

    pub fn token_fetched(&self, tenant: &str, result: &'static str) {
        self.token_fetches
            .get_or_create(&TenantResult {
                tenant: tenant.to_string(),
                result,
            })
            .inc();
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_families_in_text_format() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RouteStatus {
                route: "abort".into(),
                status: 200,
            })
            .inc();
        m.token_fetched("default", "ok");
        let text = m.encode();
        assert!(text.contains("# TYPE zuora_proxy_requests_total counter"), "{text}");
        assert!(
            text.contains("zuora_proxy_requests_total{route=\"abort\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("zuora_proxy_token_fetches_total{tenant=\"default\",result=\"ok\"} 1"),
            "{text}"
        );
    }
}
