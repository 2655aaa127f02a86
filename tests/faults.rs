//! Faults under load: while sixteen callers keep sending, Zuora resets connections, stalls,
//! answers 503 or 429, restarts, or its token endpoint goes down. Only the requests that meet
//! the fault fail, each with its documented status and code, and the proxy recovers by
//! itself. With retries on the route, a short fault is not seen by callers at all.
//!
//! The tests of this binary run one at a time (see [`serial`]): their timing bounds assume
//! the two CI cores are not shared with another load test of this binary.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod metrics;
    pub mod serial;
    pub mod wait;
}

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::fixtures::*;
use support::harness::*;
use support::metrics::Metrics;
use support::serial::serial;
use support::wait::{eventually, eventually_within};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ApiMode, MockZuora, TokenMode};
use zuora_auth_proxy::Running;
use zuora_auth_proxy::TokenPhase as Phase;

/// Callers sending one request after another, each on its own keep-alive connection.
const CALLERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_fail_only_their_requests_with_502_upstream_failed() {
    let _serial = serial().await;
    let h = Harness::builder().ready().await;
    let run = fault_window(
        "reset",
        &h,
        || h.mock.set_api_mode(ApiMode::Reset),
        || h.mock.set_api_mode(ApiMode::Normal),
    )
    .await;
    for failure in run.failures() {
        failure.assert_proxy_error(502, "upstream_failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_past_the_request_timeout_fails_only_its_requests_with_504() {
    let _serial = serial().await;
    let h = Harness::builder().server("request_timeout", "\"1s\"").ready().await;
    let stall = ApiMode::Delay(Duration::from_secs(3));
    let run = fault_window(
        "stall",
        &h,
        || h.mock.set_api_mode(stall.clone()),
        || h.mock.set_api_mode(ApiMode::Normal),
    )
    .await;
    for failure in run.failures() {
        failure.assert_proxy_error(504, "upstream_timeout");
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&failure.took),
            "a 504 after {:?} with request_timeout = 1s",
            failure.took
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zuoras_503s_pass_through_unchanged_and_stop_with_the_fault() {
    zuoras_status_passes_through_and_stops_with_the_fault(503, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zuoras_429s_pass_through_with_retry_after_and_stop_with_the_fault() {
    zuoras_status_passes_through_and_stops_with_the_fault(429, Some(1)).await;
}

/// Zuora answers `status` (with `Retry-After: retry_after_secs`) for a while: the callers
/// get it as Zuora's own answer, on a route without retries each call reaches Zuora once.
async fn zuoras_status_passes_through_and_stops_with_the_fault(status: u16, retry_after_secs: Option<u64>) {
    let _serial = serial().await;
    let h = Harness::builder().ready().await;
    let fault = ApiMode::Status {
        status,
        retry_after_secs,
    };
    let run = fault_window(
        &status.to_string(),
        &h,
        || h.mock.set_api_mode(fault.clone()),
        || h.mock.set_api_mode(ApiMode::Normal),
    )
    .await;
    let retry_after = retry_after_secs.map(|secs| secs.to_string());
    for failure in run.failures() {
        failure.assert_zuoras_own(status, retry_after.as_deref());
    }
    assert_eq!(
        h.mock.api_calls(),
        run.outcomes.len(),
        "the proxy retried a {status} on a route without retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zuora_restart_fails_requests_only_while_it_is_down_then_one_token_is_fetched() {
    let _serial = serial().await;
    // The rest of the harness (its files) lives to the end of the test.
    let h = Harness::builder().ready().await;
    let Harness { mock, proxy, .. } = h;
    let (run, mock, down, up) = restart_under_load(mock, &proxy, async |load| {
        let failed = load.tally().failed;
        load.wait_during_fault(|t| t.failed >= failed + 2 * CALLERS).await;
    })
    .await;

    let mut unreachable = 0;
    for failure in run.failures() {
        let code = match failure.proxy_error.as_deref() {
            Some(code @ "upstream_unreachable") => {
                unreachable += 1;
                code
            }
            Some(code @ "upstream_failed") => code,
            other => panic!("while Zuora was down: {other:?} in {failure:?}"),
        };
        failure.assert_proxy_error(502, code);
    }
    assert!(unreachable > 0, "no request found Zuora's port closed");
    eprintln!(
        "restart: {} of {} answers failed while Zuora was down for {:?} ({unreachable} upstream_unreachable)",
        run.failures().count(),
        run.outcomes.len(),
        up - down
    );
    // The restarted Zuora knows none of the old tokens: however many requests it refused,
    // the proxy fetched one new token and replayed each of them once with it.
    assert_eq!(mock.token_calls(), 1, "token fetches from the restarted Zuora");
    let mut sends: HashMap<String, usize> = HashMap::new();
    for r in mock.received() {
        *sends.entry(track_of(&r.headers)).or_default() += 1;
    }
    let replayed = sends.values().filter(|n| **n == 2).count();
    assert!(
        (1..=CALLERS).contains(&replayed),
        "{replayed} requests replayed: one per caller at most carried the old token"
    );
    assert!(sends.values().all(|n| *n <= 2), "a request was sent more than twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_a_burst_of_429s_is_not_seen_by_callers() {
    retried_status_is_invisible(429).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_a_burst_of_503s_is_not_seen_by_callers() {
    retried_status_is_invisible(503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_a_quick_zuora_restart_is_not_seen_by_callers() {
    let _serial = serial().await;
    // The rest of the harness (its files) lives to the end of the test.
    let h = Harness::builder().routes(RETRYING_ROUTES).ready().await;
    let Harness { mock, proxy, .. } = h;
    let (run, mock, down, up) = restart_under_load(mock, &proxy, async |_| {}).await;

    let failures: Vec<&Outcome> = run.failures().collect();
    assert!(failures.is_empty(), "callers saw the restart: {}", sample(&failures));
    let retried = retries_total(&proxy, "502") + retries_total(&proxy, "connect");
    eprintln!(
        "quick restart: Zuora down for {:?}, {} answers, all 200, {retried} retries",
        up - down,
        run.outcomes.len()
    );
    assert_eq!(mock.token_calls(), 1, "token fetches from the restarted Zuora");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_outage_is_unseen_until_expiry_then_503_then_recovers_within_a_backoff_step() {
    let _serial = serial().await;
    let token_wait = Duration::from_millis(300);
    // A 2 s token refreshed halfway: the first refresh fails a second before the token expires.
    let h = Harness::builder()
        .token_lifetime(2, "1s")
        .tenant("token_wait", "\"300ms\"")
        .ready()
        .await;
    let token = h.token().expect("a token");
    // The proxy stops using a token a little before it expires.
    let expiry = token.usable_until;
    h.mock.set_token_mode(TokenMode::Status(503));
    let outage = Instant::now();
    let load = Load::start(&h.url(&abort_path()));

    // While the token lasts: refreshes fail, callers notice nothing.
    assert!(
        h.mock
            .wait_token_calls(2, expiry.saturating_duration_since(Instant::now()))
            .await,
        "no refresh was attempted while the token was valid"
    );
    // Past expiry: every request waits token_wait, then 503; none reaches Zuora.
    load.wait("503s past expiry", |t| t.failed >= 2 * CALLERS).await;

    h.mock.set_token_mode(TokenMode::Normal);
    let restored = Instant::now();
    // Recovery comes with the fetch already scheduled: the current backoff step, no later.
    // (A fetch in flight as the endpoint returns may still bring a 503: wait for its outcome.)
    let phase = settled_phase(&h).await;
    let failed_fetches = h.mock.token_calls() - 1;
    let (retry_at, step) = match phase {
        Phase::Failing { retry_at, .. } => (retry_at, Duration::from_secs(1 << (failed_fetches - 1).min(6))),
        _ => (restored, Duration::ZERO),
    };
    assert!(
        retry_at <= restored + step,
        "the next fetch is {:?} away after {failed_fetches} failures",
        retry_at - restored
    );
    let ok = load.tally().ok;
    load.wait("the first answer after the endpoint returned", |t| t.ok > ok)
        .await;
    let recovered = Instant::now();
    let ok = load.tally().ok;
    load.wait("answers after recovery", |t| t.ok >= ok + 4 * CALLERS).await;
    let run = load.finish(outage, recovered).await;

    eprintln!(
        "token endpoint: {failed_fetches} failed fetches over {:?}; expired {:?} after the outage began; \
         recovered {:?} after it ended",
        restored - outage,
        expiry - outage,
        recovered - restored
    );
    assert!(
        failed_fetches <= 4,
        "{failed_fetches} token calls in {:?}: a failing endpoint is backed off, not hammered",
        restored - outage
    );
    assert!(
        recovered <= retry_at.max(restored) + Duration::from_secs(1),
        "recovered {:?} after the endpoint returned, the retry was due after {:?}",
        recovered - restored,
        retry_at.saturating_duration_since(restored)
    );
    assert!(
        recovered - restored < Duration::from_secs(5),
        "{:?}",
        recovered - restored
    );

    let valid = run
        .outcomes
        .iter()
        .filter(|o| o.started < expiry - Duration::from_millis(300));
    let mut served = 0;
    for o in valid {
        assert_eq!(o.status, 200, "while a token was valid: {o:?}");
        served += 1;
    }
    assert!(served >= CALLERS, "only {served} requests while the token was valid");

    let expired = run
        .outcomes
        .iter()
        .filter(|o| o.started > expiry && o.started + o.took < restored);
    let reached: HashSet<String> = h.mock.received().iter().map(|r| track_of(&r.headers)).collect();
    let mut refused = 0;
    for o in expired {
        assert!(
            !reached.contains(&o.track),
            "sent to Zuora with an expired token: {o:?}"
        );
        o.assert_proxy_error(503, "token_unavailable");
        assert!(
            o.took >= token_wait - Duration::from_millis(50) && o.took < token_wait + Duration::from_secs(1),
            "token_unavailable after {:?} with token_wait = {token_wait:?}",
            o.took
        );
        refused += 1;
    }
    assert!(refused >= CALLERS, "only {refused} requests past expiry");
    for o in run.outcomes.iter().filter(|o| o.started > recovered) {
        assert_eq!(o.status, 200, "after recovery: {o:?}");
    }
}

// ---- helpers ----

/// The abort route retried on every retryable outcome; repeating an abort does no harm.
const RETRYING_ROUTES: &str = r#"
[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"
idempotent = true
retry_attempts = 2
retry_on = ["429", "502", "503", "504", "connect"]
"#;

/// Bounds a whole test's load, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(30);
/// Longest a single request may take before its caller gives up on it.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);
/// Bounds one caller's loop; a caller whose requests fail fast may send many.
const MAX_REQUESTS_PER_CALLER: usize = 20_000;
/// Shortest fault: long enough that failing fast (a reset, a refused connection) repeats many
/// times before the fault is lifted.
const FAULT_LENGTH: Duration = Duration::from_millis(300);
/// Longest wait for any milestone of the load.
const MILESTONE_LIMIT: Duration = Duration::from_secs(10);

/// Zuora answers `status` with `Retry-After: 1` to the first requests of a short burst; with
/// two retries on the route, every caller still gets a 200, about a second late.
async fn retried_status_is_invisible(status: u16) {
    let _serial = serial().await;
    let h = Harness::builder().routes(RETRYING_ROUTES).ready().await;
    let load = Load::start(&h.url(&abort_path()));
    load.wait("answers before the fault", |t| t.ok >= 4 * CALLERS).await;
    let reason = if status == 429 { "429" } else { "503" };
    let on = Instant::now();
    h.mock.set_api_mode(ApiMode::Status {
        status,
        retry_after_secs: Some(1),
    });
    // A burst: Zuora refuses one attempt per caller (the proxy counts each as a retry to
    // come), then it is fine again, well before the first retry is due.
    eventually_within("a refusal per caller", MILESTONE_LIMIT, async || {
        (retries_total(&h.proxy, reason) >= CALLERS as u64).then_some(())
    })
    .await;
    h.mock.set_api_mode(ApiMode::Normal);
    let off = Instant::now();
    let ok = load.tally().ok;
    load.wait("answers after the fault", |t| t.ok >= ok + 4 * CALLERS).await;
    let run = load.finish(on, off).await;

    let failures: Vec<&Outcome> = run.failures().collect();
    assert!(
        failures.is_empty(),
        "callers saw Zuora's {status}s: {}",
        sample(&failures)
    );
    let retries = retries_total(&h.proxy, reason);
    eprintln!(
        "{status} burst with retries: {} answers, all 200, {retries} retries",
        run.outcomes.len()
    );
    assert!(retries >= CALLERS as u64, "{retries} retries after {CALLERS} refusals");
    assert_eq!(
        h.mock.api_calls() as u64,
        run.outcomes.len() as u64 + retries,
        "Zuora saw each answer's request once plus its retries"
    );
    // Zuora's Retry-After was honoured: the retried requests came back a second later.
    let delayed = run
        .outcomes
        .iter()
        .filter(|o| o.took >= Duration::from_millis(900))
        .count();
    assert!(delayed >= CALLERS, "only {delayed} answers waited for Retry-After");
}

/// The default tenant's token phase once no fetch is in flight.
async fn settled_phase(h: &Harness) -> Phase {
    eventually("the end of a token fetch", async || {
        let phase = h.proxy.probe().token_phase(DEFAULT_TENANT).expect("tenant");
        (phase != Phase::Fetching).then_some(phase)
    })
    .await
}

/// How many outcomes there are, and the first few, for a failure message.
fn sample(outcomes: &[&Outcome]) -> String {
    format!(
        "{} in all, e.g. {:#?}",
        outcomes.len(),
        &outcomes[..outcomes.len().min(3)]
    )
}

/// `zuora_proxy_retries_total` of the abort route for `reason`.
fn retries_total(proxy: &Running, reason: &'static str) -> u64 {
    let series = format!("zuora_proxy_retries_total{{route=\"abort-bulk-job\",reason=\"{reason}\"}}");
    Metrics::parse(&proxy.probe().metrics_text()).value_or_zero(&series) as u64
}

/// Starts a mock Zuora on `addr` with `ca` (a restart), retrying while the old one's port is
/// still being released.
/// Under load through `proxy`: stops Zuora, runs `while_down`, starts it again on the same
/// port, and ends the load once answers flow again. The run, the new Zuora, and when it went
/// down and came back.
async fn restart_under_load(
    mock: MockZuora,
    proxy: &Running,
    while_down: impl AsyncFnOnce(&Load),
) -> (Run, MockZuora, Instant, Instant) {
    let url = format!("http://{}{}", proxy.addr, abort_path());
    let load = Load::start(&url);
    load.wait("answers before the restart", |t| t.ok >= 4 * CALLERS).await;

    let (addr, ca) = (mock.addr(), mock.ca().clone());
    let down = Instant::now();
    drop(mock);
    while_down(&load).await;
    let mock = start_on(addr, ca).await;
    let up = Instant::now();
    let ok = load.tally().ok;
    load.wait("answers after the restart", |t| t.ok >= ok + 4 * CALLERS)
        .await;
    (load.finish(down, up).await, mock, down, up)
}

async fn start_on(addr: std::net::SocketAddr, ca: Arc<zuora_auth_proxy::mock::pki::TestCa>) -> MockZuora {
    eventually(
        "the mock listens on its port again",
        async || match MockZuora::builder().addr(addr).start_with_ca(ca.clone()).await {
            Ok(mock) => Some(mock),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
            Err(e) => panic!("the mock cannot listen on {addr} again: {e}"),
        },
    )
    .await
}

/// Runs the load, applies a fault once the proxy is serving, keeps it for [`FAULT_LENGTH`] and
/// until the callers have seen it (two failures per caller), lifts it and runs on until the
/// callers are served again. Checks that only requests overlapping the fault failed, that
/// some did, and that the proxy recovered; returns the run for the fault-specific checks.
async fn fault_window(what: &str, h: &Harness, apply: impl FnOnce(), lift: impl FnOnce()) -> Run {
    let load = Load::start(&h.url(&abort_path()));
    load.wait("answers before the fault", |t| t.ok >= 4 * CALLERS).await;
    let on = Instant::now();
    apply();
    load.wait_during_fault(|t| t.failed >= 2 * CALLERS).await;
    lift();
    let off = Instant::now();
    let ok = load.tally().ok;
    load.wait("answers after the fault", |t| t.ok >= ok + 4 * CALLERS).await;
    let run = load.finish(on, off).await;
    let failed = run.failures().count();
    assert!(failed >= 2 * CALLERS, "only {failed} failures");
    // Of the answers waited for, at most one per caller was sent before the fault was lifted.
    let recovered = run.outcomes.iter().filter(|o| o.started > off).count();
    assert!(recovered >= 3 * CALLERS, "only {recovered} requests after the fault");
    eprintln!(
        "{what}: {failed} of {} answers failed, all within the {:?} fault window",
        run.outcomes.len(),
        off - on
    );
    run
}

/// What one caller saw of one request.
#[derive(Debug)]
struct Outcome {
    /// The request's own `Zuora-Track-Id`, to find it among the requests Zuora received.
    track: String,
    started: Instant,
    took: Duration,
    /// The HTTP status; 0 when no answer came (then `body` says why).
    status: u16,
    proxy_error: Option<String>,
    zuora_request_id: bool,
    retry_after: Option<String>,
    /// Kept only for answers other than 200.
    body: Bytes,
}

impl Outcome {
    /// An answer the proxy made itself, as README's error table says.
    fn assert_proxy_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.proxy_error.as_deref()),
            (status, Some(code)),
            "{self:?}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        assert_eq!(json["error"], code, "{self:?}");
        assert!(
            !self.zuora_request_id,
            "the proxy's own answer carries Zuora's request id: {self:?}"
        );
    }

    /// Zuora's own answer, passed through: its status and headers, no proxy error code.
    fn assert_zuoras_own(&self, status: u16, retry_after: Option<&str>) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.proxy_error, None, "{self:?}");
        assert!(self.zuora_request_id, "not Zuora's answer: {self:?}");
        assert_eq!(self.retry_after.as_deref(), retry_after, "{self:?}");
        let json: serde_json::Value =
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        assert_eq!(json["code"], "REQUEST_EXCEEDED_LIMIT", "{self:?}");
    }
}

/// Answers so far, for waiting on milestones of the load.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: usize,
    failed: usize,
}

/// The callers, running until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<watch::Sender<Tally>>,
    callers: JoinSet<Vec<Outcome>>,
}

/// A finished load: every outcome, and the window `[on, off]` when the fault was applied.
struct Run {
    outcomes: Vec<Outcome>,
    on: Instant,
    off: Instant,
}

impl Run {
    /// Every answer but a 200, after checking that each overlapped the fault window.
    fn failures(&self) -> impl Iterator<Item = &Outcome> {
        let failures = self.outcomes.iter().filter(|o| o.status != 200);
        for o in failures.clone() {
            assert!(
                o.started <= self.off && o.started + o.took >= self.on,
                "a request failed outside the fault window ({:?} after the fault began, for {:?}): {o:?}",
                o.started.checked_duration_since(self.on),
                o.took
            );
        }
        failures
    }
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(watch::channel(Tally::default()).0);
        let until = Instant::now() + LOAD_LIMIT;
        let mut callers = JoinSet::new();
        for caller in 0..CALLERS {
            let (url, stop, tally) = (url.to_string(), stop.clone(), tally.clone());
            callers.spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < until
                    && outcomes.len() < MAX_REQUESTS_PER_CALLER
                {
                    let track = format!("load-{caller}-{}", outcomes.len());
                    let outcome = send_one(&client, &url, track).await;
                    tally.send_modify(|t| {
                        if outcome.status == 200 {
                            t.ok += 1;
                        } else {
                            t.failed += 1;
                        }
                    });
                    outcomes.push(outcome);
                }
                outcomes
            });
        }
        Load { stop, tally, callers }
    }

    fn tally(&self) -> Tally {
        *self.tally.borrow()
    }

    /// Waits until the tally satisfies `done`, for at most [`MILESTONE_LIMIT`].
    async fn wait(&self, what: &str, done: impl FnMut(&Tally) -> bool) {
        let mut rx = self.tally.subscribe();
        let reached = tokio::time::timeout(MILESTONE_LIMIT, rx.wait_for(done)).await.is_ok();
        assert!(reached, "{what}: not within {MILESTONE_LIMIT:?} ({:?})", self.tally());
    }

    /// Keeps a fault on for at least [`FAULT_LENGTH`] and until the tally satisfies `seen`.
    async fn wait_during_fault(&self, seen: impl FnMut(&Tally) -> bool) {
        let lasted = tokio::time::sleep(FAULT_LENGTH);
        tokio::join!(self.wait("failures during the fault", seen), lasted);
    }

    /// Stops the callers after their current request; `on`/`off` bound the fault window.
    async fn finish(self, on: Instant, off: Instant) -> Run {
        self.stop.store(true, Ordering::Relaxed);
        let outcomes: Vec<Outcome> = self.callers.join_all().await.into_iter().flatten().collect();
        let lost: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 0).collect();
        assert!(lost.is_empty(), "requests got no HTTP answer: {}", sample(&lost));
        Run { outcomes, on, off }
    }
}

/// POSTs an abort with no body and reads the whole answer.
async fn send_one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    track: String,
) -> Outcome {
    let started = Instant::now();
    let request = http::Request::post(url)
        .header("zuora-track-id", &track)
        .body(Full::default())
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
        Ok::<_, String>((parts, body))
    };
    let result = tokio::time::timeout(ANSWER_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ANSWER_LIMIT:?}")));
    let took = started.elapsed();
    match result {
        Ok((parts, body)) => {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            Outcome {
                track,
                started,
                took,
                status: parts.status.as_u16(),
                proxy_error: header("x-zuora-proxy-error"),
                zuora_request_id: parts.headers.contains_key("zuora-request-id"),
                retry_after: header("retry-after"),
                body: if parts.status == 200 { Bytes::new() } else { body },
            }
        }
        Err(why) => Outcome {
            track,
            started,
            took,
            status: 0,
            proxy_error: None,
            zuora_request_id: false,
            retry_after: None,
            body: Bytes::from(why),
        },
    }
}
