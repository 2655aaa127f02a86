//! When Zuora cannot be reached, is too slow, drops the connection or answers an error: each
//! failure has its own status and code, and Zuora's own answers pass through unchanged.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::wait::assert_took;
use zuora_auth_proxy::mock::ApiMode;

#[tokio::test]
async fn an_upstream_refusing_connections_is_502_unreachable() {
    // The token endpoint is the mock; the REST base URL is a loopback port nobody listens on.
    let h = Harness::builder().rest_at(closed_addr()).ready().await;
    let took = timed_refusal(&h.url(&abort_path()), "unreachable-1", 502, "upstream_unreachable").await;
    assert_took(took, ..Duration::from_secs(3), "a refused connect fails fast");
    assert!(h.mock.received().is_empty());
    assert_eq!(h.mock.token_calls(), 1, "a connect failure does not cost a token");
}

#[tokio::test]
async fn an_upstream_slower_than_the_request_timeout_is_504() {
    let h = Harness::builder().server("request_timeout", "\"1s\"").ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(3)));
    let took = timed_refusal(&h.url(&abort_path()), "slow-1", 504, "upstream_timeout").await;
    assert_took(
        took,
        Duration::from_millis(900)..Duration::from_millis(2500),
        "answered at the request timeout",
    );
    assert_eq!(h.mock.received().len(), 1, "the request did reach Zuora");
}

#[tokio::test]
async fn an_upstream_dropping_the_connection_is_502_and_not_resent() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Reset);
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "reset-1")]).await;
    assert_eq!(assert_refusal(&answer, 502, "upstream_failed"), "reset-1");
    assert_eq!(
        h.mock.received().len(),
        1,
        "a POST that may have reached Zuora is not sent again"
    );
    assert_eq!(h.mock.token_calls(), 1);

    // The broken connection is not reused.
    h.mock.set_api_mode(ApiMode::Normal);
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(h.mock.received().len(), 2);
}

#[tokio::test]
async fn zuoras_error_answers_pass_through_unchanged() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 429,
        retry_after_secs: Some(7),
    });
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "limited-1")]).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert_eq!(answer.header("zuora-track-id"), Some("limited-1"));
    assert!(answer.header("zuora-request-id").is_some(), "Zuora's own answer");
    assert!(answer.header("x-zuora-proxy-error").is_none(), "not a proxy refusal");
    assert_eq!(answer.json()["code"], "REQUEST_EXCEEDED_LIMIT");
    assert_eq!(h.mock.received().len(), 1, "a 429 is not retried by the proxy");

    h.mock.set_api_mode(ApiMode::Status {
        status: 500,
        retry_after_secs: None,
    });
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 500);
    assert!(answer.header("x-zuora-proxy-error").is_none());
    assert!(answer.header("retry-after").is_none());
    assert_eq!(h.mock.received().len(), 2, "a 500 is not retried either");
    assert_eq!(h.mock.token_calls(), 1, "only a 401 costs a token");
}

#[tokio::test]
async fn the_query_string_reaches_zuora_unchanged() {
    let h = Harness::builder().start().await;
    let path = job_path("summary?fields=a%2Cb&x=1");
    let answer = get(&h.url(&path)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["id"], JOB);
    assert_eq!(h.mock.received()[0].target, path);
}
