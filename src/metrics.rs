//! Prometheus metrics. Label values come from configuration names, status codes and closed
//! enums only, never from caller input, so the series count stays bounded. Per-route and
//! per-tenant handles are resolved once per configuration ([`RouteMeters`],
//! [`TenantMeters`], [`FetchMeters`]), so a request never looks up a family by a new label.

use crate::labels::{label_enum, Name};
use crate::routes::RetryOn;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;

/// Route label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

label_enum! {
    /// Outcome of one token endpoint call.
    pub enum FetchResult {
        Ok => "ok",
        Secret => "secret",
        RateLimited => "rate_limited",
        Rejected => "rejected",
        ServerError => "server_error",
        Unreachable => "unreachable",
        Timeout => "timeout",
        Invalid => "invalid",
    }
}

label_enum! {
    /// Outcome of a configuration reload.
    pub enum ReloadResult {
        Ok => "ok",
        Error => "error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantResult {
    pub tenant: Name,
    pub result: FetchResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReason {
    pub route: Name,
    pub reason: RetryOn,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    upstream_duration: HistogramFamily<TenantLabel>,
    token_fetches: Family<TenantResult, Counter>,
    token_expires_in: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    in_flight: Family<TenantLabel, Gauge>,
    proxy_errors: Family<CodeLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    queue_length: Family<TenantLabel, Gauge>,
    queue_wait: HistogramFamily<TenantLabel>,
    retries: Family<RouteReason, Counter>,
    log_lines_dropped: Counter,
}

/// Registers `metric` under `name` and hands it back.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("zuora_proxy");
        let m = Metrics {
            requests: add(
                &mut r,
                "requests",
                "Requests answered, by route and status",
                Family::default(),
            ),
            request_duration: add(
                &mut r,
                "request_duration_seconds",
                "Time from request to response headers, by route",
                HistogramFamily::new_with_constructor(latency_histogram),
            ),
            upstream_duration: add(
                &mut r,
                "upstream_duration_seconds",
                "Time Zuora took to send response headers, by tenant",
                HistogramFamily::new_with_constructor(latency_histogram),
            ),
            token_fetches: add(
                &mut r,
                "token_fetches",
                "Token endpoint calls, by tenant and result",
                Family::default(),
            ),
            token_expires_in: add(
                &mut r,
                "token_expires_in_seconds",
                "Seconds until the current token expires (negative: expired or none)",
                Family::default(),
            ),
            in_flight: add(
                &mut r,
                "in_flight",
                "Requests being forwarded to Zuora, by tenant",
                Family::default(),
            ),
            proxy_errors: add(
                &mut r,
                "proxy_errors",
                "Answers made by the proxy itself, by error code",
                Family::default(),
            ),
            config_reloads: add(
                &mut r,
                "config_reloads",
                "Configuration reloads, by result",
                Family::default(),
            ),
            queue_length: add(
                &mut r,
                "queue_length",
                "Requests waiting for a concurrency slot, by tenant",
                Family::default(),
            ),
            queue_wait: add(
                &mut r,
                "queue_wait_seconds",
                "Time requests waited for a concurrency slot, by tenant",
                HistogramFamily::new_with_constructor(latency_histogram),
            ),
            retries: add(
                &mut r,
                "retries",
                "Requests sent to Zuora again, by route and reason",
                Family::default(),
            ),
            log_lines_dropped: add(
                &mut r,
                "log_lines_dropped",
                "Log lines dropped because standard error did not keep up",
                Counter::default(),
            ),
            registry: Registry::default(),
        };
        // Series that alerts use with increase()/rate() exist from the start, at zero.
        for &result in ReloadResult::ALL {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        for code in crate::error::CODES.into_iter().chain(crate::error::AFTER_HEAD_CODES) {
            let _ = m.proxy_errors.get_or_create(&CodeLabel { code });
        }
        Metrics { registry: r, ..m }
    }

    /// The handles of one configured route; its request series exist from the start, at zero.
    pub fn route(&self, route: &str) -> RouteMeters {
        let meters = self.unrouted(route);
        let _ = self.requests.get_or_create(&RouteStatus {
            route: meters.name.clone(),
            status: 200,
        });
        meters
    }

    /// The handles of requests under `label` that has no series of its own until one is
    /// answered (requests that matched no route).
    pub fn unrouted(&self, label: &str) -> RouteMeters {
        let name = Name::new(label);
        RouteMeters {
            duration: self
                .request_duration
                .get_or_create(&RouteLabel { route: name.clone() })
                .clone(),
            requests: self.requests.clone(),
            retries: self.retries.clone(),
            name,
        }
    }

    /// The handles of one tenant.
    pub fn tenant(&self, tenant: &str) -> TenantMeters {
        let label = TenantLabel {
            tenant: Name::new(tenant),
        };
        TenantMeters {
            in_flight: self.in_flight.get_or_create(&label).clone(),
            queue_length: self.queue_length.get_or_create(&label).clone(),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&label).clone(),
        }
    }

    /// The token fetch counters of one tenant, every result at zero from the start.
    pub fn token_fetches(&self, tenant: &str) -> FetchMeters {
        let tenant = Name::new(tenant);
        FetchMeters(
            FetchResult::ALL
                .iter()
                .map(|&result| {
                    let label = TenantResult {
                        tenant: tenant.clone(),
                        result,
                    };
                    (result, self.token_fetches.get_or_create(&label).clone())
                })
                .collect(),
        )
    }

    pub fn set_token_expires_in(&self, tenant: &str, seconds: f64) {
        let label = TenantLabel {
            tenant: Name::new(tenant),
        };
        self.token_expires_in.get_or_create(&label).set(seconds);
    }

    pub fn proxy_error(&self, code: &'static str) {
        self.proxy_errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Brings the dropped-log-lines counter up to the log writer's own count.
    pub fn set_log_lines_dropped(&self, total: u64) {
        let seen = self.log_lines_dropped.get();
        if total > seen {
            self.log_lines_dropped.inc_by(total - seen);
        }
    }

    /// Drops the series of a tenant that a reload removed, so they do not linger frozen.
    pub fn forget_tenant(&self, tenant: &str) {
        let label = TenantLabel {
            tenant: Name::new(tenant),
        };
        self.in_flight.remove(&label);
        self.queue_length.remove(&label);
        self.queue_wait.remove(&label);
        self.upstream_duration.remove(&label);
        self.token_expires_in.remove(&label);
        for &result in FetchResult::ALL {
            self.token_fetches.remove(&TenantResult {
                tenant: label.tenant.clone(),
                result,
            });
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One route's handles.
#[derive(Clone)]
pub struct RouteMeters {
    name: Name,
    duration: Histogram,
    requests: Family<RouteStatus, Counter>,
    retries: Family<RouteReason, Counter>,
}

impl RouteMeters {
    pub fn answered(&self, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus {
                route: self.name.clone(),
                status,
            })
            .inc();
        self.duration.observe(seconds);
    }

    pub fn retried(&self, reason: RetryOn) {
        self.retries
            .get_or_create(&RouteReason {
                route: self.name.clone(),
                reason,
            })
            .inc();
    }
}

/// One tenant's handles.
#[derive(Clone)]
pub struct TenantMeters {
    pub in_flight: Gauge,
    pub queue_length: Gauge,
    pub queue_wait: Histogram,
    pub upstream_duration: Histogram,
}

/// One tenant's token fetch counters, by result.
#[derive(Clone)]
pub struct FetchMeters(Vec<(FetchResult, Counter)>);

impl FetchMeters {
    pub fn count(&self, result: FetchResult) {
        if let Some((_, counter)) = self.0.iter().find(|(r, _)| *r == result) {
            counter.inc();
        }
    }
}

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_families_with_fixed_labels() {
        let m = Metrics::new();
        m.route("abort").answered(200, 0.01);
        m.token_fetches("default").count(FetchResult::Ok);
        m.route("abort").retried(RetryOn::Status503);
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
        assert!(
            text.contains("zuora_proxy_token_fetches_total{tenant=\"default\",result=\"rate_limited\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("zuora_proxy_retries_total{route=\"abort\",reason=\"503\"} 1"),
            "{text}"
        );
    }
}
