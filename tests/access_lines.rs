//! One access line per request, however it ends: Zuora's body cut short, a body that stalls
//! past `server.upstream_body_timeout`, a caller that leaves before its answer. Each is
//! counted in `proxy_errors_total` by its code, and the tenant's slot comes back.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod wait;
}

use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::metrics::Metrics;
use support::wait::eventually;
use zuora_auth_proxy::mock::ApiMode;

fn metrics(h: &Harness) -> Metrics {
    Metrics::parse(&h.proxy.probe().metrics_text())
}

fn errors(h: &Harness, code: &str) -> f64 {
    metrics(h).value_or_zero(&format!("zuora_proxy_proxy_errors_total{{code=\"{code}\"}}"))
}

fn in_flight(h: &Harness) -> f64 {
    metrics(h).value_or_zero("zuora_proxy_in_flight{tenant=\"default\"}")
}

/// GETs the job summary: its head must be a 200; whether reading its body then failed.
async fn summary_body_fails(h: &Harness) -> bool {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(h.url(&job_path("summary")))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("head arrives");
    assert_eq!(response.status(), 200);
    http_body_util::BodyExt::collect(response.into_body()).await.is_err()
}

#[tokio::test]
async fn a_body_cut_short_by_zuora_is_counted_as_incomplete() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Truncated {
        declared: 10_000,
        sent: 1_000,
    });
    assert!(
        summary_body_fails(&h).await,
        "a cut body must not reach the caller as a whole one"
    );
    eventually("the cut body counted", async || {
        (errors(&h, "upstream_body_incomplete") == 1.0).then_some(())
    })
    .await;
    assert_eq!(in_flight(&h), 0.0, "the slot came back");
}

#[tokio::test]
async fn a_stalled_body_is_cut_after_the_upstream_body_timeout() {
    let h = Harness::builder()
        .server("upstream_body_timeout", "\"300ms\"")
        .ready()
        .await;
    h.mock.set_api_mode(ApiMode::StallBody {
        after_bytes: 100,
        declared: 5_000,
    });
    let started = tokio::time::Instant::now();
    assert!(summary_body_fails(&h).await, "the stalled body was cut");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
    eventually("the stall counted", async || {
        (errors(&h, "upstream_body_timeout") == 1.0).then_some(())
    })
    .await;
    assert_eq!(in_flight(&h), 0.0, "the slot came back");
    h.mock.release_stalls();
}

#[tokio::test]
async fn a_caller_that_leaves_before_its_answer_leaves_a_line() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(3)));
    let url = h.url(&abort_path());
    let call = tokio::spawn(async move { post(&url, &[("zuora-track-id", "leaves-early")]).await });
    assert!(
        h.mock.wait_api_calls(1, Duration::from_secs(5)).await,
        "Zuora got the abort"
    );
    call.abort();
    let _ = call.await;
    eventually("the caller's departure counted", async || {
        (errors(&h, "caller_gone") == 1.0).then_some(())
    })
    .await;
    let m = metrics(&h);
    assert_eq!(
        m.value_or_zero("zuora_proxy_requests_total{route=\"abort-bulk-job\",status=\"499\"}"),
        1.0,
        "{}",
        m.text
    );
    eventually("the slot came back", async || (in_flight(&h) == 0.0).then_some(())).await;
}

#[tokio::test]
async fn open_caller_connections_are_counted_while_they_last() {
    let h = Harness::builder().start().await;
    let open = |h: &Harness| metrics(h).value_or_zero("zuora_proxy_open_connections");
    assert_eq!(open(&h), 0.0);
    let first = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    eventually("two connections counted", async || (open(&h) == 2.0).then_some(())).await;
    drop(first);
    drop(second);
    eventually("both gone", async || (open(&h) == 0.0).then_some(())).await;
}
