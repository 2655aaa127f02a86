//! What ops read off a running binary: the access line's standard fields with numbers as
//! numbers and no Rust debug output, and the metrics an exporter is expected to have.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod metrics;
}

use http::Method;
use serde_json::Value;
use support::binary::{Binary, Upstream};
use support::client::*;
use support::fixtures::*;

#[tokio::test]
async fn the_access_line_has_the_standard_fields_and_the_metrics_their_series() {
    let secret = "ops-access-secret";
    let zuora = Upstream::start(secret).await;
    let mock = &zuora.mock;
    let path = zuora.write(&zuora.config(ROUTES));
    let mut proxy = Binary::spawn(&path);
    let listening = proxy.listening().await;
    let url = |p: &str| format!("http://{}{p}", listening.addr);
    let admin = listening.admin.expect("the admin address is logged as a plain address");

    let body = r#"{"reason":"ops"}"#;
    let answer = call(
        Method::POST,
        &url(&job_path("echo")),
        &[("zuora-track-id", "ops-1"), ("user-agent", "billing-worker/2.1")],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let refused = get(&url("/v1/accounts")).await;
    assert_refusal(&refused, 404, "route_not_found");

    let scraped = support::metrics::scrape(&format!("http://{admin}/metrics")).await;
    let upstream = mock.base_url();
    let host = url::Url::parse(&upstream).unwrap();
    let tenant_addr = format!("{}:{}", host.host_str().unwrap(), host.port_or_known_default().unwrap());

    let (code, lines) = proxy.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    // The listener's own lines (target `zuora_auth_proxy::server`) are checked once
    // `server::serve` logs its address with `%`.
    for line in lines
        .iter()
        .filter(|l| !l.contains("\"target\":\"zuora_auth_proxy::server\""))
    {
        assert!(!line.contains("Some("), "Rust debug output in a log line: {line}");
    }
    let access: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    let line = access
        .iter()
        .find(|v| v["track_id"] == "ops-1")
        .unwrap_or_else(|| panic!("no access line for ops-1: {access:#?}"));
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["user_agent"], "billing-worker/2.1");
    assert_eq!(line["request_bytes"], body.len() as u64);
    assert_eq!(line["upstream_addr"], tenant_addr.as_str());
    assert_eq!(line["ratelimit_remaining"], 12499, "a number, not a string: {line}");
    assert_eq!(line["ratelimit_limit"], 12500);
    assert_eq!(line["ratelimit_reset"], 60);
    let ttfb = line["ttfb_ms"].as_f64().expect("ttfb_ms is a number");
    let head = line["duration_ms"].as_f64().unwrap();
    let total = line["total_ms"].as_f64().unwrap();
    assert!(
        head <= ttfb && ttfb <= total,
        "head {head} <= ttfb {ttfb} <= total {total}"
    );
    assert!(line["response_bytes"].as_u64().is_some_and(|n| n > 0), "{line}");

    let refusal = access.iter().find(|v| v["status"] == 404).expect("the refusal's line");
    assert_eq!(refusal["request_bytes"], 0);
    assert!(refusal.get("upstream_addr").is_none(), "{refusal}");

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scraped.value(&format!("zuora_proxy_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert_eq!(
        scraped.value(r#"zuora_proxy_upstream_responses_total{tenant="default",status="200"}"#),
        1.0
    );
    for status in [401, 429, 503] {
        assert_eq!(
            scraped.value(&format!(
                "zuora_proxy_upstream_responses_total{{tenant=\"default\",status=\"{status}\"}}"
            )),
            0.0,
            "{status} exists from the start"
        );
    }
    assert_eq!(
        scraped.value(r#"zuora_proxy_ratelimit_remaining{tenant="default"}"#),
        12499.0
    );
    let expiry = scraped.value(r#"zuora_proxy_token_expiry_timestamp_seconds{tenant="default"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 3700.0, "expiry {expiry}, now {now}");
    let started = scraped.value("process_start_time_seconds");
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "start {started}, now {now}"
    );
    assert!(scraped.value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(scraped.value("process_open_fds") >= 3.0);
    assert!(scraped.get("process_cpu_seconds_total").is_some());
    assert!(scraped.get("zuora_proxy_open_connections").is_some());
}
