//! The per-tenant concurrency cap: at most `max_concurrency` requests in flight to a tenant,
//! the rest queued in arrival order for at most `queue_timeout`, then 503 `overloaded`.
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
use support::metrics::{scrape, Metrics};
use support::wait::eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zuora_auth_proxy::mock::ApiMode;

// Tests here switch the mock's (global) mode once `wait_api_calls` reports a request. The
// mock counts a request just before it reads the mode, with no await in between: on the
// single-threaded test runtime its handler reaches its first await (having read the mode)
// before the test resumes, so the switch never races the request it waited for.

#[tokio::test]
async fn in_flight_requests_never_exceed_max_concurrency() {
    let h = capped(2, "10s").await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(2)));
    let in_flight = gauge(&h, "default", "in_flight");
    let queued = gauge(&h, "default", "queue_length");
    let calls: Vec<_> = (0..5)
        .map(|i| tokio::spawn(abort(h.url(&abort_path()), format!("cap-{i}"))))
        .collect();
    assert!(
        h.mock.wait_api_calls(2, Duration::from_secs(5)).await,
        "the first two never reached Zuora"
    );
    wait_gauge(&queued, 3, "three requests queued").await;
    assert_eq!(
        h.mock.api_calls(),
        2,
        "a third request reached Zuora while two were in flight"
    );
    assert_eq!(in_flight.get(), 2);
    h.mock.set_api_mode(ApiMode::Normal);
    for call in calls {
        assert_eq!(call.await.unwrap().status, 200);
    }
    // Zuora's own count, not the proxy's gauge (which is raised only under a slot, so it
    // could never show more than the cap).
    assert_eq!(h.mock.peak_concurrency(), 2, "requests in flight at Zuora at once");
    assert_eq!(h.mock.received().len(), 5);
    assert_eq!((in_flight.get(), queued.get()), (0, 0), "gauges return to zero");
}

#[tokio::test]
async fn queued_requests_get_the_slot_in_arrival_order() {
    let (h, queued, first) = one_slot_held("10s", Duration::from_millis(2500), "order-0").await;
    let mut later = Vec::new();
    for i in 1..=4 {
        later.push(tokio::spawn(abort(h.url(&abort_path()), format!("order-{i}"))));
        // Each one is in the queue before the next one arrives.
        wait_gauge(&queued, i, "queued in turn").await;
    }
    h.mock.set_api_mode(ApiMode::Normal);
    assert_eq!(first.await.unwrap().status, 200);
    for call in later {
        assert_eq!(call.await.unwrap().status, 200);
    }
    let order = h.mock.received_header("zuora-track-id");
    assert_eq!(order, ["order-0", "order-1", "order-2", "order-3", "order-4"]);
}

#[tokio::test]
async fn a_request_queued_past_queue_timeout_is_503_overloaded_and_metered() {
    let (h, queued, holder) = one_slot_held("300ms", Duration::from_secs(2), "holder").await;
    let waiter = tokio::spawn(abort(h.url(&abort_path()), "waiter".into()));
    wait_gauge(&queued, 1, "the second request queued").await;
    let metrics = scrape(&h.admin_url("/metrics")).await.text;
    assert!(metrics.contains("# TYPE zuora_proxy_queue_length gauge"), "{metrics}");
    assert!(
        metrics.contains("zuora_proxy_queue_length{tenant=\"default\"} 1\n"),
        "{metrics}"
    );

    let started = Instant::now();
    let answer = waiter.await.unwrap();
    let track = assert_refusal(&answer, 503, "overloaded");
    assert_eq!(track, "waiter");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "overloaded only after {:?}",
        started.elapsed()
    );
    assert_eq!(queued.get(), 0);
    let metrics = scrape(&h.admin_url("/metrics")).await;
    let waited = metrics.value(r#"zuora_proxy_queue_wait_seconds_sum{tenant="default"}"#);
    let metrics = metrics.text;
    assert!(
        metrics.contains("# TYPE zuora_proxy_queue_wait_seconds histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zuora_proxy_queue_wait_seconds_count{tenant=\"default\"} 1\n"),
        "{metrics}"
    );
    assert!(
        (0.25..2.0).contains(&waited),
        "queue wait recorded as {waited} s for a 300 ms queue timeout"
    );
    assert!(
        metrics.contains("zuora_proxy_proxy_errors_total{code=\"overloaded\"} 1\n"),
        "{metrics}"
    );

    assert_eq!(holder.await.unwrap().status, 200);
    let tracks = h.mock.received_header("zuora-track-id");
    assert_eq!(tracks, ["holder"], "the overloaded request reached Zuora");
}

#[tokio::test]
async fn a_caller_that_hangs_up_while_queued_leaves_the_queue() {
    let h = capped(1, "10s").await;
    let queued = gauge(&h, "default", "queue_length");
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1500)));
    let holder = tokio::spawn(abort(h.url(&abort_path()), "holder".into()));
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);

    let mut quitter = TcpStream::connect(h.proxy.addr).await.unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: quitter\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    quitter.write_all(request.as_bytes()).await.unwrap();
    wait_gauge(&queued, 1, "the quitter queued").await;
    drop(quitter);
    wait_gauge(&queued, 0, "the quitter left the queue").await;

    let patient = tokio::spawn(abort(h.url(&abort_path()), "patient".into()));
    wait_gauge(&queued, 1, "the patient caller queued").await;
    h.mock.set_api_mode(ApiMode::Normal);
    assert_eq!(holder.await.unwrap().status, 200);
    let answer = patient.await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.header("zuora-track-id")),
        (200, Some("patient"))
    );
    let tracks = h.mock.received_header("zuora-track-id");
    assert_eq!(
        tracks,
        ["holder", "patient"],
        "the caller that hung up was still forwarded"
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_in_flight_gives_its_slot_back() {
    let h = capped(1, "10s").await;
    let queued = gauge(&h, "default", "queue_length");
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(5)));
    let mut quitter = TcpStream::connect(h.proxy.addr).await.unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: quitter\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    quitter.write_all(request.as_bytes()).await.unwrap();
    assert!(
        h.mock.wait_api_calls(1, Duration::from_secs(5)).await,
        "the quitter reached Zuora"
    );
    let next = tokio::spawn(abort(h.url(&abort_path()), "next".into()));
    wait_gauge(&queued, 1, "the next caller queued behind the quitter").await;
    h.mock.set_api_mode(ApiMode::Normal);
    let hung_up = Instant::now();
    drop(quitter);
    let answer = tokio::time::timeout(Duration::from_secs(3), next)
        .await
        .expect("the slot came back when its caller hung up, not when Zuora answered 5 s later")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(hung_up.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn each_tenant_has_its_own_slots() {
    // A second tenant whose Zuora accepts TCP and then never speaks: its requests stall.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = Harness::builder()
        .tenant("max_concurrency", "1")
        .tenant("queue_timeout", "\"10s\"")
        .extra_tenant("stalled", |t| {
            t.rest_at(silent.local_addr().unwrap())
                .key("max_concurrency", "1")
                .key("queue_timeout", "\"10s\"")
        })
        .rules(
            r#"
[[rules]]
name = "summaries-stall"
routes = ["job-summary"]
tenant = "stalled"

[[rules]]
name = "rest"
tenant = "default"
"#,
        )
        .ready()
        .await;
    let stalled_in_flight = gauge(&h, "stalled", "in_flight");
    let stalled_queue = gauge(&h, "stalled", "queue_length");
    let summary = h.url(&job_path("summary"));
    let _stuck = tokio::spawn(async move { get(&summary).await });
    wait_gauge(&stalled_in_flight, 1, "the stalled tenant's only slot taken").await;
    let summary = h.url(&job_path("summary"));
    let _queued = tokio::spawn(async move { get(&summary).await });
    wait_gauge(&stalled_queue, 1, "a second request queued for the stalled tenant").await;

    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        post(&h.url(&abort_path()), &[("zuora-track-id", "free")]),
    )
    .await
    .expect("the default tenant's slot is not the stalled tenant's");
    assert_eq!(
        (answer.status.as_u16(), answer.header("zuora-track-id")),
        (200, Some("free"))
    );
    assert_eq!(gauge(&h, "default", "queue_length").get(), 0);
    let tracks = h.mock.received_header("zuora-track-id");
    assert_eq!(tracks, ["free"]);
}

// ---- helpers ----

/// A proxy whose default tenant takes `max` requests at once and queues the rest for `queue`.
async fn capped(max: usize, queue: &str) -> Harness {
    let h = Harness::builder()
        .tenant("max_concurrency", &max.to_string())
        .tenant("queue_timeout", &format!("\"{queue}\""))
        .ready()
        .await;
    h
}

/// One slot and `queue_timeout`: the slot held by a request (`track`) that Zuora answers after
/// `delay`. The proxy, its queue gauge, and the holder's task.
async fn one_slot_held(
    queue_timeout: &str,
    delay: Duration,
    track: &str,
) -> (Harness, TenantGauge, JoinHandle<Answer>) {
    let h = capped(1, queue_timeout).await;
    let queued = gauge(&h, "default", "queue_length");
    h.mock.set_api_mode(ApiMode::Delay(delay));
    let holder = tokio::spawn(abort(h.url(&abort_path()), track.into()));
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);
    (h, queued, holder)
}

async fn abort(url: String, track: String) -> Answer {
    post(&url, &[("zuora-track-id", &track)]).await
}

/// One of a tenant's gauges (`in_flight`, `queue_length`), read from the metrics.
#[derive(Clone)]
struct TenantGauge {
    probe: zuora_auth_proxy::Probe,
    series: String,
}

impl TenantGauge {
    fn get(&self) -> i64 {
        Metrics::parse(&self.probe.metrics_text()).value_or_zero(&self.series) as i64
    }
}

fn gauge(h: &Harness, tenant: &str, name: &str) -> TenantGauge {
    TenantGauge {
        probe: h.proxy.probe(),
        series: format!("zuora_proxy_{name}{{tenant=\"{tenant}\"}}"),
    }
}

/// Waits until a gauge reads `want`.
async fn wait_gauge(gauge: &TenantGauge, want: i64, what: &str) {
    eventually(what, async || (gauge.get() == want).then_some(())).await;
}
