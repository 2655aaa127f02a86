//! The admin listener: liveness, readiness tied to the tokens, Prometheus metrics.

use crate::body::{full, ResponseBody};
use crate::proxy::Proxy;
use crate::token::Phase;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use tokio::time::Instant;

/// Answers one admin request.
pub async fn handle(proxy: Arc<Proxy>, request: Request<Incoming>) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&proxy),
        "/metrics" => {
            refresh_gauges(&proxy);
            let mut response = Response::new(full(proxy.metrics().encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "admin endpoints: /healthz /readyz /metrics\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 200 when not draining and every routable tenant holds a token valid at least
/// `admin.ready_min_ttl`; the body names each tenant's state either way.
fn readiness(proxy: &Proxy) -> Response<ResponseBody> {
    let snapshot = proxy.snapshot();
    let min_ttl = snapshot.config.live.ready_min_ttl;
    let now = Instant::now();
    let draining = proxy.is_draining();
    let mut ready = !draining;
    let mut tenants = serde_json::Map::new();
    for tenant in snapshot.routable_tenants() {
        let state = tenant.tokens.state();
        let expires_in = state
            .token
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(now).as_secs_f64());
        let fresh_enough = expires_in.is_some_and(|s| s >= min_ttl.as_secs_f64());
        ready &= fresh_enough;
        let label = match (&state.phase, fresh_enough) {
            (Phase::Failing { reason, .. }, _) => format!("failing: {reason}"),
            (_, true) => "ok".to_string(),
            (Phase::Fetching, false) => "fetching".to_string(),
            (Phase::Idle, false) => "expiring".to_string(),
        };
        tenants.insert(
            tenant.name().to_string(),
            json!({ "state": label, "expires_in_s": expires_in.map(|s| s.floor()) }),
        );
    }
    // Redis down is reported, never a reason to be unready: the fallback serves, and a Redis
    // outage must not take every replica out of service at once.
    let cluster = snapshot.cluster.as_ref().map(|c| {
        let stats = c.stats();
        json!({
            "mode": if stats.up { "cluster" } else { "local" },
            "permits_held": stats.permits_held,
            "permits_waiting": stats.permits_waiting,
        })
    });
    let mut body = json!({ "ready": ready, "draining": draining, "tenants": tenants });
    if let Some(cluster) = cluster {
        body["cluster"] = cluster;
    }
    let mut response = Response::new(full(format!("{body}\n")));
    *response.status_mut() = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Sets the gauges that are read off the tokens rather than counted as things happen.
pub fn refresh_gauges(proxy: &Proxy) {
    proxy.metrics().set_log_lines_dropped(crate::telemetry::dropped_lines());
    let snapshot = proxy.snapshot();
    if let Some(cluster) = &snapshot.cluster {
        proxy.metrics().set_cluster_stats(&cluster.stats());
    }
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    for tenant in snapshot.tenants.values() {
        let token = tenant.tokens.state().token;
        let remaining = match &token {
            Some(t) if t.expires_at > now => (t.expires_at - now).as_secs_f64(),
            Some(t) => -(now - t.expires_at).as_secs_f64(),
            None => -1.0,
        };
        proxy.metrics().set_token_expires_in(tenant.name(), remaining);
        // The token's monotonic deadline, placed on the wall clock as of this scrape.
        let expiry = token.map(|t| match t.expires_at.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall - (now - t.expires_at),
        });
        proxy.metrics().set_token_expiry(tenant.name(), expiry);
    }
}
