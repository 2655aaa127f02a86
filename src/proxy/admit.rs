//! Admission: is this request one the proxy forwards at all, and under which rule? Framing,
//! allowlist, track id, rule, tenant. Nothing here waits.

use super::record::Record;
use crate::error::ProxyError;
use crate::headers::ZUORA_TRACK_ID;
use crate::routes::{self, ClientIdentity, Peer, Resolution, Route, Rule};
use crate::server::AmbiguousFraming;
use crate::snapshot::Snapshot;
use crate::tenant::Tenant;
use crate::trace::trace_id_hex;
use crate::track_id;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Uri, Version};
use std::sync::Arc;

/// A request the proxy will forward, and what its rule decided.
pub(super) struct Admitted<'s> {
    pub route: &'s Arc<Route>,
    pub rule: &'s Arc<Rule>,
    pub tenant: &'s Tenant,
    pub track_id: HeaderValue,
}

pub(super) fn admit<'s>(
    snapshot: &'s Snapshot,
    parts: &Parts,
    record: &mut Record,
) -> Result<Admitted<'s>, ProxyError> {
    // Both Content-Length and Transfer-Encoding: the classic request-smuggling shape. hyper
    // drops Content-Length, so the listener marks such heads; the proxy refuses them
    // rather than guess what the sender meant.
    if parts.extensions.get::<AmbiguousFraming>().is_some() {
        return Err(ProxyError::AmbiguousFraming);
    }
    // A valid caller track id is echoed on every answer, refusals included; an invalid one
    // is refused once the route is known.
    let caller_track_id = caller_track_id(&parts.headers);
    if let Ok(Some(id)) = &caller_track_id {
        record.track_id = Some(id.clone());
    }
    if !valid_host(parts) {
        return Err(ProxyError::InvalidHost);
    }
    let live = &snapshot.config.live;
    let route = allowed_route(snapshot.allowlist(), parts, record)?;
    let caller_track_id = caller_track_id?;
    let caller = parts.extensions.get::<ClientIdentity>();
    let peer = parts.extensions.get::<Peer>();
    let rule =
        routes::select(&live.rules, &route.name, &parts.headers, caller, peer).ok_or(ProxyError::NoMatchingRule)?;
    record.rule = Some(rule.clone());
    let prefix = rule.track_id_prefix.as_deref();
    let track_id = caller_track_id.unwrap_or_else(|| match route.track_id_from_trace {
        // One id for Zuora's support, the logs and the trace.
        true => track_id::with_hex(prefix, &trace_id_hex(record.trace.trace_id)),
        false => track_id::generate(prefix),
    });
    record.track_id = Some(track_id.clone());
    let tenant = snapshot
        .tenants
        .get(&rule.tenant)
        .expect("validation ties every rule to a tenant");
    record.tenant = Some(tenant.settings.clone());
    Ok(Admitted {
        route,
        rule,
        tenant,
        track_id,
    })
}

/// The route on the allowlist that this method and raw path match.
fn allowed_route<'s>(
    routes: &'s [Arc<Route>],
    parts: &Parts,
    record: &mut Record,
) -> Result<&'s Arc<Route>, ProxyError> {
    match routes::resolve(routes, &parts.method, parts.uri.path()) {
        Resolution::Allowed(route) => {
            record.route = Some(route.clone());
            Ok(route)
        }
        Resolution::BadParam { route, name, reason } => {
            record.route = Some(route.clone());
            Err(ProxyError::InvalidPathParameter { name, reason })
        }
        Resolution::MethodNotAllowed { allow } => Err(ProxyError::MethodNotAllowed { allow }),
        Resolution::NotFound => Err(ProxyError::RouteNotFound),
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` (HTTP/1.0 may omit it), and
/// userinfo belongs in neither `Host` nor an absolute-form target (RFC 9110 §4.2.4). The
/// proxy never routes by either, but a request that breaks these rules is not one to pass on.
fn valid_host(parts: &Parts) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return false,
        (None, None) => return parts.version < Version::HTTP_11 && !has_userinfo(&parts.uri),
        (Some(host), None) => host,
    };
    !host.as_bytes().contains(&b'@') && !has_userinfo(&parts.uri)
}

fn has_userinfo(uri: &Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@'))
}

/// The caller's `Zuora-Track-Id`: absent, or present once and valid.
fn caller_track_id(headers: &HeaderMap) -> Result<Option<HeaderValue>, ProxyError> {
    let mut values = headers.get_all(&ZUORA_TRACK_ID).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) if track_id::is_valid(v.as_bytes()) => Ok(Some(v.clone())),
        _ => Err(ProxyError::InvalidTrackId),
    }
}
