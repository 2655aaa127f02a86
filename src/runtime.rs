//! The configuration in force plus what it needs at run time: per-tenant clients and token
//! managers. Swapped whole on reload; a request keeps the snapshot it started with.

use crate::config::{Config, TenantSettings};
use crate::error::ProxyError;
use crate::metrics::{Metrics, RouteLabel, RouteStatus, TenantLabel};
use crate::token::TokenManager;
use crate::upstream::{self, UpstreamError};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One tenant ready to serve: where requests go, who holds its token, how many requests
/// may be in flight to it.
pub struct Tenant {
    pub settings: Arc<TenantSettings>,
    pub tokens: TokenManager,
    /// Slots for requests in flight (`max_concurrency`), granted in arrival order.
    pub slots: Arc<Semaphore>,
    pub meters: TenantMeters,
    authority: Authority,
    /// The base URL's path without its trailing slash ("" for Zuora's hosts).
    base_path: String,
}

/// The tenant's metric handles, looked up once instead of per request.
#[derive(Clone)]
pub struct TenantMeters {
    pub in_flight: Gauge,
    pub queue_length: Gauge,
    pub queue_wait: Histogram,
    pub upstream_duration: Histogram,
}

impl TenantMeters {
    fn new(metrics: &Metrics, tenant: &str) -> TenantMeters {
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        TenantMeters {
            in_flight: metrics.in_flight.get_or_create(&label).clone(),
            queue_length: metrics.queue_length.get_or_create(&label).clone(),
            queue_wait: metrics.queue_wait.get_or_create(&label).clone(),
            upstream_duration: metrics.upstream_duration.get_or_create(&label).clone(),
        }
    }
}

impl Tenant {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The upstream URI: always the tenant's scheme and host, the caller's path and query.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
        let pq = path_and_query.map_or("/", PathAndQuery::as_str);
        let pq = if self.base_path.is_empty() {
            PathAndQuery::try_from(pq)
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.base_path))
        };
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.authority.clone())
            .path_and_query(pq.map_err(|_| ProxyError::RouteNotFound)?)
            .build()
            .map_err(|_| ProxyError::RouteNotFound)
    }
}

/// A configuration and its tenants.
pub struct Runtime {
    pub config: Arc<Config>,
    pub tenants: HashMap<String, Tenant>,
}

impl Runtime {
    /// Builds the tenants of `config`. A tenant whose settings did not change since
    /// `previous` keeps its client and its token.
    pub fn build(config: Config, metrics: &Arc<Metrics>, previous: Option<&Runtime>) -> Result<Runtime, UpstreamError> {
        let mut tenants = HashMap::new();
        for (name, settings) in &config.live.tenants {
            let reused = previous
                .and_then(|p| p.tenants.get(name))
                .filter(|t| *t.settings == **settings)
                .map(|t| (t.tokens.clone(), t.slots.clone()));
            let (tokens, slots) = match reused {
                Some(kept) => kept,
                None => (
                    TokenManager::start(settings.clone(), upstream::build(settings)?, metrics.clone()),
                    Arc::new(Semaphore::new(settings.max_concurrency)),
                ),
            };
            let authority =
                Authority::try_from(settings.base_url[url::Position::BeforeHost..url::Position::AfterPort].to_string())
                    .expect("validated base_url has a host");
            tenants.insert(
                name.clone(),
                Tenant {
                    settings: settings.clone(),
                    tokens,
                    slots,
                    meters: TenantMeters::new(metrics, name),
                    authority,
                    base_path: settings.base_url.path().trim_end_matches('/').to_string(),
                },
            );
        }
        // Every route's request series exist from the start, at zero.
        for route in &config.live.routes {
            let _ = metrics.requests.get_or_create(&RouteStatus {
                route: route.name.clone(),
                status: 200,
            });
            let _ = metrics.request_duration.get_or_create(&RouteLabel {
                route: route.name.clone(),
            });
        }
        Ok(Runtime {
            config: Arc::new(config),
            tenants,
        })
    }

    /// Tenants some rule can route to: the ones readiness waits for.
    pub fn routable_tenants(&self) -> impl Iterator<Item = &Tenant> {
        let mut names: Vec<&str> = self.config.live.rules.iter().map(|r| r.tenant.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().filter_map(|n| self.tenants.get(n))
    }
}
