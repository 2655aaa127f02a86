//! Retries that match what Zuora sends: an `Idempotency-Key` generated where a route asks for
//! one (the same for every attempt, so a POST may be retried; a 409 for a key still in
//! progress is not), and Zuora's `/v1` limit errors inside an HTTP 200 retried like a 429
//! where a route says `zuora_body_errors = true`.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod logs;
    pub mod metrics;
}

use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::logs::{self, access_line, assert_access_line};
use support::metrics::Metrics;
use zuora_auth_proxy::mock::ApiMode;

/// `abort` (POST) gets a generated key, reads Zuora's body errors and retries on everything
/// that can be retried; `echo` (POST, idempotent) retries too but generates no key and reads
/// no body; `summary` (GET) reads body errors but never retries.
fn routes() -> String {
    routes_with(&[
        (
            "abort-bulk-job",
            r#"retry_attempts = 2
retry_on = ["429", "502", "503", "504"]
idempotency_key = "generate"
zuora_body_errors = true"#,
        ),
        ("job-summary", "zuora_body_errors = true"),
        (
            "echo",
            "retry_attempts = 2\nretry_on = [\"429\", \"503\"]\nidempotent = true",
        ),
    ])
}

fn unavailable() -> ApiMode {
    ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    }
}

#[tokio::test]
async fn a_generated_key_is_the_same_for_every_attempt_and_new_for_each_request() {
    let h = start().await;
    h.mock.set_api_script(vec![unavailable(), unavailable()]);
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "generated-key")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["status"], "Aborted");
    let received = h.mock.received();
    assert_eq!(received.len(), 3, "a POST with a generated key is retried");
    let keys: Vec<&str> = received.iter().map(|r| only_key(&r.headers)).collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "the key changed between attempts: {keys:?}"
    );
    assert!(keys[0].len() <= 255);
    let uuid = uuid::Uuid::parse_str(keys[0]).unwrap_or_else(|e| panic!("{:?}: {e}", keys[0]));
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(access_line("generated-key")["retries"], 2);

    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    let received = h.mock.received();
    assert_ne!(only_key(&received[3].headers), keys[0], "two requests shared a key");
}

#[tokio::test]
async fn a_route_without_the_option_sends_no_key() {
    let h = start().await;
    assert_eq!(post(&h.url(&job_path("echo")), &[]).await.status, 200);
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].headers.contains_key("idempotency-key"),
        "{:?}",
        received[0].headers
    );
}

#[tokio::test]
async fn the_callers_key_is_kept_for_every_attempt() {
    let h = start().await;
    h.mock.set_api_script(vec![unavailable()]);
    let answer = post(&h.url(&abort_path()), &[("idempotency-key", "caller-key-7")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let received = h.mock.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(only_key(&r.headers), "caller-key-7");
    }
}

#[tokio::test]
async fn a_409_for_a_key_in_progress_goes_back_to_the_caller() {
    // The first attempt fails as Zuora may already be running it; the retry (same key) finds
    // it still in progress. Sending it a third time would only ask again: the caller decides.
    let h = start().await;
    let in_progress = r#"{"success":false,"reasons":[{"code":"REQUEST_IN_PROGRESS","message":"in progress"}]}"#;
    h.mock.set_api_script(vec![
        unavailable(),
        ApiMode::Answer {
            status: 409,
            headers: vec![],
            body: in_progress.into(),
        },
    ]);
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "key-in-progress")]).await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.header("x-zuora-proxy-error"), None, "Zuora's own 409 goes back");
    assert_eq!(&answer.body[..], in_progress.as_bytes());
    let received = h.mock.received();
    assert_eq!(received.len(), 2, "the 409 was retried");
    assert_eq!(only_key(&received[0].headers), only_key(&received[1].headers));
    assert_access_line(
        "key-in-progress",
        &[("retries", 1.into()), ("upstream_status", 409.into())],
    );
}

#[tokio::test]
async fn a_body_error_is_retried_like_a_429_and_the_retry_can_succeed() {
    let h = start().await;
    h.mock.set_api_script(vec![ApiMode::BodyError { code: 53100370 }]);
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "body-error-once")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "Aborted", "the retry's answer goes back");
    assert_eq!(h.mock.received().len(), 2);
    let line = access_line("body-error-once");
    assert_eq!(line["retries"], 1, "{line}");
    assert_eq!(
        line["zuora_reason_code"], 53100370,
        "the retried failure is logged: {line}"
    );
    let metrics = Metrics::parse(&h.proxy.probe().metrics_text());
    assert_eq!(
        metrics.get(r#"zuora_proxy_retries_total{route="abort-bulk-job",reason="429"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_error_that_outlasts_the_retries_goes_back_as_zuora_sent_it() {
    let h = start().await;
    let failure = failure_body(53100350);
    h.mock.set_api_mode(ok_with(&failure));
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "body-error-always")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], failure.as_bytes(), "the read body was changed");
    assert_eq!(
        answer.header("content-length"),
        Some(failure.len().to_string().as_str())
    );
    assert_eq!(h.mock.received().len(), 3, "1 attempt + retry_attempts = 2");
    assert_access_line(
        "body-error-always",
        &[("retries", 2.into()), ("zuora_reason_code", 53100350.into())],
    );
}

#[tokio::test]
async fn a_failure_zuora_does_not_call_retryable_is_logged_and_not_retried() {
    let h = start().await;
    let failure = failure_body(53100320);
    h.mock.set_api_mode(ok_with(&failure));
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "body-error-final")]).await;
    assert_eq!(&answer.body[..], failure.as_bytes());
    assert_eq!(h.mock.received().len(), 1);
    assert_access_line(
        "body-error-final",
        &[("retries", 0.into()), ("zuora_reason_code", 53100320.into())],
    );
}

#[tokio::test]
async fn a_body_error_on_a_route_that_may_not_retry_is_logged_and_handed_on() {
    let h = start().await;
    let failure = failure_body(53100370);
    h.mock.set_api_mode(ok_with(&failure));
    let answer = call(
        http::Method::GET,
        &h.url(&job_path("summary")),
        &[("zuora-track-id", "body-error-no-retry")],
        "",
    )
    .await;
    assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, failure.as_bytes()));
    assert_eq!(h.mock.received().len(), 1);
    assert_access_line(
        "body-error-no-retry",
        &[("zuora_reason_code", 53100370.into()), ("retries", 0.into())],
    );
}

#[tokio::test]
async fn a_body_error_on_a_route_without_the_option_passes_through_untouched() {
    let h = start().await;
    let failure = failure_body(53100370);
    h.mock.set_api_mode(ok_with(&failure));
    let answer = call(
        http::Method::POST,
        &h.url(&job_path("echo")),
        &[("zuora-track-id", "body-error-unread")],
        "",
    )
    .await;
    assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, failure.as_bytes()));
    assert_eq!(
        h.mock.received().len(),
        1,
        "echo may retry a 429 but does not read bodies"
    );
    let line = access_line("body-error-unread");
    assert!(line.get("zuora_reason_code").is_none(), "{line}");
    assert_eq!(line["retries"], 0, "{line}");
}

#[tokio::test]
async fn a_large_answer_is_streamed_unread() {
    let h = start().await;
    // Over the 16 KiB a body error may have: not read, whatever it says.
    let padding = "x".repeat(20 * 1024);
    let large = format!(r#"{{"success":false,"padding":"{padding}","reasons":[{{"code":53100370}}]}}"#);
    h.mock.set_api_mode(ok_with(&large));
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "body-error-large")]).await;
    assert_eq!(&answer.body[..], large.as_bytes());
    assert_eq!(h.mock.received().len(), 1);
    assert!(access_line("body-error-large").get("zuora_reason_code").is_none());
}

// ---- helpers ----

/// Zuora's `/v1` failure with one reason code.
fn failure_body(code: u64) -> String {
    format!(
        r#"{{"success":false,"processId":"4F3B2A1C0D9E8F7A","reasons":[{{"code":{code},"message":"Please retry later."}}]}}"#
    )
}

/// A 200 with this JSON body.
fn ok_with(body: &str) -> ApiMode {
    ApiMode::Answer {
        status: 200,
        headers: vec![],
        body: body.into(),
    }
}

async fn start() -> Harness {
    logs::capture(tracing::Level::INFO);
    let h = Harness::builder().routes(&routes()).ready().await;
    h
}

/// The one `Idempotency-Key` of a request Zuora received.
fn only_key(headers: &http::HeaderMap) -> &str {
    let keys: Vec<&str> = headers
        .get_all("idempotency-key")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "{headers:?}");
    keys[0]
}
