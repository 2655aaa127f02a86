//! Per-tenant OAuth token manager. One background task owns fetching (so however many
//! requests need a token, one call goes to Zuora) and publishes through a `watch` channel;
//! request paths read the current token without waiting for the fetcher.

pub mod fetch;
mod shared;

use crate::backoff::Backoff;
use crate::cluster::{Cluster, Fingerprint, TenantKey};
use crate::config::TenantSettings;
use crate::metrics::{FetchMeters, FetchResult};
use crate::trace::{span_id_hex, trace_id_hex, Attribute, Exporter, Kind, TraceContext};
use crate::upstream::UpstreamClient;
use http::HeaderValue;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// First retry delay after a failed fetch; doubles per failure.
pub const BACKOFF_MIN_SECS: u64 = 1;
/// Longest delay between retries of a failing token endpoint.
pub const BACKOFF_MAX_SECS: u64 = 60;
/// Longest wait honoured from a 429's `Retry-After` / `RateLimit-Reset`.
pub const RETRY_AFTER_MAX_SECS: u64 = 300;
/// Refresh jitter is at most this share of the refresh delay...
const JITTER_FRACTION: f64 = 0.05;
/// ...and never more than this, so replicas spread out without refreshing far too early.
const JITTER_MAX_SECS: u64 = 30;

/// A token is injected only while at least this much of its life remains (a quarter of
/// its life for tokens shorter than four times this), so that it cannot expire on its way.
const USE_MARGIN_MS: u64 = 1000;

/// An access token ready to inject. Its `Debug` never shows the value.
pub struct Token {
    header: HeaderValue,
    pub expires_at: Instant,
    /// Last moment the token is injected; see [`USE_MARGIN_MS`].
    use_by: Instant,
    pub generation: u64,
    /// With `[cluster]`: the shared token this one is, for a cluster-wide invalidation.
    fingerprint: Option<Fingerprint>,
}

impl Token {
    /// `Bearer <token>`, marked sensitive.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The last moment the token is injected.
    pub fn use_by(&self) -> Instant {
        self.use_by
    }

    /// Whether the token may be injected into a request sent at `now`.
    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.use_by
    }

    fn new(header: HeaderValue, expires_at: Instant, lifetime: Duration, generation: u64) -> Token {
        let margin = Duration::from_millis(USE_MARGIN_MS).min(lifetime / 4);
        Token {
            header,
            expires_at,
            use_by: expires_at - margin,
            generation,
            fingerprint: None,
        }
    }

    /// The same token, known to be the shared one with `fingerprint`.
    fn with_fingerprint(&self, fingerprint: Fingerprint) -> Token {
        Token {
            header: self.header.clone(),
            fingerprint: Some(fingerprint),
            ..*self
        }
    }

    /// The bare access token, for sealing it into Redis.
    fn access_token(&self) -> Option<&str> {
        self.header.to_str().ok()?.strip_prefix("Bearer ")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What the fetcher is doing, for readiness and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Fetching,
    Idle,
    Failing { reason: String, retry_at: Instant },
}

/// The published state of one tenant's token.
#[derive(Debug, Clone)]
pub struct TokenState {
    pub token: Option<Arc<Token>>,
    pub phase: Phase,
}

impl TokenState {
    fn usable(&self, now: Instant) -> Option<&Arc<Token>> {
        self.token.as_ref().filter(|t| t.is_usable(now))
    }
}

/// No usable token arrived within the tenant's `token_wait`.
#[derive(Debug, thiserror::Error)]
#[error("no usable token within the wait limit")]
pub struct TokenUnavailable;

struct Shared {
    tenant: Arc<TenantSettings>,
    client: UpstreamClient,
    fetches: FetchMeters,
    state: watch::Sender<TokenState>,
    /// Wakes the fetcher when a request found no usable token or a token was invalidated.
    kick: Notify,
    generation: AtomicU64,
    /// With `[cluster]`: where the tenant's token is shared with the other replicas.
    cluster: Option<(Cluster, TenantKey)>,
    /// The shared token Zuora last refused here: never taken from Redis again, even while
    /// its deletion there is still on its way.
    refused: std::sync::Mutex<Option<Fingerprint>>,
    /// Where each fetch's span goes, when spans are exported.
    spans: Option<Exporter>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle to a tenant's token; cloning shares the same fetcher. The fetcher stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct TokenManager {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

impl TokenManager {
    /// Starts the fetcher at once; the first token is fetched in the background. `client`
    /// is a handle to the tenant's own upstream client.
    pub fn start(
        tenant: Arc<TenantSettings>,
        client: UpstreamClient,
        fetches: FetchMeters,
        cluster: Option<(Cluster, TenantKey)>,
        spans: Option<Exporter>,
    ) -> TokenManager {
        let (state, _) = watch::channel(TokenState {
            token: None,
            phase: Phase::Fetching,
        });
        let shared = Arc::new(Shared {
            tenant,
            client,
            fetches,
            state,
            kick: Notify::new(),
            generation: AtomicU64::new(0),
            cluster,
            refused: std::sync::Mutex::new(None),
            spans,
        });
        let task = tokio::spawn(refresh_loop(shared.clone()));
        TokenManager {
            shared,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }

    /// A snapshot of the published state.
    pub fn state(&self) -> TokenState {
        self.shared.state.borrow().clone()
    }

    /// The current token if it is usable now; never waits for the fetcher.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.shared.state.borrow().usable(Instant::now()).cloned()
    }

    /// The current token, or the next one the fetcher publishes within `token_wait`.
    pub async fn get(&self) -> Result<Arc<Token>, TokenUnavailable> {
        if let Some(token) = self.current() {
            return Ok(token);
        }
        self.shared.kick.notify_one();
        let mut rx = self.shared.state.subscribe();
        let wait = rx.wait_for(|s| s.usable(Instant::now()).is_some());
        let token = match tokio::time::timeout(self.shared.tenant.token_wait, wait).await {
            Ok(Ok(state)) => state.token.clone(),
            _ => None,
        };
        token.ok_or(TokenUnavailable)
    }

    /// Waits, however long it takes, until a usable token is published.
    pub async fn wait_usable(&self) -> Arc<Token> {
        let mut rx = self.shared.state.subscribe();
        loop {
            let Ok(state) = rx.wait_for(|s| s.usable(Instant::now()).is_some()).await else {
                // The fetcher is gone: no token will ever come.
                return std::future::pending().await;
            };
            if let Some(token) = state.usable(Instant::now()) {
                return token.clone();
            }
        }
    }

    /// Drops `token` after Zuora refused it, unless a newer one replaced it already: however
    /// many requests see the same 401, the token is fetched once more. True if this call
    /// invalidated it.
    pub fn invalidate(&self, token: &Token) -> bool {
        let dropped = self.shared.state.send_if_modified(|s| {
            if s.token.as_ref().is_some_and(|t| t.generation == token.generation) {
                s.token = None;
                true
            } else {
                false
            }
        });
        if dropped {
            tracing::warn!(tenant = %self.shared.tenant.name, generation = token.generation, "token invalidated after 401 from Zuora");
            if let Some(fingerprint) = &token.fingerprint {
                *self.shared.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint.clone());
            }
            shared::invalidate(&self.shared, token.fingerprint.as_ref());
            self.shared.kick.notify_one();
        }
        dropped
    }
}

/// When to refresh a token of `lifetime`: `margin` before expiry, but never before half its
/// life (a token shorter than the margin is refreshed halfway), minus a little jitter so that
/// replicas started together do not refresh together. `unit` is uniform in [0, 1).
pub fn refresh_delay(lifetime: Duration, margin: Duration, unit: f64) -> Duration {
    let base = lifetime.saturating_sub(margin).max(lifetime / 2);
    let jitter = base.mul_f64(JITTER_FRACTION).min(Duration::from_secs(JITTER_MAX_SECS));
    base - jitter.mul_f64(unit.clamp(0.0, 1.0))
}

async fn refresh_loop(shared: Arc<Shared>) {
    let tenant = shared.tenant.name.clone();
    let new_backoff = || {
        Backoff::new(
            Duration::from_secs(BACKOFF_MIN_SECS),
            Duration::from_secs(BACKOFF_MAX_SECS),
        )
    };
    let mut backoff = new_backoff();
    let mut refresh_at = Instant::now();
    let mut updates = shared.cluster.as_ref().map(|(c, k)| c.token_updates(k));
    let mut up = shared.cluster.as_ref().map(|(c, _)| c.watch_up());
    let mut was_up = shared.cluster.as_ref().is_some_and(|(c, _)| c.is_up());
    loop {
        // Sleep until the refresh is due, or until a request needs a token now, or (with a
        // cluster) until the shared token changed.
        loop {
            let needed = shared.state.borrow().usable(Instant::now()).is_none();
            if needed || Instant::now() >= refresh_at {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(refresh_at) => {}
                _ = shared.kick.notified() => {}
                _ = cluster_changed(&mut updates, &mut up) => {
                    let up_now = shared.cluster.as_ref().is_some_and(|(c, _)| c.is_up());
                    let rejoined = up_now && !was_up;
                    was_up = up_now;
                    if let Some(obtained) = shared::look(&shared, rejoined).await {
                        refresh_at = publish(&shared, obtained, &TraceContext::root(true));
                    }
                }
            }
        }
        shared.state.send_modify(|s| s.phase = Phase::Fetching);
        // Each fetch is a trace of its own: no request owns it, however many wait for it.
        let trace = TraceContext::root(true);
        let started = shared.spans.as_ref().map(|_| SystemTime::now());
        let result = shared::obtain(&shared).await;
        export_fetch(&shared, &trace, started, &result);
        match result {
            Ok(obtained) => {
                backoff = new_backoff();
                refresh_at = publish(&shared, obtained, &trace);
            }
            Err(error) => {
                let wait = match error.retry_after() {
                    Some(hint) => hint.min(Duration::from_secs(RETRY_AFTER_MAX_SECS)),
                    None => backoff.next(fastrand::f64()),
                };
                let retry_at = Instant::now() + wait;
                let reason = error.to_string();
                shared.fetches.count(error.kind());
                let still_valid = shared.state.borrow().usable(Instant::now()).is_some();
                tracing::warn!(
                    tenant = %tenant,
                    trace_id = %Hex(&trace_id_hex(trace.trace_id)),
                    span_id = %Hex(&span_id_hex(trace.span_id)),
                    reason = %reason,
                    retry_in_s = wait.as_secs_f64(),
                    serving_cached_token = still_valid,
                    "token refresh failed"
                );
                shared
                    .state
                    .send_modify(|s| s.phase = Phase::Failing { reason, retry_at });
                refresh_at = retry_at;
                // Requests keep being served from a still-valid token meanwhile; a demand for a
                // token does not cut the backoff short, so a failing endpoint is not hammered.
                tokio::time::sleep_until(retry_at).await;
            }
        }
    }
}

/// Ids in hex, as a log field.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.0).map_err(|_| fmt::Error)?)
    }
}

/// The fetch's CLIENT span, when spans are exported: named for the token call, with the
/// tenant and the fetch's result (a token taken from the cluster is `shared`).
fn export_fetch(
    shared: &Shared,
    trace: &TraceContext,
    started: Option<SystemTime>,
    result: &Result<shared::Obtained, fetch::FetchError>,
) {
    let (Some(exporter), Some(start)) = (&shared.spans, started) else {
        return;
    };
    let url = &shared.tenant.token_url;
    let outcome = match result {
        Ok(obtained) if !obtained.fetched => "shared",
        Ok(_) => FetchResult::Ok.as_str(),
        Err(error) => error.kind().as_str(),
    };
    let mut attributes = vec![
        Attribute::new("http.request.method", "POST"),
        Attribute::new("server.address", url.host_str().unwrap_or_default().to_string()),
        Attribute::new(
            "server.port",
            i64::from(url.port_or_known_default().unwrap_or_default()),
        ),
        Attribute::new("url.path", url.path().to_string()),
        Attribute::new("zuora.tenant", shared.tenant.name.clone()),
        Attribute::new("zuora.token.result", outcome),
    ];
    if let Err(fetch::FetchError::Status { status, .. }) = result {
        attributes.push(Attribute::new("http.response.status_code", i64::from(status.as_u16())));
    }
    let error = result.as_ref().err().map(|e| e.kind().as_str().into());
    if let Some(error) = &error {
        attributes.push(Attribute::new("error.type", std::borrow::Cow::clone(error)));
    }
    exporter.export(crate::trace::Span {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent: None,
        kind: Kind::Client,
        name: "POST /oauth/token".into(),
        start,
        end: SystemTime::now(),
        attributes,
        error,
    });
}

/// Publishes a token fetched here or taken from the cluster; returns when to refresh it.
fn publish(shared: &Shared, obtained: shared::Obtained, trace: &TraceContext) -> Instant {
    let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
    // Lifetime counts from when the request left, so the token never outlives Zuora's view.
    let started = obtained.since;
    let expires_at = started + obtained.lifetime;
    let delay = refresh_delay(obtained.lifetime, shared.tenant.refresh_margin, fastrand::f64());
    let mut header = HeaderValue::try_from(format!("Bearer {}", obtained.access_token.expose()))
        .expect("fetch and seal carry only visible ASCII tokens");
    header.set_sensitive(true);
    let mut token = Token::new(header, expires_at, obtained.lifetime, generation);
    token.fingerprint = obtained.fingerprint;
    shared.state.send_modify(|s| {
        s.token = Some(Arc::new(token));
        s.phase = Phase::Idle;
    });
    let message = if obtained.fetched {
        shared.fetches.count(FetchResult::Ok);
        "token fetched"
    } else {
        "shared token taken from the cluster"
    };
    tracing::info!(
        tenant = %shared.tenant.name,
        trace_id = %Hex(&trace_id_hex(trace.trace_id)),
        span_id = %Hex(&span_id_hex(trace.span_id)),
        generation,
        expires_in_s = obtained.lifetime.as_secs_f64(),
        refresh_in_s = delay.as_secs_f64(),
        fetch_ms = started.elapsed().as_millis() as u64,
        "{message}"
    );
    started + delay
}

/// Resolves when the shared token may have changed or the cluster's mode switched; never
/// without a cluster.
async fn cluster_changed(updates: &mut Option<watch::Receiver<u64>>, up: &mut Option<watch::Receiver<bool>>) {
    let (Some(updates), Some(up)) = (updates, up) else {
        return std::future::pending().await;
    };
    let changed = tokio::select! {
        changed = updates.changed() => changed,
        changed = up.changed() => changed,
    };
    if changed.is_err() {
        // The cluster is gone: nothing will change any more.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_delay_table() {
        let s = Duration::from_secs;
        // Zuora's hour-long token with the default 300 s margin.
        assert_eq!(refresh_delay(s(3600), s(300), 0.0), s(3300));
        assert_eq!(
            refresh_delay(s(3600), s(300), 0.999_999),
            s(3300) - s(30).mul_f64(0.999_999)
        );
        // Shorter than the margin: refreshed halfway, minus up to 5 %.
        assert_eq!(refresh_delay(s(2), s(300), 0.0), Duration::from_millis(1000));
        assert_eq!(refresh_delay(s(2), s(300), 1.0), Duration::from_millis(950));
        // Never later than the expiry, never negative.
        for (life, margin) in [(1u64, 0u64), (10, 10), (3599, 3600), (0, 0)] {
            let d = refresh_delay(s(life), s(margin), 1.0);
            assert!(d <= s(life));
        }
    }

    #[test]
    fn a_token_is_not_injected_in_its_last_moments() {
        let s = Duration::from_secs;
        let now = Instant::now();
        let hour = Token::new(HeaderValue::from_static("Bearer a"), now + s(3600), s(3600), 1);
        assert!(hour.is_usable(now + s(3598)));
        assert!(!hour.is_usable(now + s(3599)), "less than 1 s left");
        assert!(!hour.is_usable(now + s(3600)));
        // A one-second token keeps its last quarter.
        let short = Token::new(HeaderValue::from_static("Bearer b"), now + s(1), s(1), 2);
        assert!(short.is_usable(now + Duration::from_millis(700)));
        assert!(!short.is_usable(now + Duration::from_millis(750)));
    }

    #[test]
    fn token_debug_hides_the_value() {
        let t = Token::new(
            HeaderValue::from_static("Bearer abc123"),
            Instant::now(),
            Duration::from_secs(1),
            1,
        );
        assert!(!format!("{t:?}").contains("abc123"));
    }
}
