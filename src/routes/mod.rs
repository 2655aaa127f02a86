//! The allowlist (routes) and the routing rules that pick tenant, entity/org headers and the
//! track-id prefix for an allowed request.

pub mod template;

use crate::labels::label_enum;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
pub use template::{PathMatch, PathTemplate};

/// Who a caller is, from its verified client certificate: what `when_client_cert_subject`
/// rules match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// RFC 4514 form, e.g. `CN=billing,O=Acme`.
    pub subject: String,
    pub common_name: Option<String>,
}

impl ClientIdentity {
    /// A rule's `when_client_cert_subject` matches the common name or the whole subject.
    pub fn matches(&self, wanted: &str) -> bool {
        self.common_name.as_deref() == Some(wanted) || self.subject == wanted
    }
}

/// Where a caller's connection came from: what `when_peer_uid` / `when_peer_gid` rules match
/// on, and what the access line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP caller's address.
    Tcp(SocketAddr),
    /// A Unix-socket caller's credentials, as the kernel recorded them when it connected
    /// (`SO_PEERCRED`): they cannot be forged by the caller.
    Unix { uid: u32, gid: u32, pid: Option<i32> },
}

/// One allowed method + path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub method: Method,
    pub template: PathTemplate,
    pub retry: RetryPolicy,
    pub idempotency_key: IdempotencyKey,
    /// Zuora's `/v1` failures inside a 200 (`"success": false`) are read: logged by reason
    /// code, and the retryable ones retried as a 429 would be.
    pub zuora_body_errors: bool,
    /// A request without a caller's `Zuora-Track-Id` gets its trace id as track id.
    pub track_id_from_trace: bool,
}

/// Whether the proxy gives a request an `Idempotency-Key` of its own (a route's
/// `idempotency_key`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdempotencyKey {
    /// Only a key the caller sends goes to Zuora.
    #[default]
    Caller,
    /// A request that comes without a key gets a generated one, the same for each of its
    /// attempts: Zuora then runs it at most once, so it may be retried.
    Generate,
}

impl IdempotencyKey {
    /// The `idempotency_key` word, as written in the configuration.
    pub fn parse(text: &str) -> Option<IdempotencyKey> {
        match text {
            "caller" => Some(IdempotencyKey::Caller),
            "generate" => Some(IdempotencyKey::Generate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdempotencyKey::Caller => "caller",
            IdempotencyKey::Generate => "generate",
        }
    }
}

label_enum! {
    /// What an attempt's outcome may be retried on (a route's `retry_on`), and the `reason`
    /// label of the retries metric.
    pub enum RetryOn {
        Status429 => "429",
        Status502 => "502",
        Status503 => "503",
        Status504 => "504",
        Connect => "connect",
    }
}

impl RetryOn {
    /// The `retry_on` word, as written in the configuration.
    pub fn parse(text: &str) -> Option<RetryOn> {
        RetryOn::ALL.iter().copied().find(|r| r.as_str() == text)
    }

    /// The reason a status stands for, if it is a retryable one.
    pub fn of_status(status: StatusCode) -> Option<RetryOn> {
        RetryOn::ALL
            .iter()
            .copied()
            .find(|r| r.as_str().as_bytes() == status.as_str().as_bytes())
    }
}

/// When a request on a route may be sent again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The outcomes retried (`retry_on`), each once, in the order written.
    pub on: Vec<RetryOn>,
    /// Repeating the call does no harm, whatever its method.
    pub idempotent: bool,
}

impl RetryPolicy {
    /// A request may be retried only when repeating it is harmless: an idempotent method,
    /// a route marked idempotent, or an `Idempotency-Key` (the caller's or a generated one).
    pub fn allows(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.attempts > 0 && (self.idempotent || method.is_idempotent() || headers.contains_key("idempotency-key"))
    }

    /// Whether this outcome is one the route retries on.
    pub fn retries_on(&self, reason: RetryOn) -> bool {
        self.on.contains(&reason)
    }

    /// `retry_on` as written in the configuration.
    pub fn describe(&self) -> Vec<String> {
        self.on.iter().map(|r| r.as_str().to_string()).collect()
    }
}

/// One routing rule: when it applies, and what it decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Route names the rule applies to; `None` is every route.
    pub routes: Option<Vec<String>>,
    /// Lower-case header names with the exact value each must have.
    pub when_headers: Vec<(HeaderName, String)>,
    /// The caller's client certificate must have this common name or subject (TLS listener only).
    pub when_client_cert_subject: Option<String>,
    /// The caller's uid must be one of these (Unix-socket listener only); empty: any caller.
    pub when_peer_uid: Vec<u32>,
    /// The caller's primary gid must be one of these (Unix-socket listener only); empty: any.
    pub when_peer_gid: Vec<u32>,
    pub tenant: String,
    pub entity_ids: Vec<String>,
    pub org_ids: Vec<String>,
    pub track_id_prefix: Option<String>,
    /// `Zuora-Entity-Ids` as sent, built once.
    pub entity_header: Option<HeaderValue>,
    /// `Zuora-Org-Ids` as sent (comma-joined), built once.
    pub org_header: Option<HeaderValue>,
}

/// What the allowlist says about a request.
#[derive(Debug)]
pub enum Resolution<'a> {
    Allowed(&'a Arc<Route>),
    /// A placeholder's value was refused (400).
    BadParam {
        route: &'a Arc<Route>,
        name: String,
        reason: &'static str,
    },
    /// The path is allowed for other methods only (405).
    MethodNotAllowed {
        allow: Vec<Method>,
    },
    /// Nothing on the allowlist has this path (404).
    NotFound,
}

/// Resolves a method and raw path against the allowlist. A full match wins over a refused
/// placeholder, which wins over a method mismatch.
pub fn resolve<'a>(routes: &'a [Arc<Route>], method: &Method, path: &str) -> Resolution<'a> {
    let mut bad = None;
    let mut allow: Vec<Method> = Vec::new();
    for route in routes {
        match route.template.matches(path) {
            PathMatch::No => {}
            PathMatch::Yes if route.method == *method => return Resolution::Allowed(route),
            PathMatch::BadParam { name, reason } if route.method == *method => {
                bad.get_or_insert(Resolution::BadParam { route, name, reason });
            }
            PathMatch::Yes | PathMatch::BadParam { .. } => {
                if !allow.contains(&route.method) {
                    allow.push(route.method.clone());
                }
            }
        }
    }
    match bad {
        Some(bad) => bad,
        None if !allow.is_empty() => Resolution::MethodNotAllowed { allow },
        None => Resolution::NotFound,
    }
}

impl Rule {
    /// Whether this rule applies to a request for `route` with these headers, from this caller
    /// (its certificate, if any) on this connection.
    pub fn applies(
        &self,
        route: &str,
        headers: &HeaderMap,
        caller: Option<&ClientIdentity>,
        peer: Option<&Peer>,
    ) -> bool {
        if let Some(routes) = &self.routes {
            if !routes.iter().any(|r| r == route) {
                return false;
            }
        }
        if let Some(wanted) = &self.when_client_cert_subject {
            if !caller.is_some_and(|c| c.matches(wanted)) {
                return false;
            }
        }
        if !self.peer_matches(peer) {
            return false;
        }
        self.when_headers.iter().all(|(name, want)| {
            let mut values = headers.get_all(name).iter();
            // Exactly one value, equal to the wanted one: a repeated header is ambiguous.
            matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes() == want.as_bytes())
        })
    }

    /// Both lists, when given, must contain the caller's id; a TCP caller has none.
    fn peer_matches(&self, peer: Option<&Peer>) -> bool {
        if self.when_peer_uid.is_empty() && self.when_peer_gid.is_empty() {
            return true;
        }
        let Some(Peer::Unix { uid, gid, .. }) = peer else {
            return false;
        };
        (self.when_peer_uid.is_empty() || self.when_peer_uid.contains(uid))
            && (self.when_peer_gid.is_empty() || self.when_peer_gid.contains(gid))
    }
}

/// First rule that applies, if any.
pub fn select<'a>(
    rules: &'a [Arc<Rule>],
    route: &str,
    headers: &HeaderMap,
    caller: Option<&ClientIdentity>,
    peer: Option<&Peer>,
) -> Option<&'a Arc<Rule>> {
    rules.iter().find(|rule| rule.applies(route, headers, caller, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, method: Method, path: &str) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            method,
            template: PathTemplate::parse(path).unwrap(),
            retry: RetryPolicy::default(),
            idempotency_key: IdempotencyKey::Caller,
            zuora_body_errors: false,
            track_id_from_trace: false,
        })
    }

    fn rule(name: &str, routes: Option<&[&str]>, when: &[(&str, &str)], tenant: &str) -> Arc<Rule> {
        Arc::new(Rule {
            name: name.into(),
            routes: routes.map(|r| r.iter().map(|s| s.to_string()).collect()),
            when_headers: when
                .iter()
                .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.to_string()))
                .collect(),
            when_client_cert_subject: None,
            when_peer_uid: vec![],
            when_peer_gid: vec![],
            tenant: tenant.into(),
            entity_ids: vec![],
            org_ids: vec![],
            track_id_prefix: None,
            entity_header: None,
            org_header: None,
        })
    }

    fn select_h<'a>(rules: &'a [Arc<Rule>], route: &str, h: &HeaderMap) -> Option<&'a Arc<Rule>> {
        select(rules, route, h, None, None)
    }

    #[test]
    fn client_certificate_subject_rules() {
        let mut r = (*rule("mtls", None, &[], "eu")).clone();
        r.when_client_cert_subject = Some("billing".into());
        let rules = vec![Arc::new(r), rule("fallback", None, &[], "default")];
        let h = HeaderMap::new();
        let billing = ClientIdentity {
            subject: "CN=billing,O=Acme".into(),
            common_name: Some("billing".into()),
        };
        let other = ClientIdentity {
            subject: "CN=other".into(),
            common_name: Some("other".into()),
        };
        assert_eq!(select(&rules, "abort", &h, Some(&billing), None).unwrap().name, "mtls");
        assert_eq!(
            select(&rules, "abort", &h, Some(&other), None).unwrap().name,
            "fallback"
        );
        assert_eq!(
            select(&rules, "abort", &h, None, None).unwrap().name,
            "fallback",
            "plain HTTP has no subject"
        );
        let mut by_subject = (*rules[0]).clone();
        by_subject.when_client_cert_subject = Some("CN=billing,O=Acme".into());
        assert!(by_subject.applies("abort", &h, Some(&billing), None));
    }

    #[test]
    fn peer_credential_rules() {
        let mut by_uid = (*rule("uid", None, &[], "eu")).clone();
        by_uid.when_peer_uid = vec![1000, 1001];
        let mut by_both = (*rule("both", None, &[], "us")).clone();
        by_both.when_peer_uid = vec![2000];
        by_both.when_peer_gid = vec![50];
        let rules = vec![Arc::new(by_uid), Arc::new(by_both)];
        let h = HeaderMap::new();
        let unix = |uid, gid| Peer::Unix { uid, gid, pid: Some(7) };
        let pick = |peer: Option<Peer>| select(&rules, "abort", &h, None, peer.as_ref()).map(|r| r.name.as_str());
        assert_eq!(pick(Some(unix(1001, 1))), Some("uid"));
        assert_eq!(pick(Some(unix(2000, 50))), Some("both"));
        assert_eq!(pick(Some(unix(2000, 51))), None, "both lists must match");
        assert_eq!(pick(Some(unix(0, 50))), None);
        assert_eq!(
            pick(Some(Peer::Tcp(([127, 0, 0, 1], 9).into()))),
            None,
            "TCP has no uid"
        );
        assert_eq!(pick(None), None);
        // A rule without peer lists applies to every caller.
        assert!(rule("any", None, &[], "eu").applies("abort", &h, None, Some(&unix(5, 5))));
    }

    const JOB: &str = "/bulk-data/bulk-jobs/3a3e85c4-96e7-486b-ae02-827120104301";

    fn table() -> Vec<Arc<Route>> {
        vec![
            route("abort", Method::POST, "/bulk-data/bulk-jobs/{id:uuid}/aborts"),
            route("summary", Method::GET, "/bulk-data/bulk-jobs/{id:uuid}/summary"),
            route("any-abort", Method::PUT, "/bulk-data/bulk-jobs/{id}/aborts"),
        ]
    }

    #[test]
    fn retries_only_when_repeating_is_harmless() {
        let mut p = RetryPolicy {
            attempts: 2,
            ..Default::default()
        };
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", HeaderValue::from_static("k"));
        assert!(!p.allows(&Method::POST, &none));
        assert!(p.allows(&Method::POST, &keyed));
        assert!(p.allows(&Method::GET, &none));
        assert!(p.allows(&Method::PUT, &none));
        p.idempotent = true;
        assert!(p.allows(&Method::POST, &none));
        p.attempts = 0;
        assert!(!p.allows(&Method::GET, &keyed));
    }

    #[test]
    fn resolution_table() {
        let t = table();
        let abort = format!("{JOB}/aborts");
        assert!(matches!(resolve(&t, &Method::POST, &abort), Resolution::Allowed(r) if r.name == "abort"));
        assert!(
            matches!(resolve(&t, &Method::GET, &format!("{JOB}/summary")), Resolution::Allowed(r) if r.name == "summary")
        );
        match resolve(&t, &Method::GET, &abort) {
            Resolution::MethodNotAllowed { allow } => assert_eq!(allow, vec![Method::POST, Method::PUT]),
            other => panic!("{other:?}"),
        }
        match resolve(&t, &Method::POST, "/bulk-data/bulk-jobs/nope/aborts") {
            Resolution::BadParam { route, name, reason } => {
                assert_eq!(
                    (route.name.as_str(), name.as_str(), reason),
                    ("abort", "id", "is not a UUID")
                )
            }
            other => panic!("{other:?}"),
        }
        // The untyped PUT route takes a non-UUID id.
        assert!(
            matches!(resolve(&t, &Method::PUT, "/bulk-data/bulk-jobs/nope/aborts"), Resolution::Allowed(r) if r.name == "any-abort")
        );
        assert!(matches!(
            resolve(&t, &Method::POST, "/v1/accounts"),
            Resolution::NotFound
        ));
        assert!(matches!(resolve(&t, &Method::CONNECT, ""), Resolution::NotFound));
        assert!(matches!(resolve(&t, &Method::OPTIONS, "*"), Resolution::NotFound));
    }

    #[test]
    fn rules_first_match_wins_and_headers_must_all_match() {
        let rules = vec![
            rule(
                "eu",
                Some(&["abort"]),
                &[("x-tenant", "acme-eu"), ("x-team", "billing")],
                "eu",
            ),
            rule("summary-only", Some(&["summary"]), &[], "us"),
            rule("fallback", None, &[], "default"),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("acme-eu"));
        assert_eq!(select_h(&rules, "abort", &h).unwrap().name, "fallback");
        h.insert("X-Team", HeaderValue::from_static("billing"));
        assert_eq!(select_h(&rules, "abort", &h).unwrap().name, "eu");
        assert_eq!(select_h(&rules, "summary", &h).unwrap().name, "summary-only");
        h.append("x-tenant", HeaderValue::from_static("acme-us"));
        assert_eq!(
            select_h(&rules, "abort", &h).unwrap().name,
            "fallback",
            "repeated header is not a match"
        );
        let strict = vec![rule("eu", None, &[("x-tenant", "acme-eu")], "eu")];
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("ACME-EU"));
        assert!(select_h(&strict, "abort", &h).is_none(), "values compare exactly");
    }
}
