//! Validation of `[[routes]]`: the allowlist of methods and path templates.

use super::Issues;
use crate::config::raw::{Field, RawRoute};
use crate::routes::{IdempotencyKey, PathTemplate, RetryOn, RetryPolicy, Route};
use http::Method;
use std::sync::Arc;

/// More retries than this only multiply load on a struggling Zuora.
const MAX_RETRY_ATTEMPTS: u32 = 5;

pub(super) fn routes(issues: &mut Issues, raw: &Field<Vec<Field<RawRoute>>>) -> Vec<Arc<Route>> {
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let written = issues.field("routes", raw);
    if written.is_none_or(Vec::is_empty) && !matches!(raw, Field::Invalid(_)) {
        issues.push(
            "routes",
            "at least one route is required: nothing else is ever forwarded",
        );
    }
    for (i, r) in written.into_iter().flatten().enumerate() {
        if let Some(route) = issues
            .field(&format!("routes.{i}"), r)
            .and_then(|r| route(issues, i, r))
        {
            if route.name == crate::caller_token::ROUTE_NAME {
                issues.push(
                    format!("routes.{i}.name"),
                    format!(
                        "{:?} is the name of the proxy's own token endpoint (server.caller_token_endpoint)",
                        route.name
                    ),
                );
            }
            if routes.iter().any(|other| other.name == route.name) {
                issues.push(
                    format!("routes.{i}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            routes.push(Arc::new(route));
        }
    }
    routes
}

fn route(issues: &mut Issues, i: usize, r: &RawRoute) -> Option<Route> {
    let key = |field: &str| format!("routes.{i}.{field}");
    let name = issues.required(&key("name"), &r.name);
    let method = issues
        .present(&key("method"), &r.method)
        .and_then(|m| method(issues, &key("method"), m));
    let template = issues.present(&key("path"), &r.path).and_then(|p| {
        PathTemplate::parse(p)
            .map_err(|e| issues.push(key("path"), format!("{p:?}: {e}")))
            .ok()
    });
    let mut retry = RetryPolicy {
        attempts: issues.number(&key("retry_attempts"), &r.retry_attempts, 0),
        idempotent: issues.number(&key("idempotent"), &r.idempotent, false),
        ..RetryPolicy::default()
    };
    for (j, on) in issues
        .field(&key("retry_on"), &r.retry_on)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match RetryOn::parse(on.trim()) {
            Some(reason) if !retry.on.contains(&reason) => retry.on.push(reason),
            Some(_) => {}
            None => issues.push(
                format!("routes.{i}.retry_on.{j}"),
                format!("{:?} is not one of {}", on.trim(), retry_on_words()),
            ),
        }
    }
    let idempotency_key = issues
        .field(&key("idempotency_key"), &r.idempotency_key)
        .and_then(|k| idempotency_key(issues, &key("idempotency_key"), k, method.as_ref()))
        .unwrap_or_default();
    if retry.attempts > MAX_RETRY_ATTEMPTS {
        issues.push(key("retry_attempts"), format!("at most {MAX_RETRY_ATTEMPTS}"));
    }
    if retry.attempts > 0 && retry.on.is_empty() {
        issues.push(
            key("retry_on"),
            "retry_attempts is set but retry_on names nothing to retry",
        );
    }
    Some(Route {
        name: name?,
        method: method?,
        template: template?,
        retry,
        idempotency_key,
        zuora_body_errors: issues.number(&key("zuora_body_errors"), &r.zuora_body_errors, false),
        track_id_from_trace: issues.number(&key("track_id_from_trace"), &r.track_id_from_trace, false),
    })
}

/// Zuora takes `Idempotency-Key` on POST and PATCH only; on another method a generated key
/// would be ignored while seeming to make the call safe to repeat.
fn idempotency_key(issues: &mut Issues, key: &str, written: &str, method: Option<&Method>) -> Option<IdempotencyKey> {
    let Some(parsed) = IdempotencyKey::parse(written.trim()) else {
        issues.push(key, format!("{written:?} is not one of \"caller\", \"generate\""));
        return None;
    };
    if parsed == IdempotencyKey::Generate && method.is_some_and(|m| m != Method::POST && m != Method::PATCH) {
        issues.push(key, "Zuora takes an Idempotency-Key on POST and PATCH only");
        return None;
    }
    Some(parsed)
}

/// The words `retry_on` accepts, quoted, for messages.
fn retry_on_words() -> String {
    let words: Vec<String> = RetryOn::ALL.iter().map(|r| format!("{:?}", r.as_str())).collect();
    words.join(", ")
}

/// Written in any case, forwarded upper-cased. `http` accepts exactly the RFC 9110 token
/// characters; the test below pins that, since a method is written into every request line.
fn method(issues: &mut Issues, key: &str, written: &str) -> Option<Method> {
    match Method::from_bytes(written.to_ascii_uppercase().as_bytes()) {
        Ok(Method::CONNECT) | Ok(Method::TRACE) => {
            issues.push(key, "CONNECT and TRACE are never forwarded");
            None
        }
        Ok(method) => Some(method),
        Err(_) => {
            issues.push(
                key,
                format!(
                    "invalid method {written:?}: a method is a token (RFC 9110): letters, digits and ! # $ % & ' * + - . ^ _ ` | ~"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::GOOD;
    use crate::config::*;
    use crate::routes::{IdempotencyKey, RetryOn};

    fn with_method(method: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&GOOD.replace("method = \"POST\"", &format!("method = {method:?}")))
    }

    fn with_route_keys(keys: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&GOOD.replace("method = \"POST\"", &format!("method = \"POST\"\n{keys}")))
    }

    #[test]
    fn a_route_may_not_take_the_token_endpoint_s_name() {
        let text = crate::config::tests::GOOD.replace("name = \"abort-bulk-job\"", "name = \"caller-token\"");
        let err = crate::config::Config::from_toml(&text).unwrap_err();
        assert!(err.issues.iter().any(|i| i.key == "routes.0.name"), "{err}");
    }

    #[test]
    fn retry_on_is_one_list_of_reasons() {
        let c = with_route_keys("retry_attempts = 2\nretry_on = [\" 503\", \"connect\", \"429\", \"503\"]").unwrap();
        let retry = &c.live.routes[0].retry;
        assert_eq!(retry.on, [RetryOn::Status503, RetryOn::Connect, RetryOn::Status429]);
        assert!(retry.retries_on(RetryOn::Connect) && !retry.retries_on(RetryOn::Status502));
        assert_eq!(retry.describe(), ["503", "connect", "429"]);
        let err = with_route_keys("retry_attempts = 1\nretry_on = [\"500\"]").unwrap_err();
        let issue = err.issues.iter().find(|i| i.key == "routes.0.retry_on.0").unwrap();
        assert_eq!(
            issue.message,
            "\"500\" is not one of \"429\", \"502\", \"503\", \"504\", \"connect\""
        );
        let err = with_route_keys("retry_attempts = 1").unwrap_err();
        assert!(err.issues.iter().any(|i| i.key == "routes.0.retry_on"), "{err}");
    }

    #[test]
    fn idempotency_keys_are_generated_only_for_post_and_patch() {
        let c = with_route_keys("idempotency_key = \"generate\"").unwrap();
        assert_eq!(c.live.routes[0].idempotency_key, IdempotencyKey::Generate);
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.live.routes[0].idempotency_key, IdempotencyKey::Caller);
        let c = Config::from_toml(&GOOD.replace("\"POST\"", "\"patch\"\nidempotency_key = \"generate\"")).unwrap();
        assert_eq!(c.live.routes[0].idempotency_key, IdempotencyKey::Generate);
        let err = Config::from_toml(&GOOD.replace("\"POST\"", "\"GET\"\nidempotency_key = \"generate\"")).unwrap_err();
        let issue = err.issues.iter().find(|i| i.key == "routes.0.idempotency_key").unwrap();
        assert!(issue.message.contains("POST and PATCH"), "{issue}");
        let err = with_route_keys("idempotency_key = \"always\"").unwrap_err();
        assert_eq!(err.issues[0].key, "routes.0.idempotency_key", "{err}");
    }

    #[test]
    fn a_method_must_be_a_token_and_is_upper_cased() {
        for (written, want) in [
            ("POST", "POST"),
            ("post", "POST"),
            ("m-search", "M-SEARCH"),
            ("X_Y.Z~1!", "X_Y.Z~1!"),
        ] {
            let c = with_method(written).unwrap_or_else(|e| panic!("{written:?}: {e}"));
            assert_eq!(c.live.routes[0].method.as_str(), want);
        }
        for bad in [
            "",
            " POST",
            "PO ST",
            "GET\r\nX: y",
            "P(O)ST",
            "GET/1",
            "PÖST",
            "a,b",
            "{x}",
            "\"GET\"",
            "GET;",
        ] {
            let err = with_method(bad).err().unwrap_or_else(|| panic!("{bad:?} was accepted"));
            let issue = err.issues.iter().find(|i| i.key == "routes.0.method").unwrap();
            assert!(issue.message.contains("token"), "{bad:?}: {issue}");
        }
        let err = with_method("connect").unwrap_err();
        assert!(err.issues[0].message.contains("never forwarded"), "{err}");
    }
}
