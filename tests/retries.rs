//! Retries per route: only when repeating is harmless (idempotent method, idempotent route or
//! an `Idempotency-Key`) and the body is buffered; waiting per `Retry-After`, else
//! `RateLimit-Reset`, else backoff, never past the request's deadline.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod chunked;
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod logs;
    pub mod metrics;
    pub mod wait;
}

use http::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::chunked::Chunked;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::logs::{self, access_line, assert_access_line};
use support::metrics::scrape;
use support::wait::{assert_took, timed};
use tokio::time::Instant;
use zuora_auth_proxy::mock::ApiMode;

// Tests here switch the mock's (global) mode once `wait_api_calls` reports a request. The
// mock counts a request just before it reads the mode, with no await in between: on the
// single-threaded test runtime its handler reaches its first await (having read the mode)
// before the test resumes, so the switch never races the request it waited for.

/// `abort` (POST) and `summary` (GET) retry twice on 429/502/503 (`summary` on `summary_retry_on`
/// with [`retry_routes_on`]); `echo` is a POST marked idempotent; `downloads` has no retry
/// policy.
fn retry_routes() -> String {
    retry_routes_on(r#"["429", "502", "503"]"#)
}

fn retry_routes_on(summary_retry_on: &str) -> String {
    routes_with(&[
        (
            "abort-bulk-job",
            "retry_attempts = 2\nretry_on = [\"429\", \"502\", \"503\"]",
        ),
        (
            "job-summary",
            &format!("retry_attempts = 2\nretry_on = {summary_retry_on}"),
        ),
        ("echo", "retry_attempts = 2\nretry_on = [\"503\"]\nidempotent = true"),
    ])
}

#[tokio::test]
async fn a_get_is_retried_until_its_attempts_run_out() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    let answer = call(
        Method::GET,
        &h.url(&job_path("summary")),
        &[("zuora-track-id", "get-503")],
        "",
    )
    .await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.header("x-zuora-proxy-error"),
        None,
        "Zuora's own 503 goes back as is"
    );
    assert_eq!(answer.json()["code"], "REQUEST_EXCEEDED_LIMIT");
    assert_eq!(h.mock.received().len(), 3, "1 attempt + retry_attempts = 2");
    assert!(
        h.mock.received().iter().all(|r| track_of(&r.headers) == "get-503"),
        "every attempt keeps the track id"
    );
    assert_eq!(
        retries(&h, r#"zuora_proxy_retries_total{route="job-summary",reason="503"}"#).await,
        Some(2.0)
    );
    assert_access_line("get-503", &[("retries", 2.into()), ("upstream_status", 503.into())]);
}

#[tokio::test]
async fn a_post_without_idempotency_is_sent_exactly_once() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "post-once")]).await;
    assert_eq!(answer.status, 503);
    assert_eq!(h.mock.received().len(), 1);
    assert_eq!(
        retries(&h, r#"zuora_proxy_retries_total{route="abort-bulk-job",reason="503"}"#).await,
        Some(0.0),
        "the series exists from the start and was never counted"
    );
    assert_eq!(access_line("post-once")["retries"], 0);
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_is_retried_with_the_same_key() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    let answer = post(
        &h.url(&abort_path()),
        &[("idempotency-key", "idem-42"), ("zuora-track-id", "post-keyed")],
    )
    .await;
    assert_eq!(answer.status, 503);
    let received = h.mock.received();
    assert_eq!(received.len(), 3);
    for r in &received {
        assert_eq!(r.headers["idempotency-key"], "idem-42");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }
    assert_eq!(access_line("post-keyed")["retries"], 2);
}

#[tokio::test]
async fn an_idempotent_route_retries_a_post_and_replays_its_body() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let answer = call(
        Method::POST,
        &h.url(&job_path("echo")),
        &[("zuora-track-id", "echo-replayed")],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 503);
    let received = h.mock.received();
    assert_eq!(received.len(), 3);
    for r in &received {
        assert_eq!(r.body, body, "a replayed body differs");
    }
    assert_eq!(
        retries(&h, r#"zuora_proxy_retries_total{route="echo",reason="503"}"#).await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_body_that_is_not_buffered_is_sent_once() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    // Over the 64 KiB replay buffer, with Content-Length: streamed.
    let large = vec![b'l'; 70 * 1024];
    let answer = call(Method::POST, &h.url(&job_path("echo")), &[], large).await;
    assert_eq!(answer.status, 503);
    assert_eq!(h.mock.received().len(), 1, "a streamed body was sent twice");
    // Small but chunked (no Content-Length): streamed too.
    let request = http::Request::post(h.url(&job_path("echo")))
        .body(Chunked::new(4, 100))
        .unwrap();
    let answer = send(request).await;
    assert_eq!(answer.status, 503);
    let received = h.mock.received();
    assert_eq!(received.len(), 2, "a chunked body was sent twice");
    assert_eq!(received[1].body.len(), 400);
}

#[tokio::test]
async fn statuses_outside_retry_on_and_routes_without_a_policy_are_not_retried() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 504,
        retry_after_secs: Some(0),
    });
    assert_eq!(get(&h.url(&job_path("summary"))).await.status, 504);
    assert_eq!(h.mock.received().len(), 1, "504 is not in retry_on");
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(0),
    });
    assert_eq!(get(&h.url(&job_path("downloads"))).await.status, 503);
    assert_eq!(h.mock.received().len(), 2, "a route without retry_attempts retried");
}

#[tokio::test]
async fn retry_after_is_waited_and_the_retry_can_succeed() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(1),
    });
    let url = h.url(&job_path("summary"));
    let started = Instant::now();
    let caller = tokio::spawn(async move { call(Method::GET, &url, &[("zuora-track-id", "recovers")], "").await });
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);
    h.mock.set_api_mode(ApiMode::Normal);
    let answer = caller.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["name"], "mock job");
    assert_eq!(h.mock.received().len(), 2);
    // Retry-After (1 s) wins over the mock's RateLimit-Reset (60 s) and over backoff (< 0.1 s).
    assert_took(
        elapsed,
        Duration::from_millis(900)..Duration::from_secs(5),
        "retried once Retry-After passed",
    );
    assert_access_line("recovers", &[("retries", 1.into()), ("upstream_status", 200.into())]);
}

#[tokio::test]
async fn rate_limit_reset_is_the_hint_of_a_429_without_retry_after() {
    // The mock always sends `RateLimit-Reset: 60`: on a 429 that is the wait, past a 10 s
    // deadline, so no retry at all (backoff would have retried within a fraction of a second).
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 429,
        retry_after_secs: None,
    });
    let (answer, took) = timed(get(&h.url(&job_path("summary")))).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("ratelimit-reset"), Some("60"));
    assert_took(took, ..Duration::from_secs(5), "no retry");
    assert_eq!(h.mock.received().len(), 1);
}

#[tokio::test]
async fn a_503_is_retried_with_backoff_whatever_ratelimit_reset_says() {
    // Zuora sends `RateLimit-Reset` on every answer (here 60 s, with requests remaining): it
    // is the rate window's reset, not a hint for a 503, so the retries back off instead.
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: None,
    });
    let (answer, took) = timed(get(&h.url(&job_path("summary")))).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("ratelimit-reset"), Some("60"));
    assert_eq!(h.mock.received().len(), 3, "the first attempt and two retries");
    assert_took(
        took,
        ..Duration::from_secs(5),
        "retries backed off, not waited for RateLimit-Reset",
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_returns_zuoras_429_at_once() {
    logs::capture(tracing::Level::INFO);
    let h = Harness::builder()
        .routes(&retry_routes())
        .server("request_timeout", "\"3s\"")
        .ready()
        .await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 429,
        retry_after_secs: Some(5),
    });
    let started = Instant::now();
    let answer = call(
        Method::GET,
        &h.url(&job_path("summary")),
        &[("zuora-track-id", "too-long-to-wait")],
        "",
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("x-zuora-proxy-error"), None);
    assert_eq!(answer.header("retry-after"), Some("5"), "the caller sees Zuora's hint");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "waited {:?} for a retry it could not make",
        started.elapsed()
    );
    assert_eq!(h.mock.received().len(), 1);
    assert_eq!(access_line("too-long-to-wait")["retries"], 0);
}

/// A Retry-After too large for the clock is just a wait past the deadline: Zuora's answer goes
/// back, and nothing overflows.
#[tokio::test]
async fn an_absurd_retry_after_returns_zuoras_answer() {
    let h = Harness::builder().routes(&retry_routes()).ready().await;
    h.mock.set_api_mode(ApiMode::Status {
        status: 503,
        retry_after_secs: Some(u64::MAX),
    });
    let answer = call(Method::GET, &h.url(&job_path("summary")), &[], "").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some(u64::MAX.to_string().as_str()));
    assert_eq!(h.mock.received().len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_retried_with_backoff_as_a_502() {
    let h = retrying().await;
    h.mock.set_api_mode(ApiMode::Reset);
    let started = Instant::now();
    let answer = call(
        Method::GET,
        &h.url(&job_path("summary")),
        &[("zuora-track-id", "reset-thrice")],
        "",
    )
    .await;
    assert_refusal(&answer, 502, "upstream_failed");
    assert_eq!(h.mock.received().len(), 3);
    // Two backoff waits of 50-100 ms then 100-200 ms.
    assert_took(
        started.elapsed(),
        Duration::from_millis(140)..,
        "no backoff between attempts",
    );
    assert_eq!(
        retries(&h, r#"zuora_proxy_retries_total{route="job-summary",reason="502"}"#).await,
        Some(2.0)
    );
    assert_eq!(access_line("reset-thrice")["retries"], 2);
}

#[tokio::test]
async fn connect_failures_are_retried_only_where_retry_on_says_connect() {
    logs::capture(tracing::Level::INFO);
    // Zuora's address accepts TCP and hangs up at once: every TLS handshake fails.
    let refuser = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refuser_addr = refuser.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let _refusing = tokio::spawn(async move {
        while let Ok((stream, _)) = refuser.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let routes = retry_routes_on(r#"["connect"]"#);
    let h = Harness::builder().routes(&routes).rest_at(refuser_addr).ready().await;
    let answer = call(
        Method::GET,
        &h.url(&job_path("summary")),
        &[("zuora-track-id", "connect-retried")],
        "",
    )
    .await;
    assert_refusal(&answer, 502, "upstream_unreachable");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "summary retries on connect");
    assert_eq!(
        retries(&h, r#"zuora_proxy_retries_total{route="job-summary",reason="connect"}"#).await,
        Some(2.0)
    );
    assert_eq!(access_line("connect-retried")["retries"], 2);
    // The abort route retries on statuses only.
    let answer = post(&h.url(&abort_path()), &[("idempotency-key", "k")]).await;
    assert_refusal(&answer, 502, "upstream_unreachable");
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "abort retried a connect failure");
}

// ---- helpers ----

/// A retries counter, or `None` while no retry created it.
async fn retries(h: &Harness, series: &str) -> Option<f64> {
    scrape(&h.admin_url("/metrics")).await.get(series)
}

async fn retrying() -> Harness {
    logs::capture(tracing::Level::INFO);
    let h = Harness::builder().routes(&retry_routes()).ready().await;
    h
}
