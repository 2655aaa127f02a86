//! The token manager's side of the cluster (`[cluster]` only): one token per tenant for every
//! replica. A token another replica fetched is taken from Redis instead of Zuora; when the
//! one held is due, the replica that gets the refresh lock fetches and shares, the others
//! wait for it; a rejoining replica shares its still-valid token instead of fetching. While
//! Redis is unavailable, or without a cluster, every replica fetches for itself as before.

use super::fetch::{self, FetchError, Fetched};
use super::Shared;
use crate::cluster::{ClusterError, Fingerprint, SharedToken};
use crate::secret::Secret;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// While another replica holds the refresh lock, Redis is looked at again at least this
/// often (a holder whose fetch failed releases the lock without any notice).
const LOCK_POLL_MS: u64 = 250;

/// A token ready to publish, fetched here or taken from Redis.
pub(super) struct Obtained {
    pub access_token: Secret,
    /// Counted from `since`.
    pub lifetime: Duration,
    pub since: Instant,
    /// Set when the token is the shared one (taken or stored): what a 401 invalidates.
    pub fingerprint: Option<Fingerprint>,
    /// False when it came from Redis: no call went to Zuora.
    pub fetched: bool,
}

impl Obtained {
    fn fetched(fetched: Fetched, since: Instant, fingerprint: Option<Fingerprint>) -> Obtained {
        Obtained {
            access_token: fetched.access_token,
            lifetime: fetched.lifetime,
            since,
            fingerprint,
            fetched: true,
        }
    }

    fn taken(token: SharedToken) -> Obtained {
        Obtained {
            access_token: Secret::new(token.access_token()),
            lifetime: token.expires_at.duration_since(SystemTime::now()).unwrap_or_default(),
            since: Instant::now(),
            fingerprint: Some(token.fingerprint),
            fetched: false,
        }
    }
}

/// The next token: the shared one if it is not the one held now (which is due), else a
/// fetch under the refresh lock, else the token another replica is fetching. Any Redis
/// failure ends in a fetch of this replica's own, exactly as without a cluster.
pub(super) async fn obtain(shared: &Shared) -> Result<Obtained, FetchError> {
    let Some((cluster, key)) = shared.cluster.as_ref().filter(|(c, _)| c.is_up()) else {
        return fetch_here(shared).await;
    };
    let secret = shared.tenant.client_secret.read().await?;
    let mut updates = cluster.token_updates(key);
    loop {
        match cluster.load_token(key, secret.expose()).await {
            Ok(Some(token)) if !is_held(shared, &token.fingerprint) => return Ok(Obtained::taken(token)),
            Ok(_) => {}
            Err(_) => return fetch_here(shared).await,
        }
        match cluster.try_refresh_lock(key).await {
            Ok(Some(lock)) => {
                // Another replica may have stored a new token between the look above and
                // taking the lock (and released the lock since): look once more, under it.
                if let Ok(Some(token)) = cluster.load_token(key, secret.expose()).await {
                    if !is_held(shared, &token.fingerprint) {
                        return Ok(Obtained::taken(token));
                    }
                }
                let since = Instant::now();
                let fetched = fetch::fetch(&shared.client, &shared.tenant).await?;
                let expires_at = SystemTime::now() + fetched.lifetime.saturating_sub(since.elapsed());
                let stored = cluster
                    .store_token(&lock, fetched.access_token.expose(), expires_at, secret.expose())
                    .await;
                let fingerprint = stored_or_log(shared, stored);
                return Ok(Obtained::fetched(fetched, since, fingerprint));
            }
            // Another replica is fetching: its token arrives by notice (or the next look).
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_millis(LOCK_POLL_MS), updates.changed()).await;
            }
            Err(_) => return fetch_here(shared).await,
        }
        if !cluster.is_up() {
            return fetch_here(shared).await;
        }
    }
}

async fn fetch_here(shared: &Shared) -> Result<Obtained, FetchError> {
    let since = Instant::now();
    let fetched = fetch::fetch(&shared.client, &shared.tenant).await?;
    Ok(Obtained::fetched(fetched, since, None))
}

/// Whether the shared token with `fingerprint` is no news: the one held now (which is due),
/// or the one Zuora just refused here.
fn is_held(shared: &Shared, fingerprint: &Fingerprint) -> bool {
    let refused = shared.refused.lock().unwrap_or_else(|e| e.into_inner());
    refused.as_ref() == Some(fingerprint)
        || shared
            .state
            .borrow()
            .token
            .as_ref()
            .is_some_and(|t| t.fingerprint.as_ref() == Some(fingerprint))
}

fn stored_or_log(shared: &Shared, stored: Result<SharedToken, ClusterError>) -> Option<Fingerprint> {
    match stored {
        Ok(token) => Some(token.fingerprint),
        Err(error) => {
            tracing::warn!(tenant = %shared.tenant.name, %error, "fetched token not shared; serving it locally");
            None
        }
    }
}

/// Between refreshes, after a notice that the shared token changed (another replica
/// refreshed it, or this replica rejoined): the shared token if it is a new one. A replica
/// that finds none holds a still-valid token of its own: it shares it when it rejoins, so the
/// fleet does not fetch at once after Redis comes back.
pub(super) async fn look(shared: &Shared, rejoined: bool) -> Option<Obtained> {
    let (cluster, key) = shared.cluster.as_ref().filter(|(c, _)| c.is_up())?;
    let secret = shared.tenant.client_secret.read().await.ok()?;
    match cluster.load_token(key, secret.expose()).await {
        Ok(Some(token)) if !is_held(shared, &token.fingerprint) => Some(Obtained::taken(token)),
        Ok(None) if rejoined => {
            share_held(shared, &secret).await;
            None
        }
        _ => None,
    }
}

/// Stores the token held now as the shared one, under the refresh lock.
async fn share_held(shared: &Shared, secret: &Secret) {
    let Some((cluster, key)) = &shared.cluster else {
        return;
    };
    let Some(token) = shared.state.borrow().usable(Instant::now()).cloned() else {
        return;
    };
    let Ok(Some(lock)) = cluster.try_refresh_lock(key).await else {
        return;
    };
    let left = token.expires_at.saturating_duration_since(Instant::now());
    let Some(access_token) = token.access_token() else {
        return;
    };
    let stored = cluster
        .store_token(&lock, access_token, SystemTime::now() + left, secret.expose())
        .await;
    if let Some(fingerprint) = stored_or_log(shared, stored) {
        tracing::info!(tenant = %shared.tenant.name, "still-valid token shared after rejoining the cluster");
        shared.state.send_modify(|s| {
            if let Some(held) = s.token.as_mut().filter(|t| t.generation == token.generation) {
                *held = std::sync::Arc::new(held.with_fingerprint(fingerprint));
            }
        });
    }
}

/// After Zuora refused the token with `fingerprint`: deletes it from Redis if it is still
/// the shared one, so that one replica fetches the next (in the background).
pub(super) fn invalidate(shared: &Shared, fingerprint: Option<&Fingerprint>) {
    let (Some((cluster, key)), Some(fingerprint)) = (&shared.cluster, fingerprint) else {
        return;
    };
    let (cluster, key, fingerprint) = (cluster.clone(), key.clone(), fingerprint.clone());
    tokio::spawn(async move {
        let _ = cluster.invalidate_if_current(&key, &fingerprint).await;
    });
}
