//! The admin listener: `/healthz`, `/readyz` tied to the tokens and to the drain, `/metrics`
//! in Prometheus text format with label values that never come from a caller.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod wait;
}

use serde_json::Value;
use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::metrics::{scrape, Metrics};
use support::wait::eventually;
use zuora_auth_proxy::mock::{ApiMode, TokenMode};

/// What `/readyz` must never show, whatever the state.
const TOKEN_MARKER: &str = "mock-token-";

#[tokio::test]
async fn healthz_answers_while_serving() {
    let h = Harness::builder().start().await;
    let answer = get(&h.admin_url("/healthz")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

/// RFC 9110 §15.5.6: a 405 response MUST carry `Allow`.
#[tokio::test]
async fn admin_refuses_other_methods_with_allow() {
    let h = Harness::builder().start().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = post(&h.admin_url(path), &[]).await;
        assert_eq!(answer.status, 405, "{path}");
        let allow = answer
            .header("allow")
            .unwrap_or_else(|| panic!("{path}: 405 without Allow"));
        assert!(allow.contains("GET"), "{path}: {allow}");
    }
}

#[tokio::test]
async fn readyz_is_503_while_fetching_then_200_with_the_token() {
    let h = Harness::builder()
        .mock(|m| m.token_mode(TokenMode::Delay(Duration::from_millis(1000))))
        .start()
        .await;

    let before = get(&h.admin_url("/readyz")).await;
    assert_eq!(before.status, 503, "{:?}", before.body);
    assert_eq!(before.header("content-type"), Some("application/json"));
    assert_no_token(&before);
    let body = before.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["draining"], false, "{body}");
    assert_eq!(body["tenants"]["default"]["state"], "fetching", "{body}");
    assert_eq!(body["tenants"]["default"]["expires_in_s"], Value::Null, "{body}");

    h.wait_for_token().await;
    let after = get(&h.admin_url("/readyz")).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert_no_token(&after);
    let body = after.json();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["tenants"]["default"]["state"], "ok", "{body}");
    let expires_in = body["tenants"]["default"]["expires_in_s"].as_f64().expect("a number");
    assert!(expires_in > 0.0 && expires_in <= 3599.0, "{body}");
}

#[tokio::test]
async fn readyz_names_a_failing_token_endpoint_then_recovers() {
    let h = Harness::builder()
        .mock(|m| m.token_mode(TokenMode::Status(503)))
        .start()
        .await;

    // The first answer is a 503; the fetcher then backs off for 0.5 to 1 s.
    let failing = readyz_once(&h, |_, body| state_of(body).starts_with("failing: ")).await;
    assert_eq!(failing.status, 503, "{:?}", failing.body);
    assert_no_token(&failing);
    let body = failing.json();
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        state_of(&body).contains("503"),
        "the reason names Zuora's answer: {body}"
    );
    assert_eq!(body["tenants"]["default"]["expires_in_s"], Value::Null, "{body}");

    h.mock.set_token_mode(TokenMode::Normal);
    let ready = readyz_once(&h, |status, _| status == 200).await;
    assert_no_token(&ready);
    assert_eq!(state_of(&ready.json()), "ok");
}

#[tokio::test]
async fn readyz_turns_503_when_the_token_ages_while_the_endpoint_fails() {
    let h = Harness::builder()
        .token_lifetime(3, "1s")
        .admin("ready_min_ttl", "\"2s\"")
        .ready()
        .await;
    let fresh = get(&h.admin_url("/readyz")).await;
    assert_eq!(
        fresh.status, 200,
        "a 3 s token is fresh enough for 2 s: {:?}",
        fresh.body
    );

    // The refresh is due about 2 s after the fetch; it fails, and the token falls under 2 s.
    h.mock.set_token_mode(TokenMode::Status(500));
    let stale = readyz_once(&h, |_, body| state_of(body).starts_with("failing: ")).await;
    assert_eq!(stale.status, 503, "{:?}", stale.body);
    assert_no_token(&stale);
    let body = stale.json();
    assert_eq!(body["ready"], false, "{body}");
    assert!(state_of(&body).contains("500"), "{body}");
    assert!(h.mock.token_calls() >= 2, "the refresh was attempted");
    let left = body["tenants"]["default"]["expires_in_s"].as_f64().unwrap_or(0.0);
    assert!(left < 2.0, "under ready_min_ttl: {body}");
}

#[tokio::test]
async fn readyz_is_503_at_once_when_draining() {
    let h = Harness::builder().ready().await;
    assert_eq!(get(&h.admin_url("/readyz")).await.status, 200);

    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1500)));
    let slow = tokio::spawn(post_owned(h.url(&abort_path())));
    assert!(
        h.mock.wait_api_calls(1, Duration::from_secs(5)).await,
        "slow request reached Zuora"
    );

    h.proxy.begin_shutdown();
    let draining = get(&h.admin_url("/readyz")).await;
    assert_eq!(draining.status, 503, "{:?}", draining.body);
    let body = draining.json();
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    // The token itself is still fine: only the drain makes the proxy unready.
    assert_eq!(state_of(&body), "ok", "{body}");
    assert_no_token(&draining);
    // Liveness holds while the drain runs.
    assert_eq!(get(&h.admin_url("/healthz")).await.status, 200);

    assert_eq!(slow.await.expect("caller task").status, 200);
    tokio::time::timeout(Duration::from_secs(6), h.proxy.wait())
        .await
        .expect("drain finishes");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_family() {
    let h = Harness::builder().ready().await;
    // Touch every family: a forwarded request, a refusal, a reload.
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    assert_eq!(post(&h.url("/v1/accounts"), &[]).await.status, 404);
    let file = h.dir().join("same.toml");
    std::fs::write(&file, h.config_text()).unwrap();
    h.proxy.reload_from(&file).expect("the running configuration reloads");

    let answer = get(&h.admin_url("/metrics")).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = String::from_utf8(answer.body.to_vec()).expect("UTF-8");
    let exposition = Metrics::parse(&text);
    for (family, kind) in [
        ("zuora_proxy_requests_total", "counter"),
        ("zuora_proxy_request_duration_seconds", "histogram"),
        ("zuora_proxy_upstream_duration_seconds", "histogram"),
        ("zuora_proxy_token_fetches_total", "counter"),
        ("zuora_proxy_token_expires_in_seconds", "gauge"),
        ("zuora_proxy_in_flight", "gauge"),
        ("zuora_proxy_proxy_errors_total", "counter"),
        ("zuora_proxy_config_reloads_total", "counter"),
    ] {
        assert_eq!(
            exposition.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}\n{text}"
        );
    }
    for sample in &exposition.samples {
        let family = family_of(&exposition, &sample.name);
        assert!(family.is_some(), "sample {} has no # TYPE line\n{text}", sample.name);
    }
    let fetched = exposition.value_or_zero(r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#);
    assert!(fetched >= 1.0, "{text}");
    let expires_in = exposition.value_or_zero(r#"zuora_proxy_token_expires_in_seconds{tenant="default"}"#);
    assert!(expires_in > 0.0 && expires_in <= 3599.0, "{text}");
    assert!(!text.contains(TOKEN_MARKER), "a token in the metrics");
}

/// Series that are known in advance exist from the start at 0, so that `rate()` and
/// `increase()` see the first event (Prometheus: "avoid missing metrics").
#[tokio::test]
async fn fresh_proxy_exposes_every_family_with_known_series_at_zero() {
    let h = Harness::builder().ready().await;
    let exposition = metrics(&h).await;
    let text = &exposition.text;
    for family in [
        "zuora_proxy_requests_total",
        "zuora_proxy_request_duration_seconds",
        "zuora_proxy_upstream_duration_seconds",
        "zuora_proxy_token_fetches_total",
        "zuora_proxy_token_expires_in_seconds",
        "zuora_proxy_in_flight",
        "zuora_proxy_proxy_errors_total",
        "zuora_proxy_config_reloads_total",
    ] {
        assert!(exposition.types.contains_key(family), "no # TYPE for {family}\n{text}");
    }
    for series in [
        r#"zuora_proxy_config_reloads_total{result="error"}"#,
        r#"zuora_proxy_config_reloads_total{result="ok"}"#,
        r#"zuora_proxy_in_flight{tenant="default"}"#,
    ] {
        assert!(exposition.get(series).is_some(), "{series} missing\n{text}");
    }
}

#[tokio::test]
async fn request_counters_move_by_exactly_the_requests_sent() {
    let h = Harness::builder().ready().await;
    let before = metrics(&h).await;

    for _ in 0..3 {
        assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
    }
    let missing = post(&h.url("/v1/accounts"), &[]).await;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert_eq!(missing.header("x-zuora-proxy-error"), Some("route_not_found"));

    let after = metrics(&h).await;
    let delta = |series: &str| after.value_or_zero(series) - before.value_or_zero(series);
    assert_eq!(
        delta(r#"zuora_proxy_requests_total{route="abort-bulk-job",status="200"}"#),
        3.0
    );
    assert_eq!(delta(r#"zuora_proxy_requests_total{route="(none)",status="404"}"#), 1.0);
    assert_eq!(delta(r#"zuora_proxy_proxy_errors_total{code="route_not_found"}"#), 1.0);
    assert_eq!(
        delta(r#"zuora_proxy_request_duration_seconds_count{route="abort-bulk-job"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"zuora_proxy_request_duration_seconds_count{route="(none)"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"zuora_proxy_upstream_duration_seconds_count{tenant="default"}"#),
        3.0
    );
    // The 404 never reached Zuora, and a cached token serves every request.
    assert_eq!(h.mock.api_calls(), 3);
    assert_eq!(
        delta(r#"zuora_proxy_token_fetches_total{tenant="default",result="ok"}"#),
        0.0
    );
    // Histogram buckets are cumulative: +Inf holds the count.
    assert_eq!(
        after.value_or_zero(r#"zuora_proxy_request_duration_seconds_bucket{route="abort-bulk-job",le="+Inf"}"#),
        after.value_or_zero(r#"zuora_proxy_request_duration_seconds_count{route="abort-bulk-job"}"#),
    );
}

#[tokio::test]
async fn in_flight_gauge_counts_a_request_at_zuora() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1000)));
    let slow = tokio::spawn(post_owned(h.url(&abort_path())));
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);

    let during = metrics(&h).await;
    assert_eq!(during.value_or_zero(r#"zuora_proxy_in_flight{tenant="default"}"#), 1.0);
    assert_eq!(slow.await.expect("caller task").status, 200);
    let after = metrics(&h).await;
    assert_eq!(after.value_or_zero(r#"zuora_proxy_in_flight{tenant="default"}"#), 0.0);
}

#[tokio::test]
async fn caller_input_never_becomes_a_label_value() {
    let h = Harness::builder().ready().await;
    // Caller input: each request carries the marker or junk in its method, path or a header.
    let marker = "INJECTED";
    let no_headers: &[Header] = &[];
    let weird: [(&str, String, &[Header]); 7] = [
        ("GET", format!("/{marker}-path"), no_headers),
        ("POST", format!("/{marker}/route=%22x%22/status"), no_headers),
        ("POST", format!("/bulk-data/bulk-jobs/{marker}/aborts"), no_headers),
        ("POST", abort_path(), &[("zuora-track-id", "INJECTED:colon")]),
        ("DELETE", abort_path(), &[("x-route", "INJECTED")]),
        ("INJECTED", abort_path(), no_headers),
        (
            "GET",
            format!("/{}", "a%22b%7D%0A".repeat(3)),
            &[("x-tenant", "INJECTED")],
        ),
    ];
    for (method, path, headers) in &weird {
        let answer = call(method.parse().unwrap(), &h.url(path), headers, bytes::Bytes::new()).await;
        assert!(answer.status.is_client_error(), "{method} {path}: {}", answer.status);
    }

    let exposition = metrics(&h).await;
    let text = &exposition.text;
    assert!(
        !text.to_ascii_uppercase().contains(marker),
        "caller input in the metrics:\n{text}"
    );
    let routes = [
        "abort-bulk-job",
        "job-summary",
        "job-downloads",
        "echo",
        "caller-token",
        "(none)",
    ];
    // The README's error codes, token fetch results and reload results.
    let codes = [
        "ambiguous_framing",
        "invalid_host",
        "route_not_found",
        "method_not_allowed",
        "invalid_path_parameter",
        "invalid_track_id",
        "no_matching_rule",
        "body_too_large",
        "invalid_body",
        "body_timeout",
        "unsupported_transfer_coding",
        "token_unavailable",
        "overloaded",
        "upstream_unreachable",
        "upstream_failed",
        "upstream_timeout",
        "upstream_invalid_response",
        "internal_error",
        "caller_gone",
        "upstream_body_incomplete",
        "upstream_body_timeout",
        "malformed_request",
        "request_head_too_large",
        "uri_too_long",
    ];
    let results = [
        "ok",
        "rate_limited",
        "rejected",
        "server_error",
        "unreachable",
        "timeout",
        "invalid",
        "secret",
        "error",
    ];
    for sample in &exposition.samples {
        for (name, value) in &sample.labels {
            let allowed = match name.as_str() {
                "route" => routes.contains(&value.as_str()),
                "status" => value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()),
                "tenant" => value == "default",
                "code" => codes.contains(&value.as_str()),
                "result" => results.contains(&value.as_str()),
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                // zuora_proxy_build_info: the build's own version.
                "version" => value == env!("CARGO_PKG_VERSION"),
                // zuora_proxy_connections_accepted_total: the worker's index (server.workers).
                "worker" => value.parse::<usize>().is_ok(),
                // Fixed reason codes (retries): lower-case words only.
                "reason" => value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                _ => false,
            };
            assert!(allowed, "label {name}={value:?} on {}\n{text}", sample.name);
        }
    }
    // One row per route and status, however many distinct paths were sent (rows at zero
    // are the series every route has from the start).
    let rows: Vec<String> = exposition
        .samples
        .iter()
        .filter(|s| s.name == "zuora_proxy_requests_total" && s.value > 0.0)
        .map(|s| {
            format!(
                "{}/{}",
                s.label("route").unwrap_or_default(),
                s.label("status").unwrap_or_default()
            )
        })
        .collect();
    let mut expected = vec!["(none)/404", "(none)/405", "abort-bulk-job/400"];
    let mut rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    rows.sort_unstable();
    expected.sort_unstable();
    assert_eq!(rows, expected, "{text}");
    assert_eq!(
        exposition.value_or_zero(r#"zuora_proxy_requests_total{route="(none)",status="404"}"#),
        3.0
    );
    let rows = [
        ("route_not_found", 3.0),
        ("invalid_path_parameter", 1.0),
        ("invalid_track_id", 1.0),
        ("method_not_allowed", 2.0),
    ];
    for (code, n) in rows {
        assert_eq!(
            exposition.value_or_zero(&format!("zuora_proxy_proxy_errors_total{{code=\"{code}\"}}")),
            n,
            "{code}\n{text}"
        );
    }
}

// ---- helpers ----

/// A request header as `(name, value)`.
type Header = (&'static str, &'static str);

/// `post`, owning its URL so it can run in a spawned task.
async fn post_owned(url: String) -> Answer {
    post(&url, &[]).await
}

fn assert_no_token(answer: &Answer) {
    let body = String::from_utf8_lossy(&answer.body);
    assert!(
        !body.contains(TOKEN_MARKER) && !body.contains("Bearer"),
        "a token in /readyz: {body}"
    );
}

/// The `default` tenant's readiness state.
fn state_of(body: &Value) -> String {
    body["tenants"]["default"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The first `/readyz` answer for which `done(status, body)` holds; readiness changes without
/// an event to await.
async fn readyz_once(h: &Harness, done: impl Fn(u16, &Value) -> bool) -> Answer {
    eventually("/readyz reaches the state", async || {
        let answer = get(&h.admin_url("/readyz")).await;
        done(answer.status.as_u16(), &answer.json()).then_some(answer)
    })
    .await
}

async fn metrics(h: &Harness) -> Metrics {
    scrape(&h.admin_url("/metrics")).await
}

/// The `# TYPE` family a sample belongs to (histograms add `_bucket`, `_sum`, `_count`).
fn family_of<'m>(metrics: &'m Metrics, sample: &str) -> Option<&'m str> {
    if let Some(kind) = metrics.types.get(sample) {
        return Some(kind);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = sample.strip_suffix(suffix)?;
        metrics
            .types
            .get(family)
            .filter(|k| *k == "histogram")
            .map(String::as_str)
    })
}
