//! Validation of `[[rules]]`: which tenant and Zuora headers a request gets, first match wins.

use super::Issues;
use crate::caller_token;
use crate::config::raw::{Field, RawConfig, RawRule, RawServer};
use crate::config::DEFAULT_CALLER_TOKEN_ENDPOINT;
use crate::routes::Rule;
use crate::track_id;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

/// What rules may refer to, as written (a tenant or route with a bad key is reported there,
/// not again by every rule that names it).
pub(super) struct Known<'a> {
    tenants: Vec<&'a str>,
    routes: Vec<&'a str>,
    /// `[server.tls]` asks callers for a certificate.
    client_certs: bool,
    /// `server.caller_token_endpoint` is on, so rules may name its route.
    caller_token: bool,
    /// `server.listen` is a Unix socket, whose callers the kernel names.
    unix_listener: bool,
}

impl<'a> Known<'a> {
    pub(super) fn of(raw: &'a RawConfig, server: &'a RawServer) -> Known<'a> {
        Known {
            tenants: raw
                .tenants
                .get()
                .into_iter()
                .flatten()
                .map(|(n, _)| n.as_str())
                .collect(),
            routes: (raw.routes.get().into_iter().flatten())
                .filter_map(|r| r.get()?.name.get())
                .map(|n| n.as_str())
                .collect(),
            client_certs: server
                .tls
                .get()
                .is_some_and(|t| !matches!(t.client_ca_file, Field::Absent)),
            // An unreadable value is reported under [server]; rules are checked as if it were
            // the default rather than refused a second time for it.
            caller_token: server
                .caller_token_endpoint
                .get()
                .copied()
                .unwrap_or(DEFAULT_CALLER_TOKEN_ENDPOINT),
            unix_listener: server.listen.get().is_some_and(|l| l.starts_with("unix:")),
        }
    }
}

pub(super) fn rules(issues: &mut Issues, raw: &Field<Vec<Field<RawRule>>>, known: &Known<'_>) -> Vec<Arc<Rule>> {
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let written = issues.field("rules", raw);
    let mut names: Vec<&str> = Vec::new();
    for (i, r) in written.into_iter().flatten().enumerate() {
        let Some(r) = issues.field(&format!("rules.{i}"), r) else {
            continue;
        };
        if let Some(name) = r.name.get().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if names.contains(&name) {
                issues.push(format!("rules.{i}.name"), format!("duplicate rule name {name:?}"));
            }
            names.push(name);
        }
        if let Some(rule) = rule(issues, i, r, known) {
            rules.push(Arc::new(rule));
        }
    }
    if written.is_none_or(Vec::is_empty) && !matches!(raw, Field::Invalid(_)) {
        // With one tenant and no rules, every allowed route goes to that tenant.
        match known.tenants.as_slice() {
            [only] => rules.push(Arc::new(Rule {
                name: "default".into(),
                routes: None,
                when_headers: Vec::new(),
                when_client_cert_subject: None,
                when_peer_uid: Vec::new(),
                when_peer_gid: Vec::new(),
                tenant: only.to_string(),
                entity_ids: Vec::new(),
                org_ids: Vec::new(),
                track_id_prefix: None,
                entity_header: None,
                org_header: None,
            })),
            [] => {}
            _ => issues.push(
                "rules",
                "with more than one tenant, rules must say which tenant each request goes to",
            ),
        }
    }
    rules
}

fn rule(issues: &mut Issues, i: usize, r: &RawRule, known: &Known<'_>) -> Option<Rule> {
    let key = |field: &str| format!("rules.{i}.{field}");
    let before = issues.errors();
    let name = issues.required(&key("name"), &r.name);
    let tenant = issues.required(&key("tenant"), &r.tenant);
    if let Some(t) = &tenant {
        if !known.tenants.contains(&t.as_str()) {
            issues.push(key("tenant"), format!("no tenant named {t:?}"));
        }
    }
    let routes = issues.field(&key("routes"), &r.routes);
    for (j, route) in routes.into_iter().flatten().enumerate() {
        if route == caller_token::ROUTE_NAME {
            if !known.caller_token {
                issues.push(
                    format!("rules.{i}.routes.{j}"),
                    format!("{route:?} is the caller token endpoint, which server.caller_token_endpoint turns off"),
                );
            }
        } else if !known.routes.contains(&route.as_str()) {
            issues.push(format!("rules.{i}.routes.{j}"), format!("no route named {route:?}"));
        }
    }
    let mut when_headers = Vec::new();
    for (header, value) in issues
        .field(&key("when_headers"), &r.when_headers)
        .into_iter()
        .flatten()
    {
        match HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) {
            Ok(name) => when_headers.push((name, value.clone())),
            Err(_) => issues.push(format!("rules.{i}.when_headers.{header}"), "invalid header name"),
        }
    }
    let entity_ids = issues
        .field(&key("entity_ids"), &r.entity_ids)
        .cloned()
        .unwrap_or_default();
    for (j, id) in entity_ids.iter().enumerate() {
        if !crate::routes::template::is_hyphenated_uuid(id) {
            issues.push(
                format!("rules.{i}.entity_ids.{j}"),
                format!("{id:?} is not an entity id (a UUID)"),
            );
        }
    }
    let org_ids = issues.field(&key("org_ids"), &r.org_ids).cloned().unwrap_or_default();
    for (j, id) in org_ids.iter().enumerate() {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            issues.push(format!("rules.{i}.org_ids.{j}"), format!("{id:?} is not an org id"));
        }
    }
    let when_client_cert_subject = issues.field(&key("when_client_cert_subject"), &r.when_client_cert_subject);
    if when_client_cert_subject.is_some() && !known.client_certs {
        issues.push(
            key("when_client_cert_subject"),
            "needs [server.tls] with client_ca_file: plain-HTTP callers have no certificate",
        );
    }
    let mut peer_ids = |field: &str, ids: &Field<Vec<u32>>| -> Vec<u32> {
        let written = issues.field(&key(field), ids);
        if written.is_some_and(Vec::is_empty) {
            // Read as "no condition", an empty list would let every caller through.
            issues.push(key(field), "is empty; list at least one id, or leave the key out");
        }
        let ids = written.cloned().unwrap_or_default();
        if !ids.is_empty() && !known.unix_listener {
            issues.push(
                key(field),
                "needs server.listen = \"unix:/path\": only a Unix socket tells who the caller is",
            );
        }
        ids
    };
    let when_peer_uid = peer_ids("when_peer_uid", &r.when_peer_uid);
    let when_peer_gid = peer_ids("when_peer_gid", &r.when_peer_gid);
    let track_id_prefix = issues.field(&key("track_id_prefix"), &r.track_id_prefix);
    if let Some(prefix) = track_id_prefix {
        if !track_id::is_valid_prefix(prefix) {
            issues.push(
                key("track_id_prefix"),
                format!(
                    "at most {} visible US-ASCII characters, none of : ; \" '",
                    track_id::MAX_PREFIX_LEN
                ),
            );
        }
    }
    if issues.errors() != before {
        return None;
    }
    let header =
        |ids: &[String]| (!ids.is_empty()).then(|| HeaderValue::try_from(ids.join(",")).expect("ids were checked"));
    Some(Rule {
        name: name?,
        routes: routes.cloned(),
        when_headers,
        when_client_cert_subject: when_client_cert_subject.cloned(),
        when_peer_uid,
        when_peer_gid,
        tenant: tenant?,
        entity_header: header(&entity_ids),
        org_header: header(&org_ids),
        entity_ids,
        org_ids,
        track_id_prefix: track_id_prefix.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::GOOD;
    use crate::config::*;

    const RULE: &str = "[[rules]]\nname = \"billing\"\ntenant = \"default\"\n";

    #[test]
    fn several_tenants_need_rules() {
        let text = GOOD.replace(
            "[[routes]]",
            "[tenants.eu]\nbase_url = \"https://rest.eu.zuora.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\n[[routes]]",
        );
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(err.issues[0].key, "rules");
    }

    #[test]
    fn peer_rules_need_a_unix_listener() {
        let rule =
            "[[rules]]\nname = \"ops\"\ntenant = \"default\"\nwhen_peer_uid = [1000]\nwhen_peer_gid = [10, 11]\n";
        let err = Config::from_toml(&format!("{GOOD}\n{rule}")).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["rules.0.when_peer_uid", "rules.0.when_peer_gid"], "{err}");
        assert!(err.issues[0].message.contains("unix:"), "{err}");

        let unix = GOOD.replace("127.0.0.1:0", "unix:/tmp/p.sock");
        let c = Config::from_toml(&format!("{unix}\n{rule}")).unwrap();
        assert_eq!(c.live.rules[0].when_peer_uid, [1000]);
        assert_eq!(c.live.rules[0].when_peer_gid, [10, 11]);

        let empty = rule.replace("[1000]", "[]");
        let err = Config::from_toml(&format!("{unix}\n{empty}")).unwrap_err();
        assert_eq!(err.issues[0].key, "rules.0.when_peer_uid", "{err}");
        let negative = rule.replace("[1000]", "[-1]");
        let err = Config::from_toml(&format!("{unix}\n{negative}")).unwrap_err();
        assert_eq!(err.issues[0].key, "rules.0.when_peer_uid", "{err}");
    }

    #[test]
    fn rule_names_are_unique() {
        let c = Config::from_toml(&format!("{GOOD}\n{RULE}")).unwrap();
        assert_eq!(c.live.rules.len(), 1);
        let err =
            Config::from_toml(&format!("{GOOD}\n{RULE}{RULE}{}", RULE.replace("billing", " billing "))).unwrap_err();
        let dups: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(dups, ["rules.1.name", "rules.2.name"], "{err}");
        assert!(
            err.issues[0].message.contains("duplicate rule name \"billing\""),
            "{err}"
        );
    }

    #[test]
    fn rules_may_name_the_caller_token_route_while_it_is_on() {
        let rule = "[[rules]]\nname = \"sdk\"\ntenant = \"default\"\nroutes = [\"caller-token\", \"abort-bulk-job\"]\n";
        let c = Config::from_toml(&format!("{GOOD}\n{rule}")).unwrap();
        assert_eq!(
            c.live.rules[0].routes.as_deref(),
            Some(&["caller-token".to_string(), "abort-bulk-job".to_string()][..])
        );
        let off = GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ncaller_token_endpoint = false",
        );
        let err = Config::from_toml(&format!("{off}\n{rule}")).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].key, "rules.0.routes.0");
        assert!(err.issues[0].message.contains("server.caller_token_endpoint"), "{err}");
    }
}
