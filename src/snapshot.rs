//! The configuration in force with what it needs at run time: its tenants, its allowlist
//! (the configured routes, behind the caller token endpoint when it is on) and its routes'
//! metric handles. Swapped whole on reload; a request keeps the snapshot it started with.

use crate::caller_token;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Metrics, RouteMeters, NO_ROUTE};
use crate::routes::Route;
use crate::tenant::Tenant;
use crate::upstream::UpstreamError;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Snapshot {
    pub config: Arc<Config>,
    pub tenants: HashMap<String, Tenant>,
    /// What requests are resolved against: the caller token route first (it answers its path
    /// whatever the configured routes say), then `config.live.routes`.
    allowlist: Vec<Arc<Route>>,
    /// The caller token route, when `server.caller_token_endpoint` is on.
    caller_token: Option<Arc<Route>>,
    /// The replica's cluster handle (`[cluster]`), made at start and kept by every reload.
    pub cluster: Option<Cluster>,
    routes: HashMap<String, RouteMeters>,
    no_route: RouteMeters,
}

impl Snapshot {
    /// Builds the tenants of `config`. A tenant whose settings did not change since
    /// `previous` keeps its client and its token. `cluster` is the one made at start.
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
        cluster: Option<&Cluster>,
    ) -> Result<Snapshot, UpstreamError> {
        let mut tenants = HashMap::new();
        for (name, settings) in &config.live.tenants {
            let kept = previous
                .and_then(|p| p.tenants.get(name))
                .filter(|t| *t.settings == **settings);
            let tenant = match kept {
                Some(tenant) => tenant.carry_over(metrics),
                None => Tenant::start(settings, metrics, cluster, config.fixed.listener.workers)?,
            };
            tenants.insert(name.clone(), tenant);
        }
        let caller_token = config.live.requests.caller_token_endpoint.then(caller_token::route);
        let allowlist: Vec<Arc<Route>> = caller_token.iter().chain(&config.live.routes).cloned().collect();
        let routes = allowlist
            .iter()
            .map(|route| (route.name.clone(), metrics.route(&route.name)))
            .collect();
        Ok(Snapshot {
            config: Arc::new(config),
            tenants,
            allowlist,
            caller_token,
            cluster: cluster.cloned(),
            routes,
            no_route: metrics.unrouted(NO_ROUTE),
        })
    }

    /// The routes a request may match, in the order they are tried.
    pub fn allowlist(&self) -> &[Arc<Route>] {
        &self.allowlist
    }

    /// Whether `route` is the caller token endpoint, answered by the proxy itself.
    pub fn is_caller_token(&self, route: &Arc<Route>) -> bool {
        self.caller_token.as_ref().is_some_and(|ours| Arc::ptr_eq(ours, route))
    }

    /// The handles of a route by name, or of "no route".
    pub fn route_meters(&self, route: Option<&str>) -> &RouteMeters {
        route.and_then(|r| self.routes.get(r)).unwrap_or(&self.no_route)
    }

    /// Tenants some rule can route to: the ones readiness waits for.
    pub fn routable_tenants(&self) -> impl Iterator<Item = &Tenant> {
        let mut names: Vec<&str> = self.config.live.rules.iter().map(|r| r.tenant.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().filter_map(|n| self.tenants.get(n))
    }
}
