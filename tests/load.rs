//! Load and soak: many callers at once while the token turns over every second, a SIGTERM
//! drain of a hundred requests in flight in the real binary, and the binary's memory over
//! ten thousand requests.
//!
//! The tests of this binary run one at a time (see [`serial`]): each measures counts, timing
//! or memory that a neighbour hammering the same two CI cores would skew.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod client;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod serial;
}

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::binary::Binary;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::serial::serial;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ApiMode, MockZuora, CLIENT_ID, CLIENT_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_every_second_are_refreshed_once_per_lifetime_under_256_callers() {
    let _serial = serial().await;
    // 256 slots, one per caller: every caller is in flight at once and reads the token at the
    // moment it turns over, which is the race under test. With the default 40 and a queue the
    // cap would serialise the callers, and the test would measure the queue instead.
    let lifetime = Duration::from_secs(1);
    let margin = Duration::from_millis(300);
    let h = Harness::builder()
        .tenant("max_concurrency", "256")
        .token_lifetime(1, "300ms")
        .ready()
        .await;
    let fetches_before = h.mock.token_calls();
    let calls_before = h.mock.api_calls();

    let began = Instant::now();
    let outcomes = run_for(&h.url(&abort_path()), 256, Duration::from_secs(3)).await;
    let run = began.elapsed();
    let fetches = h.mock.token_calls() - fetches_before;
    let calls = h.mock.api_calls() - calls_before;

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| o.error.as_deref().unwrap_or_default())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} answers were not 200, e.g. {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let callers_served: HashSet<usize> = outcomes.iter().map(|o| o.caller).collect();
    assert_eq!(callers_served.len(), 256, "some callers never got an answer");
    // The proxy never injects a token in its last quarter of life (tokens.rs and the token
    // unit tests show that), but a request can still be on its way when the token runs out
    // at Zuora, which then answers 401, and the proxy replays it once with the next token.
    // So every call Zuora saw beyond the callers' answers must be such a refused one, and
    // none may be anything else (a second replay, a retry).
    let text = h.proxy.probe().metrics_text();
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("zuora_proxy_upstream_responses_total{tenant=\"default\",status=\"401\"} "))
        .map_or(0.0, |v| v.trim().parse::<f64>().expect("a number")) as usize;
    assert_eq!(
        calls,
        outcomes.len() + refused,
        "Zuora saw {calls} requests for {} answers and {refused} refused tokens",
        outcomes.len()
    );

    let secs = run.as_secs_f64();
    let most = (secs / (lifetime - margin).as_secs_f64()).floor() as usize + 2;
    let least = (secs / lifetime.as_secs_f64()).floor() as usize - 1;
    eprintln!(
        "256 callers, {run:?}: {} answers ({:.0}/s), {fetches} token fetches (allowed {least}..={most})",
        outcomes.len(),
        outcomes.len() as f64 / secs
    );
    assert!(
        (least..=most).contains(&fetches),
        "{fetches} token fetches in {run:?} of 1 s tokens refreshed 300 ms early: \
         the fetcher must fetch once per lifetime, not per request"
    );
    let distinct: HashSet<String> = h
        .mock
        .received_header("authorization")
        .into_iter()
        .skip(calls_before)
        .collect();
    assert!(
        distinct.len() >= least,
        "requests kept using an old token: {} distinct tokens over {run:?}",
        distinct.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_requests_in_flight_answers_them_all_and_exits_0() {
    let _serial = serial().await;
    let (mock, _dir, mut bin, url) = spawned("max_concurrency = 128").await;
    let warm = post(&url, &[]).await;
    assert_eq!(warm.status, 200, "{:?}\n{}", warm.body, bin.log());

    mock.set_api_mode(ApiMode::Delay(Duration::from_secs(1)));
    let mut callers = JoinSet::new();
    for _ in 0..100 {
        let url = url.clone();
        callers.spawn(async move {
            let answer = post_once(&new_client(), &url).await;
            (answer, Instant::now())
        });
    }
    assert!(
        mock.wait_api_calls(1 + 100, Duration::from_secs(20)).await,
        "only {} of 100 requests reached Zuora\n{}",
        mock.api_calls() - 1,
        bin.log()
    );
    let signalled = Instant::now();
    bin.signal("TERM");

    let answers = tokio::time::timeout(Duration::from_secs(15), callers.join_all())
        .await
        .expect("every in-flight request is answered");
    for (answer, at) in &answers {
        assert_eq!(answer.as_ref().ok(), Some(&200), "{answer:?}\n{}", bin.log());
        assert!(
            *at > signalled,
            "answered before the signal: not in flight when it came"
        );
    }
    let status = bin.wait_exit(Duration::from_secs(10)).await;
    let drained = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", bin.log());
    // The drain lasts as long as the requests (1 s at Zuora), not the whole 10 s grace.
    assert!(drained < Duration::from_secs(6), "drain took {drained:?}");
    assert_eq!(mock.api_calls(), 101, "a request was sent to Zuora twice");
    eprintln!("100 in flight at SIGTERM: all 200, exit 0 after {drained:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_10000_requests() {
    let _serial = serial().await;
    const WARM_UP: usize = 500;
    const REQUESTS: usize = 10_000;
    const CALLERS: usize = 32;
    const GROWTH_LIMIT_KIB: u64 = 8 * 1024;
    let (mock, _dir, mut bin, url) = spawned("").await;

    let failures = run_count(&url, CALLERS, WARM_UP).await;
    assert!(failures.is_empty(), "warm-up: {failures:?}\n{}", bin.log());
    let before = vm_rss_kib(bin.pid());
    let began = Instant::now();
    let failures = run_count(&url, CALLERS, REQUESTS).await;
    let took = began.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let after = vm_rss_kib(bin.pid());
    eprintln!(
        "VmRSS {before} KiB after {WARM_UP} requests, {after} KiB after {REQUESTS} more \
         ({:+} KiB; {took:?}, {:.0} requests/s)",
        after as i64 - before as i64,
        REQUESTS as f64 / took.as_secs_f64()
    );
    assert_eq!(mock.api_calls(), WARM_UP + REQUESTS, "every request reached Zuora once");
    assert_eq!(mock.token_calls(), 1, "one token served every request");
    assert!(
        after.saturating_sub(before) < GROWTH_LIMIT_KIB,
        "resident memory grew from {before} KiB to {after} KiB over {REQUESTS} requests"
    );
    bin.signal("TERM");
    assert_eq!(
        bin.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0),
        "{}",
        bin.log()
    );
}

// ---- helpers ----

/// Longest a single request may take before the caller gives up on it.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);
/// Bounds one caller's loop whatever the clock says.
const MAX_REQUESTS_PER_CALLER: usize = 5_000;
/// Bounds a counted run whatever the count says.
const COUNT_LIMIT: Duration = Duration::from_secs(60);

/// One answer as a caller saw it.
#[derive(Debug)]
struct Outcome {
    caller: usize,
    /// The HTTP status, or the client's error when there was no answer.
    status: u16,
    error: Option<String>,
}

/// A keep-alive client: each caller owns one, so it reuses its own connection.
fn new_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs with no body and reads the whole answer; the status, or why there was none.
async fn post_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<u16, String> {
    let request = http::Request::post(url).body(Full::default()).unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("{e:?}"))?;
        if status != 200 {
            return Err(format!("{status}: {:?}", body.to_bytes()));
        }
        Ok(status)
    };
    tokio::time::timeout(ANSWER_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ANSWER_LIMIT:?}")))
}

/// `callers` callers, each sending one request after another for `length`.
async fn run_for(url: &str, callers: usize, length: Duration) -> Vec<Outcome> {
    let until = Instant::now() + length;
    let mut set = JoinSet::new();
    for caller in 0..callers {
        let url = url.to_string();
        set.spawn(async move {
            let client = new_client();
            let mut outcomes = Vec::new();
            while Instant::now() < until && outcomes.len() < MAX_REQUESTS_PER_CALLER {
                let (status, error) = match post_once(&client, &url).await {
                    Ok(status) => (status, None),
                    Err(e) => (0, Some(e)),
                };
                outcomes.push(Outcome { caller, status, error });
            }
            outcomes
        });
    }
    set.join_all().await.into_iter().flatten().collect()
}

/// Sends `total` requests from `callers` keep-alive callers; returns the failures, running
/// out of [`COUNT_LIMIT`] among them.
async fn run_count(url: &str, callers: usize, total: usize) -> Vec<String> {
    let tickets = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + COUNT_LIMIT;
    let mut set = JoinSet::new();
    for _ in 0..callers {
        let (url, tickets) = (url.to_string(), tickets.clone());
        set.spawn(async move {
            let client = new_client();
            let mut failures = Vec::new();
            while tickets.fetch_add(1, Ordering::Relaxed) < total {
                if Instant::now() > until {
                    failures.push(format!("not all {total} requests sent within {COUNT_LIMIT:?}"));
                    break;
                }
                if let Err(e) = post_once(&client, &url).await {
                    failures.push(e);
                }
            }
            failures
        });
    }
    set.join_all().await.into_iter().flatten().collect()
}

/// A config for the binary against `mock`: a free port, no admin listener, warnings only
/// except the start-up line that names the port; `tenant_extra` is added to the tenant.
/// The binary on a mock Zuora, with `tenant_extra` lines in its tenant: Zuora, the directory
/// of its files, the binary and the URL of the abort route on it.
async fn spawned(tenant_extra: &str) -> (MockZuora, tempfile::TempDir, Binary, String) {
    let mock = MockZuora::builder().start().await.expect("mock starts");
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&mock, dir.path(), tenant_extra);
    let mut bin = Binary::spawn(&config);
    let addr = bin.listening().await.addr;
    (mock, dir, bin, format!("http://{addr}{}", abort_path()))
}

fn binary_config(mock: &MockZuora, dir: &Path, tenant_extra: &str) -> PathBuf {
    let ca = mock.write_ca(dir).expect("CA written");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[admin]
listen = ""

[log]
format = "json"
level = "warn,zuora_auth_proxy=info"

[tenants.default]
base_url = "{base}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
ca_file = {ca:?}
{tenant_extra}
{ROUTES}
"#,
        base = mock.base_url(),
        ca = ca.display().to_string(),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Resident set size of a process, from `/proc/<pid>/status`.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}
