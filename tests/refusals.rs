//! Requests the proxy refuses itself: each gets its own status and JSON error, and none of
//! them reaches Zuora or costs a token fetch.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
}

use http::Method;
use support::client::*;
use support::fixtures::*;
use support::harness::*;

/// Only callers that say `x-tenant: acme` are routed; the body cap is small.
async fn strict_proxy() -> Harness {
    let h = Harness::builder()
        .server("max_body_bytes", "1024")
        .rules(&rule_for_header("acme-only", ACME, r#"track_id_prefix = "acme""#))
        .ready()
        .await;
    h
}

const ACME: (&str, &str) = ("x-tenant", "acme");

/// One refused POST: its path, the caller's headers, and the refusal expected.
struct Refused {
    path: String,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    code: &'static str,
}

fn refused(
    path: impl Into<String>,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    code: &'static str,
) -> Refused {
    Refused {
        path: path.into(),
        headers,
        status,
        code,
    }
}

#[tokio::test]
async fn refusals_never_reach_zuora_nor_fetch_a_token() {
    let h = strict_proxy().await;
    let abort = abort_path();
    let cases = [
        refused("/v1/accounts", &[ACME], 404, "route_not_found"),
        refused(format!("{abort}/"), &[ACME], 404, "route_not_found"),
        refused(
            "/bulk-data/bulk-jobs/not-a-uuid/aborts",
            &[ACME],
            400,
            "invalid_path_parameter",
        ),
        refused(
            "/bulk-data/bulk-jobs/a%2Fb/aborts",
            &[ACME],
            400,
            "invalid_path_parameter",
        ),
        refused("/bulk-data/bulk-jobs/../aborts", &[ACME], 400, "invalid_path_parameter"),
        refused(
            "/bulk-data/bulk-jobs/%2e%2e/aborts",
            &[ACME],
            400,
            "invalid_path_parameter",
        ),
        refused(abort.clone(), &[], 403, "no_matching_rule"),
        refused(abort.clone(), &[("x-tenant", "other")], 403, "no_matching_rule"),
    ];
    for case in cases {
        let answer = post(&h.url(&case.path), case.headers).await;
        let track = assert_refusal(&answer, case.status, case.code);
        assert_eq!(track.len(), 32, "{}: generated track id {track}", case.path);
    }
    assert_eq!(h.mock.received().len(), 0, "a refused request reached Zuora");
    assert_eq!(h.mock.token_calls(), 1, "a refused request fetched a token");
}

#[tokio::test]
async fn wrong_method_names_the_allowed_ones() {
    let h = strict_proxy().await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let answer = call(method.clone(), &h.url(&abort_path()), &[ACME], "").await;
        assert_refusal(&answer, 405, "method_not_allowed");
        assert_eq!(answer.header("allow"), Some("POST"), "{method}");
    }
    let answer = call(Method::POST, &h.url(&job_path("summary")), &[ACME], "").await;
    assert_refusal(&answer, 405, "method_not_allowed");
    assert_eq!(answer.header("allow"), Some("GET"));
    assert_eq!(h.mock.received().len(), 0);
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn invalid_track_ids_are_refused_and_never_echoed() {
    let h = strict_proxy().await;
    let too_long = "t".repeat(65);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![ACME, ("zuora-track-id", "has:colon")],
        vec![ACME, ("zuora-track-id", "has;semicolon")],
        vec![ACME, ("zuora-track-id", too_long.as_str())],
        vec![ACME, ("zuora-track-id", "first"), ("zuora-track-id", "second")],
    ];
    for headers in cases {
        let answer = post(&h.url(&abort_path()), &headers).await;
        let track = assert_refusal(&answer, 400, "invalid_track_id");
        let sent: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| *k == "zuora-track-id")
            .map(|(_, v)| *v)
            .collect();
        assert!(
            !sent.contains(&track.as_str()),
            "the caller's invalid track id was echoed: {track}"
        );
        assert!(!track.contains(':') && track.len() <= 64, "{track}");
        assert_eq!(answer.headers.get_all("zuora-track-id").iter().count(), 1);
    }
    assert_eq!(h.mock.received().len(), 0);
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn body_over_the_cap_with_content_length_is_refused_before_zuora() {
    let h = strict_proxy().await;
    let echo = job_path("echo");
    let answer = call(Method::POST, &h.url(&echo), &[ACME], vec![b'x'; 1025]).await;
    assert_refusal(&answer, 413, "body_too_large");
    // Exactly at the cap is fine, and proves the route and rule would have let it through.
    let answer = call(Method::POST, &h.url(&echo), &[ACME], vec![b'x'; 1024]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 1, "only the request under the cap reaches Zuora");
    assert_eq!(received[0].body.len(), 1024);
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn refusals_are_distinct_from_zuoras_own_answers() {
    let h = strict_proxy().await;
    let answer = post(&h.url(&abort_path()), &[ACME]).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.header("x-zuora-proxy-error").is_none(),
        "a forwarded answer is not a refusal"
    );
    let answer = post(&h.url("/bulk-data/bulk-jobs"), &[ACME]).await;
    assert_refusal(&answer, 404, "route_not_found");
    assert!(
        answer.header("zuora-request-id").is_none(),
        "a refusal did not come from Zuora"
    );
    assert_eq!(h.mock.received().len(), 1);
}
