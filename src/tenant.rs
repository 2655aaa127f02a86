//! One Zuora tenant ready to serve: its settings, its upstream client (shared by API and
//! token calls), its token manager, its concurrency slots and its metric handles.

use crate::cluster::{Cluster, TenantKey};
use crate::config::TenantSettings;
use crate::metrics::{Metrics, TenantMeters};
use crate::token::TokenManager;
use crate::upstream::{self, UpstreamClient, UpstreamError};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::HeaderValue;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct Tenant {
    pub settings: Arc<TenantSettings>,
    /// The one client toward this tenant's hosts; the token manager holds a handle to it.
    pub client: UpstreamClient,
    pub tokens: TokenManager,
    /// Slots for requests in flight (`max_concurrency`), granted in arrival order.
    pub slots: Arc<Semaphore>,
    pub meters: TenantMeters,
    /// With `[cluster]`: the shared governor and this tenant's fallback cap.
    pub cluster: Option<TenantCluster>,
    authority: Authority,
    /// The base URL's path without its trailing slash ("" for Zuora's hosts).
    base_path: String,
}

/// A tenant's share of the cluster: the handle, the key its token is shared under, and the
/// local cap that replaces the cluster-wide one while Redis is unavailable.
#[derive(Clone)]
pub struct TenantCluster {
    pub cluster: Cluster,
    /// Base URL + client id: one token per OAuth client, whatever the entity.
    pub token_key: TenantKey,
    /// `fallback_max_concurrency` slots, used only while the cluster is down.
    pub fallback: Arc<Semaphore>,
}

impl TenantCluster {
    fn new(cluster: &Cluster, settings: &TenantSettings) -> TenantCluster {
        TenantCluster {
            cluster: cluster.clone(),
            token_key: TenantKey::new(settings.base_url.as_str(), &settings.client_id, None),
            fallback: Arc::new(Semaphore::new(settings.fallback_max_concurrency)),
        }
    }
}

/// The key permits and cool-downs are counted under: Zuora counts concurrency per entity when
/// a rule sets `Zuora-Entity-Ids`, else per tenant.
pub fn permit_key(settings: &TenantSettings, entity: Option<&HeaderValue>) -> TenantKey {
    let entity = entity.and_then(|v| v.to_str().ok());
    TenantKey::new(settings.base_url.as_str(), &settings.client_id, entity)
}

/// Why a caller's path could not become an upstream URI (it was a valid request target, so
/// this means a broken base URL, not a bad request).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the upstream URI: {0}")]
pub struct UriError(String);

impl Tenant {
    /// A tenant built from scratch: a new client (a pool for each of `workers`), a new token
    /// manager (which starts fetching at once), a full set of slots.
    pub fn start(
        settings: &Arc<TenantSettings>,
        metrics: &Arc<Metrics>,
        cluster: Option<&Cluster>,
        workers: usize,
    ) -> Result<Tenant, UpstreamError> {
        let client = upstream::build(settings, workers)?;
        let cluster = cluster.map(|c| TenantCluster::new(c, settings));
        let tokens = TokenManager::start(
            settings.clone(),
            client.clone(),
            metrics.token_fetches(&settings.name),
            cluster.as_ref().map(|c| (c.cluster.clone(), c.token_key.clone())),
            metrics.spans().cloned(),
        );
        let slots = Arc::new(Semaphore::new(settings.max_concurrency));
        Ok(Tenant::assemble(settings, client, tokens, slots, cluster, metrics))
    }

    /// The same tenant under a new configuration whose settings for it did not change: it
    /// keeps its client, its token and its slots.
    pub fn carry_over(&self, metrics: &Arc<Metrics>) -> Tenant {
        Tenant::assemble(
            &self.settings,
            self.client.clone(),
            self.tokens.clone(),
            self.slots.clone(),
            self.cluster.clone(),
            metrics,
        )
    }

    fn assemble(
        settings: &Arc<TenantSettings>,
        client: UpstreamClient,
        tokens: TokenManager,
        slots: Arc<Semaphore>,
        cluster: Option<TenantCluster>,
        metrics: &Metrics,
    ) -> Tenant {
        let base = &settings.base_url;
        let authority = Authority::try_from(&base[url::Position::BeforeHost..url::Position::AfterPort])
            .expect("validated base_url has a host");
        Tenant {
            settings: settings.clone(),
            client,
            tokens,
            slots,
            meters: metrics.tenant(&settings.name),
            cluster,
            authority,
            base_path: base.path().trim_end_matches('/').to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The upstream URI: always the tenant's scheme and host, the caller's path and query.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, UriError> {
        let pq = match (path_and_query, self.base_path.is_empty()) {
            // The caller's path and query as hyper parsed them: shared, not parsed again.
            (Some(pq), true) => pq.clone(),
            (None, true) => PathAndQuery::from_static("/"),
            (pq, false) => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{pq}", self.base_path)).map_err(|e| UriError(e.to_string()))?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|e| UriError(e.to_string()))
    }
}
