//! Prometheus metrics. Label values come from configuration names, status codes and closed
//! enums only, never from caller input, so the series count stays bounded. Per-route and
//! per-tenant handles are resolved once per configuration ([`RouteMeters`],
//! [`TenantMeters`], [`FetchMeters`]), so a request never looks up a family by a new label.
//! The `process_*` metrics are read from `/proc/self` at each scrape ([`process`]).

use crate::labels::{label_enum, Name};
use crate::routes::RetryOn;
use crate::trace::{ExportSettings, Exporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Route label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// Zuora statuses whose `zuora_proxy_upstream_responses_total` series exist from the start
/// for every tenant, so that `increase()` sees their first occurrence.
pub const COMMON_UPSTREAM_STATUSES: [u16; 13] = [200, 201, 204, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

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
pub struct TenantStatus {
    pub tenant: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
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
    /// Unprefixed: the `process_*` names every exporter shares.
    process: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    upstream_duration: HistogramFamily<TenantLabel>,
    token_fetches: Family<TenantResult, Counter>,
    token_expires_in: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    token_expiry: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    upstream_responses: Family<TenantStatus, Counter>,
    ratelimit_remaining: Family<TenantLabel, Gauge>,
    open_connections: Gauge,
    connections_accepted: Family<WorkerLabel, Counter>,
    in_flight: Family<TenantLabel, Gauge>,
    proxy_errors: Family<CodeLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    queue_length: Family<TenantLabel, Gauge>,
    queue_wait: HistogramFamily<TenantLabel>,
    retries: Family<RouteReason, Counter>,
    log_lines_dropped: Counter,
    trace_spans_dropped: Counter,
    /// Where finished spans go, when `[tracing] otlp_endpoint` is set: with the counters,
    /// since every request and token fetch that reports here reports its spans there.
    spans: Option<Exporter>,
    /// Registered only with `[cluster]`, so that a proxy without one exports what it did.
    cluster: Option<ClusterMetrics>,
}

/// Registers `metric` under `name` and hands it back.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// Every metric, plus the `cluster_*` series when `cluster` is true (`[cluster]` is set).
    pub fn with_cluster(cluster: bool) -> Metrics {
        let mut r = Registry::with_prefix("zuora_proxy");
        let cluster = cluster.then(|| ClusterMetrics::register(&mut r));
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
            token_expiry: add(
                &mut r,
                "token_expiry_timestamp_seconds",
                "When the current token expires, in seconds since the Unix epoch (absent while there is none)",
                Family::default(),
            ),
            upstream_responses: add(
                &mut r,
                "upstream_responses",
                "Responses from Zuora, retried and replayed attempts included, by tenant and status",
                Family::default(),
            ),
            ratelimit_remaining: add(
                &mut r,
                "ratelimit_remaining",
                "RateLimit-Remaining of Zuora's latest answer that carried one, by tenant",
                Family::default(),
            ),
            open_connections: add(
                &mut r,
                "open_connections",
                "Caller connections open on the proxy listener",
                Gauge::default(),
            ),
            connections_accepted: add(
                &mut r,
                "connections_accepted",
                "Caller connections accepted on the proxy listener, by worker (server.workers)",
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
            trace_spans_dropped: add(
                &mut r,
                "trace_spans_dropped",
                "Finished spans dropped because the export queue was full",
                Counter::default(),
            ),
            spans: None,
            cluster,
            registry: Registry::default(),
            process: Registry::default(),
        };
        let build_info: Family<VersionLabel, Gauge> = add(
            &mut r,
            "build_info",
            "Always 1; the version label names the running build",
            Family::default(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let mut process = Registry::default();
        process.register_collector(Box::new(process::Process));
        // Series that alerts use with increase()/rate() exist from the start, at zero.
        for &result in ReloadResult::ALL {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        let codes = crate::error::CODES.into_iter().chain(crate::error::AFTER_HEAD_CODES);
        for code in codes.chain(crate::error::HTTP_LAYER_CODES) {
            let _ = m.proxy_errors.get_or_create(&CodeLabel { code });
        }
        Metrics {
            registry: r,
            process,
            ..m
        }
    }

    /// The handles of one configured route; its request series and its retries by every
    /// reason exist from the start, at zero.
    pub fn route(&self, route: &str) -> RouteMeters {
        let meters = self.unrouted(route);
        meters.requests.create(200);
        for (kept, &reason) in meters.retried.iter().zip(RetryOn::ALL) {
            let label = RouteReason {
                route: meters.name.clone(),
                reason,
            };
            let _ = kept.set(self.retries.get_or_create(&label).clone());
        }
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
            requests: ByStatus::new(&self.requests, &name, |route, status| RouteStatus { route, status }),
            retries: self.retries.clone(),
            retried: RetryOn::ALL.iter().map(|_| OnceLock::new()).collect(),
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
            responses: UpstreamResponses::new(&self.upstream_responses, &label.tenant),
            ratelimit_remaining: RateLimitRemaining {
                family: self.ratelimit_remaining.clone(),
                label,
                gauge: Arc::default(),
            },
        }
    }

    /// The gauge of open caller connections, for the listener to move.
    pub fn open_connections(&self) -> Gauge {
        self.open_connections.clone()
    }

    /// The counter of connections worker `worker` accepted (its series shows from the start).
    pub fn connections_accepted(&self, worker: usize) -> Counter {
        self.connections_accepted.get_or_create(&WorkerLabel { worker }).clone()
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

    /// The wall-clock moment the tenant's token expires; `None` removes the series.
    pub fn set_token_expiry(&self, tenant: &str, expires_at: Option<SystemTime>) {
        let label = TenantLabel {
            tenant: Name::new(tenant),
        };
        match expires_at {
            Some(at) => {
                let seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
                self.token_expiry.get_or_create(&label).set(seconds.as_secs_f64());
            }
            None => {
                self.token_expiry.remove(&label);
            }
        }
    }

    pub fn proxy_error(&self, code: &'static str) {
        self.proxy_errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Starts the span export (its thread and queue) when `settings` asks for one; without
    /// it, nothing is started and no span is made.
    pub fn with_spans(mut self, settings: Option<&ExportSettings>) -> Metrics {
        self.spans = settings.and_then(|s| match Exporter::start(s, self.trace_spans_dropped.clone()) {
            Ok(exporter) => Some(exporter),
            Err(error) => {
                tracing::error!(%error, endpoint = %s.endpoint, "span export not started; spans are not exported");
                None
            }
        });
        self
    }

    /// The span export, when it is on.
    pub fn spans(&self) -> Option<&Exporter> {
        self.spans.as_ref()
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
        self.token_expiry.remove(&label);
        self.ratelimit_remaining.remove(&label);
        // Every status a response can have (the family cannot be filtered by tenant).
        for status in 100..=999 {
            self.upstream_responses.remove(&TenantStatus {
                tenant: label.tenant.clone(),
                status,
            });
        }
        for &result in FetchResult::ALL {
            self.token_fetches.remove(&TenantResult {
                tenant: label.tenant.clone(),
                result,
            });
        }
    }

    /// Brings the `cluster_*` series up to the cluster's own counters (at scrape time).
    pub fn set_cluster_stats(&self, stats: &crate::cluster::StatsSnapshot) {
        if let Some(cluster) = &self.cluster {
            cluster.set(stats);
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::prometheus_text::encode(&mut out, &self.process))
            .expect("writing to a String cannot fail");
        out
    }
}

/// One route's handles.
#[derive(Clone)]
pub struct RouteMeters {
    duration: Histogram,
    requests: ByStatus<RouteStatus>,
    retries: Family<RouteReason, Counter>,
    name: Name,
    /// The retry counters by reason, once each has been counted (or created at zero).
    retried: Arc<[OnceLock<Counter>]>,
}

impl RouteMeters {
    pub fn answered(&self, status: u16, seconds: f64) {
        self.requests.count(status);
        self.duration.observe(seconds);
    }

    pub fn retried(&self, reason: RetryOn) {
        let index = RetryOn::ALL.iter().position(|&r| r == reason).unwrap_or_default();
        self.retried[index]
            .get_or_init(|| {
                let label = RouteReason {
                    route: self.name.clone(),
                    reason,
                };
                self.retries.get_or_create(&label).clone()
            })
            .inc();
    }
}

/// Statuses whose counters a [`ByStatus`] keeps once used: Zuora's common ones and the
/// proxy's own refusals.
const KEPT_STATUSES: [u16; 20] = [
    200, 201, 204, 400, 401, 403, 404, 405, 409, 411, 413, 415, 422, 429, 431, 499, 500, 502, 503, 504,
];

/// One route's or tenant's counters by status. A counter of a [`KEPT_STATUSES`] status is
/// looked up in its family once, then kept: counting a request is no label built, no hash,
/// no lock. A series still appears only once something was counted in it (or was created
/// at zero on purpose).
#[derive(Clone)]
struct ByStatus<L> {
    family: Family<L, Counter>,
    name: Name,
    label: fn(Name, u16) -> L,
    kept: Arc<[OnceLock<Counter>; KEPT_STATUSES.len()]>,
}

impl<L: Clone + std::hash::Hash + Eq> ByStatus<L> {
    fn new(family: &Family<L, Counter>, name: &Name, label: fn(Name, u16) -> L) -> ByStatus<L> {
        ByStatus {
            family: family.clone(),
            name: name.clone(),
            label,
            kept: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// Runs `f` on the counter of `status`, looked up in the family (created at zero if it
    /// was not there) only the first time for a kept status.
    fn with(&self, status: u16, f: impl FnOnce(&Counter)) {
        let make = || {
            self.family
                .get_or_create(&(self.label)(self.name.clone(), status))
                .clone()
        };
        match KEPT_STATUSES.iter().position(|&s| s == status) {
            Some(index) => f(self.kept[index].get_or_init(make)),
            // Any other status is still a number below 1000: the series count stays bounded.
            None => f(&make()),
        }
    }

    /// Makes the series of `status` exist, at zero until something is counted in it.
    fn create(&self, status: u16) {
        self.with(status, |_| {});
    }

    fn count(&self, status: u16) {
        self.with(status, |counter| {
            counter.inc();
        });
    }
}

/// One tenant's handles.
#[derive(Clone)]
pub struct TenantMeters {
    pub in_flight: Gauge,
    pub queue_length: Gauge,
    pub queue_wait: Histogram,
    pub upstream_duration: Histogram,
    pub responses: UpstreamResponses,
    pub ratelimit_remaining: RateLimitRemaining,
}

/// One tenant's response counters by Zuora's status; the common ones exist from the start.
#[derive(Clone)]
pub struct UpstreamResponses(ByStatus<TenantStatus>);

impl UpstreamResponses {
    fn new(family: &Family<TenantStatus, Counter>, tenant: &Name) -> UpstreamResponses {
        let counters = ByStatus::new(family, tenant, |tenant, status| TenantStatus { tenant, status });
        for status in COMMON_UPSTREAM_STATUSES {
            counters.create(status);
        }
        UpstreamResponses(counters)
    }

    pub fn count(&self, status: u16) {
        self.0.count(status);
    }
}

/// One tenant's last `RateLimit-Remaining`: absent until Zuora has sent one, since a zero
/// placeholder would read as no headroom.
#[derive(Clone)]
pub struct RateLimitRemaining {
    family: Family<TenantLabel, Gauge>,
    label: TenantLabel,
    /// The series, once Zuora has sent a value (looked up in the family only then).
    gauge: Arc<OnceLock<Gauge>>,
}

impl RateLimitRemaining {
    pub fn set(&self, remaining: u64) {
        let value = i64::try_from(remaining).unwrap_or(i64::MAX);
        let gauge = self
            .gauge
            .get_or_init(|| self.family.get_or_create(&self.label).clone());
        gauge.set(value);
    }
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

/// The standard `process_*` metrics of the Prometheus client libraries, read from
/// `/proc/self` when scraped. A small reader rather than a crate: four numbers from four
/// files, with no system call beyond reading them.
mod process {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use std::fmt::Error;

    /// `/proc` counts times in USER_HZ ticks, which the kernel fixes at 100 for user space on
    /// every architecture this runs on (x86-64, arm64), whatever the kernel's own HZ.
    const USER_HZ: f64 = 100.0;

    #[derive(Debug)]
    pub struct Process;

    /// What one read of `/proc/self` found; a file that cannot be read leaves its fields out.
    #[derive(Debug, Default, PartialEq)]
    pub struct Sample {
        pub cpu_seconds: Option<f64>,
        pub start_time_seconds: Option<f64>,
        pub resident_bytes: Option<u64>,
        pub open_fds: Option<u64>,
    }

    pub fn sample() -> Sample {
        let times = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s));
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        let resident = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_bytes(&s));
        Sample {
            cpu_seconds: times.map(|t| (t.utime + t.stime) as f64 / USER_HZ),
            start_time_seconds: times
                .zip(boot)
                .map(|(t, boot)| boot as f64 + t.starttime as f64 / USER_HZ),
            resident_bytes: resident,
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Times {
        pub utime: u64,
        pub stime: u64,
        pub starttime: u64,
    }

    /// Fields 14, 15 and 22 of `/proc/self/stat` (proc(5)); the command name, field 2, may
    /// hold spaces and parentheses, so fields are counted from its last `)`.
    pub fn parse_stat(stat: &str) -> Option<Times> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Times {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
        })
    }

    /// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
    pub fn boot_time(stat: &str) -> Option<u64> {
        stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
    }

    /// `VmRSS` of `/proc/self/status`, which the kernel gives in kB.
    pub fn resident_bytes(status: &str) -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        Some(kb * 1024)
    }

    impl Collector for Process {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
            let s = sample();
            if let Some(v) = s.cpu_seconds {
                let counter = ConstCounter::new(v);
                let metric = encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    None,
                    counter.metric_type(),
                )?;
                counter.encode(metric)?;
            }
            let gauges = [
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    s.start_time_seconds,
                ),
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    s.resident_bytes.map(|b| b as f64),
                ),
                (
                    "process_open_fds",
                    "Number of open file descriptors",
                    s.open_fds.map(|n| n as f64),
                ),
            ];
            for (name, help, value) in gauges {
                let Some(value) = value else { continue };
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
            Ok(())
        }
    }
}

label_enum! {
    /// Why a cluster permit was not granted.
    pub enum RefusalReason {
        Overloaded => "overloaded",
        Unavailable => "unavailable",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: RefusalReason,
}

/// The cluster room's gauges and counters, read off [`crate::cluster::StatsSnapshot`].
struct ClusterMetrics {
    up: Gauge,
    permits_held: Gauge,
    permits_waiting: Gauge,
    permits_granted: Counter,
    permit_waits: Counter,
    permits_refused: Family<ReasonLabel, Counter>,
    lease_renewals: Counter,
    fallback_transitions: Counter,
    redis_errors: Counter,
    shared_token_reads: Counter,
    shared_token_stores: Counter,
    shared_token_invalidations: Counter,
    shared_token_unreadable: Counter,
    cooldowns_published: Counter,
    cooldowns_received: Counter,
}

impl ClusterMetrics {
    fn register(r: &mut Registry) -> ClusterMetrics {
        let permits_refused: Family<ReasonLabel, Counter> = add(
            r,
            "cluster_permits_refused",
            "Cluster permits not granted, by reason (overloaded: answered 503; unavailable: the fallback cap applied)",
            Family::default(),
        );
        for &reason in RefusalReason::ALL {
            let _ = permits_refused.get_or_create(&ReasonLabel { reason });
        }
        let gauge = |r: &mut Registry, name: &str, help: &str| add(r, name, help, Gauge::default());
        let counter = |r: &mut Registry, name: &str, help: &str| add(r, name, help, Counter::default());
        ClusterMetrics {
            up: gauge(
                r,
                "cluster_up",
                "1 while Redis answers and the replica runs in cluster mode, 0 in local mode",
            ),
            permits_held: gauge(r, "cluster_permits_held", "Cluster permits this replica holds now"),
            permits_waiting: gauge(
                r,
                "cluster_permits_waiting",
                "Requests of this replica waiting for a cluster permit now",
            ),
            permits_granted: counter(r, "cluster_permits_granted", "Cluster permits granted"),
            permit_waits: counter(r, "cluster_permit_waits", "Cluster permits granted only after waiting"),
            permits_refused,
            lease_renewals: counter(
                r,
                "cluster_lease_renewals",
                "Permit leases renewed while a long request was in flight",
            ),
            fallback_transitions: counter(
                r,
                "cluster_fallback_transitions",
                "Switches from cluster mode to local mode",
            ),
            redis_errors: counter(
                r,
                "cluster_redis_errors",
                "Redis calls that failed or took longer than cluster.timeout",
            ),
            shared_token_reads: counter(
                r,
                "cluster_shared_token_reads",
                "Tokens taken from Redis instead of fetched from Zuora",
            ),
            shared_token_stores: counter(
                r,
                "cluster_shared_token_stores",
                "Tokens this replica fetched and shared",
            ),
            shared_token_invalidations: counter(
                r,
                "cluster_shared_token_invalidations",
                "Shared tokens deleted after Zuora refused them",
            ),
            shared_token_unreadable: counter(
                r,
                "cluster_shared_token_unreadable",
                "Shared tokens that did not open with this replica's client secret",
            ),
            cooldowns_published: counter(
                r,
                "cluster_cooldowns_published",
                "Cool-downs this replica published after a 429",
            ),
            cooldowns_received: counter(
                r,
                "cluster_cooldowns_received",
                "Cool-downs received from other replicas",
            ),
        }
    }

    fn set(&self, s: &crate::cluster::StatsSnapshot) {
        self.up.set(i64::from(s.up));
        self.permits_held.set(s.permits_held);
        self.permits_waiting.set(s.permits_waiting);
        let refused = |reason| self.permits_refused.get_or_create(&ReasonLabel { reason }).clone();
        for (counter, total) in [
            (&self.permits_granted, s.permits_granted),
            (&self.permit_waits, s.permit_waits),
            (&refused(RefusalReason::Overloaded), s.permits_refused_overloaded),
            (&refused(RefusalReason::Unavailable), s.permits_refused_unavailable),
            (&self.lease_renewals, s.lease_renewals),
            (&self.fallback_transitions, s.fallback_transitions),
            (&self.redis_errors, s.redis_errors),
            (&self.shared_token_reads, s.shared_token_reads),
            (&self.shared_token_stores, s.shared_token_stores),
            (&self.shared_token_invalidations, s.shared_token_invalidations),
            (&self.shared_token_unreadable, s.shared_token_unreadable),
            (&self.cooldowns_published, s.cooldowns_published),
            (&self.cooldowns_received, s.cooldowns_received),
        ] {
            catch_up(counter, total);
        }
    }
}

/// Raises a counter to a total counted elsewhere (it never goes down).
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_files_parse_as_proc5_describes_them() {
        // A command name with a space and a parenthesis, which a naive split would misread.
        let stat = "4242 (zuora (auth) x) S 1 4242 4242 0 -1 4194560 1890 0 0 0 250 75 0 0 20 0 9 0 123456 \
                    1000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            process::parse_stat(stat),
            Some(process::Times {
                utime: 250,
                stime: 75,
                starttime: 123456
            })
        );
        assert_eq!(process::parse_stat("garbage"), None);
        assert_eq!(
            process::boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            process::resident_bytes("Name:\tzuora\nVmRSS:\t    8120 kB\nThreads:\t9\n"),
            Some(8120 * 1024)
        );
        let live = process::sample();
        assert!(live.cpu_seconds.is_some() && live.start_time_seconds.is_some());
        assert!(live.resident_bytes.is_some_and(|b| b > 0));
        assert!(live.open_fds.is_some_and(|n| n >= 3));
    }

    #[test]
    fn new_series_exist_from_the_start_and_token_expiry_has_no_sentinel() {
        let m = Metrics::with_cluster(false);
        let meters = m.tenant("eu");
        let text = m.encode();
        assert!(
            text.contains("zuora_proxy_upstream_responses_total{tenant=\"eu\",status=\"429\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("zuora_proxy_ratelimit_remaining{"),
            "no placeholder headroom: {text}"
        );
        assert!(!text.contains("zuora_proxy_token_expiry_timestamp_seconds{"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(text.contains("# TYPE process_open_fds gauge"), "{text}");
        meters.responses.count(429);
        meters.responses.count(418);
        meters.ratelimit_remaining.set(7);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        m.set_token_expiry("eu", Some(at));
        let text = m.encode();
        assert!(
            text.contains("zuora_proxy_upstream_responses_total{tenant=\"eu\",status=\"429\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("zuora_proxy_upstream_responses_total{tenant=\"eu\",status=\"418\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("zuora_proxy_ratelimit_remaining{tenant=\"eu\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("zuora_proxy_token_expiry_timestamp_seconds{tenant=\"eu\"} 1700000000"),
            "{text}"
        );
        m.set_token_expiry("eu", None);
        assert!(!m.encode().contains("zuora_proxy_token_expiry_timestamp_seconds{"));
        m.forget_tenant("eu");
        assert!(!m.encode().contains("tenant=\"eu\""), "{}", m.encode());
    }

    #[test]
    fn encodes_registered_families_with_fixed_labels() {
        let m = Metrics::with_cluster(false);
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
