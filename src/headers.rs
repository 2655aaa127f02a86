//! Header rules shared by both directions: hop-by-hop stripping (RFC 9110 §7.6.1) and the
//! rewrite of a caller's request headers into what Zuora receives.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static ZUORA_TRACK_ID: HeaderName = HeaderName::from_static("zuora-track-id");
pub const ZUORA_ENTITY_IDS: HeaderName = HeaderName::from_static("zuora-entity-ids");
pub const ZUORA_ORG_IDS: HeaderName = HeaderName::from_static("zuora-org-ids");
pub static PROXY_ERROR: HeaderName = HeaderName::from_static("x-zuora-proxy-error");

/// Removes hop-by-hop headers, including every header named in `Connection`. Used for
/// requests toward Zuora and for responses toward the caller alike.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_named(headers);
    remove_matching(headers, is_hop_by_hop);
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus every
/// `Proxy-*` header (the legacy `Proxy-Connection` included). A `match` on the name, which
/// compiles to a switch on its length: every header of every request goes through here.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Removes the headers that `Connection` names (before `Connection` itself goes).
fn remove_connection_named(headers: &mut HeaderMap) {
    let connection = headers.get_all(header::CONNECTION);
    // `keep-alive` and `close`, what nearly every connection says, name no header beyond the
    // hop-by-hop ones that go anyway.
    let only_options = connection.iter().all(|v| {
        v.as_bytes().split(|&b| b == b',').all(|token| {
            let token = token.trim_ascii();
            token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
        })
    });
    if only_options {
        return;
    }
    let named: Vec<HeaderName> = connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Removes every header whose name is `doomed`: a pass over the names for each one removed,
/// with no list allocated (a message carries one or two such headers, and at most hyper's
/// `max_headers`).
fn remove_matching(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
}

/// Whether a caller's header is dropped before the request goes to Zuora: hop-by-hop
/// headers, and those the caller may not set. Credentials and tenancy are the proxy's to
/// decide, the host is the tenant's, forwarding headers (every `X-Forwarded-*` too) would leak
/// internal addresses, `Expect` is answered by this hop, and the method/URL overrides could
/// make a backend that honours them run another call than the one the allowlist admitted.
/// The caller's W3C trace context is replaced by this hop's (`tracestate` goes on only when
/// the caller's checked out).
fn is_caller_forbidden(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "authorization"
                | "host"
                | "expect"
                | "forwarded"
                | "x-real-ip"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override"
                | "x-original-url"
                | "x-rewrite-url"
                | "x-original-method"
                | "zuora-entity-ids"
                | "zuora-org-ids"
                | "traceparent"
                | "tracestate"
        )
        || name.as_str().starts_with("x-forwarded-")
}

const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What the proxy decides for one upstream request.
pub struct Injected<'a> {
    pub authorization: &'a HeaderValue,
    pub track_id: &'a HeaderValue,
    pub entity_ids: Option<&'a HeaderValue>,
    pub org_ids: Option<&'a HeaderValue>,
    /// The caller's `tracestate`, when it is to go on.
    pub tracestate: Option<&'a HeaderValue>,
}

/// Sets `Authorization`, marked sensitive so that no debug output or HPACK table keeps it.
pub fn set_authorization(headers: &mut HeaderMap, value: &HeaderValue) {
    let mut authorization = value.clone();
    authorization.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, authorization);
}

/// Turns the caller's headers into the upstream request's headers, in place.
pub fn rewrite_request(headers: &mut HeaderMap, injected: &Injected<'_>) {
    remove_connection_named(headers);
    remove_matching(headers, is_caller_forbidden);
    set_authorization(headers, injected.authorization);
    headers.insert(ZUORA_TRACK_ID.clone(), injected.track_id.clone());
    if let Some(v) = injected.entity_ids {
        headers.insert(ZUORA_ENTITY_IDS.clone(), v.clone());
    }
    if let Some(v) = injected.org_ids {
        headers.insert(ZUORA_ORG_IDS.clone(), v.clone());
    }
    if let Some(v) = injected.tracestate {
        headers.insert(TRACESTATE.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort();
        n
    }

    /// Headers in, header names kept.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

    #[test]
    fn hop_by_hop_table() {
        let cases: &[Case] = &[
            (&[("content-type", "application/json")], &["content-type"]),
            (&[("connection", "keep-alive"), ("keep-alive", "timeout=5")], &[]),
            (
                &[
                    ("connection", "close, X-Secret-Hop"),
                    ("x-secret-hop", "1"),
                    ("x-keep", "1"),
                ],
                &["x-keep"],
            ),
            (
                &[("connection", "x-a"), ("connection", "x-b"), ("x-a", "1"), ("x-b", "1")],
                &[],
            ),
            (
                &[
                    ("te", "trailers"),
                    ("trailer", "x-sum"),
                    ("transfer-encoding", "chunked"),
                ],
                &[],
            ),
            (
                &[
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAA"),
                    ("connection", "upgrade, http2-settings"),
                ],
                &[],
            ),
            (
                &[
                    ("proxy-authorization", "Basic x"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-connection", "keep-alive"),
                ],
                &[],
            ),
            (&[("proxy-whatever", "1"), ("x-proxy-ok", "1")], &["x-proxy-ok"]),
            (&[("connection", "bad header name!, x-a"), ("x-a", "1")], &[]),
            (
                &[
                    ("accept-encoding", "gzip"),
                    ("content-encoding", "gzip"),
                    ("zuora-version", "2024-01-01"),
                ],
                &["accept-encoding", "content-encoding", "zuora-version"],
            ),
        ];
        for (input, kept) in cases {
            let mut h = map(input);
            strip_hop_by_hop(&mut h);
            assert_eq!(names(&h), kept.to_vec(), "{input:?}");
        }
    }

    #[test]
    fn rewrite_replaces_what_the_caller_may_not_set() {
        let mut h = map(&[
            ("authorization", "Bearer caller"),
            ("host", "evil.example"),
            ("zuora-entity-ids", "caller-entity"),
            ("zuora-org-ids", "caller-org"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-client-cert", "Hash=abc"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=10.0.0.1"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/v1/accounts/A-1"),
            ("x-rewrite-url", "/v1/accounts/A-1"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwardedness", "kept: not a forwarding header"),
            ("zuora-track-id", "caller-track"),
            ("idempotency-key", "k1"),
            ("connection", "keep-alive"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("tracestate", "caller=1"),
        ]);
        let auth = HeaderValue::from_static("Bearer tok");
        let track = HeaderValue::from_static("t-1");
        let entity = HeaderValue::from_static("8a8aa0ad-5ab8-4a9b-9f2e-2f1c5b0c1d3e");
        let state = HeaderValue::from_static("checked=1");
        rewrite_request(
            &mut h,
            &Injected {
                authorization: &auth,
                track_id: &track,
                entity_ids: Some(&entity),
                org_ids: None,
                tracestate: Some(&state),
            },
        );
        assert_eq!(
            names(&h),
            vec![
                "authorization",
                "idempotency-key",
                "tracestate",
                "x-forwardedness",
                "zuora-entity-ids",
                "zuora-track-id"
            ]
        );
        assert_eq!(h["tracestate"], "checked=1");
        assert_eq!(h["authorization"], "Bearer tok");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["zuora-track-id"], "t-1");
        assert_eq!(h["zuora-entity-ids"], entity);
        assert_eq!(h.get_all("authorization").iter().count(), 1);
    }
}
