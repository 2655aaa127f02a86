//! The cluster governor on the request path (`[cluster]` only): a cool-down in force holds the
//! request or refuses it, then a cluster-wide permit is taken, or, while Redis is unavailable,
//! a slot of the tenant's fallback cap. What is taken is held with the other guards until the
//! answer's body ends; a 429 that asks to wait is passed on to every replica.

use super::Deadline;
use crate::backoff;
use crate::cluster::{Cluster, Permit, Refusal, TenantKey};
use crate::error::ProxyError;
use crate::routes::Rule;
use crate::tenant::{self, Tenant, TenantCluster};
use http::{Response, StatusCode};
use std::time::SystemTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// What a request holds of the cluster while it is in flight.
pub(super) struct ClusterGuard {
    cluster: Cluster,
    key: TenantKey,
    /// Released when the guard drops, at the end of the answer's body.
    _held: Held,
}

/// A cluster-wide permit, or a slot of the fallback cap.
type Held = Result<Permit, OwnedSemaphorePermit>;

/// Waits (within the tenant's `queue_timeout` and the request's deadline) for the right to
/// send to Zuora under the cluster's cap. `None` without `[cluster]`.
pub(super) async fn govern(
    tenant: &Tenant,
    rule: &Rule,
    deadline: Deadline,
) -> Result<Option<ClusterGuard>, ProxyError> {
    let Some(shared) = &tenant.cluster else {
        return Ok(None);
    };
    // Boxed: the permit wait is a large future, and every request's future would carry its
    // size even without a cluster.
    Box::pin(wait(tenant, shared, rule, deadline)).await.map(Some)
}

async fn wait(
    tenant: &Tenant,
    shared: &TenantCluster,
    rule: &Rule,
    deadline: Deadline,
) -> Result<ClusterGuard, ProxyError> {
    let cluster = &shared.cluster;
    let key = tenant::permit_key(&tenant.settings, rule.entity_header.as_ref());
    let until = deadline.0.min(Instant::now() + tenant.settings.queue_timeout);
    // A 429 seen anywhere holds new requests everywhere, until Zuora's wait is over. The
    // end is looked at again after the wait: another 429 may have moved it.
    while let Some(end) = cluster.cooling_until(&key) {
        let left = end.duration_since(SystemTime::now()).unwrap_or_default();
        if Instant::now() + left > until {
            // Said in whole seconds, rounded up, so that a caller that waits is not early.
            let retry_after_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(ProxyError::CoolingDown { retry_after_secs });
        }
        tokio::time::sleep(left).await;
    }
    let held = match cluster
        .acquire(&key, tenant.settings.cluster_max_concurrency, until)
        .await
    {
        Ok(permit) => Ok(permit),
        Err(Refusal::Overloaded) => return Err(ProxyError::Overloaded),
        // Redis failed: this replica's share of the cap, within the same wait.
        Err(Refusal::Unavailable) => {
            let slot = tokio::time::timeout_at(until, shared.fallback.clone().acquire_owned()).await;
            match slot {
                Ok(Ok(slot)) => Err(slot),
                _ => return Err(ProxyError::Overloaded),
            }
        }
    };
    Ok(ClusterGuard {
        cluster: cluster.clone(),
        key,
        _held: held,
    })
}

impl ClusterGuard {
    /// After Zuora answered: a 429 with `Retry-After` (or `RateLimit-Reset` with
    /// `RateLimit-Remaining: 0`) cools the whole cluster. Published in the background, so
    /// the answer is never delayed by Redis.
    pub(super) fn saw<B>(&self, answer: &Result<Response<B>, ProxyError>) {
        let Ok(response) = answer else {
            return;
        };
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        let now = SystemTime::now();
        let Some(wait) = backoff::server_hint(response.status(), response.headers(), now) else {
            return;
        };
        let (cluster, key) = (self.cluster.clone(), self.key.clone());
        tokio::spawn(async move {
            if let Err(error) = cluster.cool_down(&key, now + wait).await {
                tracing::debug!(tenant_key = %key, %error, "cool-down not shared (held locally)");
            }
        });
    }
}
