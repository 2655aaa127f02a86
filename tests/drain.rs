//! Graceful drain: once shutdown begins the listener refuses new connections, idle keep-alive
//! connections close, in-flight requests finish within `server.shutdown_grace`, then the
//! proxy stops, in-process (`begin_shutdown` + `wait`) and as a binary on SIGTERM.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod binary;
    pub mod exe;
    pub mod fixtures;
    pub mod harness;
    pub mod raw;
    pub mod wait;
}

use std::net::SocketAddr;
use std::time::Duration;
use support::binary::Binary;
use support::fixtures::*;
use support::harness::*;
use support::raw::read_response;
use support::wait::{assert_took, eventually, timed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ApiMode, MockZuora};

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let h = Harness::builder().ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1000)));
    let slow = tokio::spawn(try_post(h.url(&abort_path())));
    assert!(
        h.mock.wait_api_calls(1, Duration::from_secs(5)).await,
        "slow request reached Zuora"
    );

    let began = Instant::now();
    h.proxy.begin_shutdown();
    assert_no_answer(h.proxy.addr).await;

    let answer = slow
        .await
        .expect("caller task")
        .expect("the in-flight request is answered");
    assert_eq!(answer, 200);
    let admin = h.proxy.admin_addr.expect("admin listener");
    let addr = h.proxy.addr;
    tokio::time::timeout(Duration::from_secs(5 + 1), h.proxy.wait())
        .await
        .expect("wait() returns within shutdown_grace + 1 s");
    // The drain lasted as long as the one in-flight request, not the whole grace.
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        began.elapsed()
    );
    assert_no_answer(addr).await;
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin listener stops after the drain"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_at_once() {
    let h = Harness::builder().ready().await;
    let mut idle = TcpStream::connect(h.proxy.addr).await.unwrap();
    idle.write_all(b"GET /not-allowed HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut idle, &mut Vec::new(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(
        String::from_utf8_lossy(&answer.body).contains("route_not_found"),
        "{answer:?}"
    );
    assert!(
        !answer
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close")),
        "kept alive: {answer:?}"
    );

    // A slow request keeps the drain going while the idle connection is closed.
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1500)));
    let slow = tokio::spawn(try_post(h.url(&abort_path())));
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);
    h.proxy.begin_shutdown();

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed within 500 ms");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without bytes: {read:?}");
    assert!(!slow.is_finished(), "the idle connection closed before the drain ended");
    assert_eq!(slow.await.unwrap().expect("answered"), 200);
    tokio::time::timeout(Duration::from_secs(6), h.proxy.wait())
        .await
        .expect("drained");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let (_zuora, _slow, took) = drained_past_a_slow_request(Duration::from_secs(5)).await;
    assert_took(
        took,
        Duration::from_millis(450)..Duration::from_millis(1200),
        "the drain bounded by the grace",
    );
}

/// Once `wait()` has returned, nothing of the proxy may still be serving: a request cut by
/// the grace fails at once instead of being answered by Zuora seconds later.
#[tokio::test]
async fn requests_past_the_grace_are_cut_when_wait_returns() {
    let (_zuora, slow, _) = drained_past_a_slow_request(Duration::from_secs(4)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(1), slow)
        .await
        .expect("the cut request ends within 1 s of wait()")
        .expect("caller task");
    assert!(
        outcome.is_err(),
        "a request was still answered after the drain: {outcome:?}"
    );
}

/// A proxy with a 500 ms `shutdown_grace`, drained while a request waits `delay` for Zuora:
/// Zuora (still holding the request), the request's task, and how long `wait()` took.
async fn drained_past_a_slow_request(delay: Duration) -> (MockZuora, JoinHandle<Result<u16, String>>, Duration) {
    let h = Harness::builder().server("shutdown_grace", "\"500ms\"").ready().await;
    h.mock.set_api_mode(ApiMode::Delay(delay));
    let slow = tokio::spawn(try_post(h.url(&abort_path())));
    assert!(h.mock.wait_api_calls(1, Duration::from_secs(5)).await);

    let Harness { mock, proxy, .. } = h;
    proxy.begin_shutdown();
    let (waited, took) = timed(tokio::time::timeout(Duration::from_millis(1500), proxy.wait())).await;
    waited.expect("wait() returns about when the grace ends");
    (mock, slow, took)
}

#[tokio::test]
async fn binary_drains_on_sigterm_and_exits_0() {
    let mut d = SignalledBinary::start("20s", Duration::from_millis(1500)).await;
    assert!(
        !d.slow.is_finished(),
        "the slow request ended before the listener closed"
    );
    let answer = (&mut d.slow).await.unwrap();
    assert_eq!(answer.as_ref().ok(), Some(&200), "{answer:?}\n{}", d.bin.log());
    let status = d.bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", d.bin.log());
}

/// A second signal during the drain exits at once, with code 1, without waiting for the
/// request still at Zuora (the grace here is far longer than the test).
#[tokio::test]
async fn a_second_signal_exits_at_once_with_code_1() {
    let mut d = SignalledBinary::start("60s", Duration::from_secs(30)).await;
    assert!(!d.slow.is_finished());
    d.bin.signal("INT");
    let status = d.bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "{}", d.bin.log());
    assert!(
        (&mut d.slow).await.unwrap().is_err(),
        "the request in flight is cut, not answered"
    );
}

/// The binary, in front of a mock Zuora that delays answers, after SIGTERM with one request
/// at Zuora: its listener has closed, the process is draining.
struct SignalledBinary {
    bin: Binary,
    slow: tokio::task::JoinHandle<Result<u16, String>>,
    _mock: zuora_auth_proxy::mock::MockZuora,
    _dir: tempfile::TempDir,
}

impl SignalledBinary {
    async fn start(shutdown_grace: &str, upstream_delay: Duration) -> SignalledBinary {
        let h = Harness::builder()
            .server("shutdown_grace", &format!("\"{shutdown_grace}\""))
            .ready()
            .await;
        let (mock, dir, config) = h.config_for_binary().await;
        let mut bin = Binary::spawn(&config);
        let addr = bin.listening().await.addr;
        let url = format!("http://{addr}{}", abort_path());
        assert_eq!(try_post(url.clone()).await.expect("answered"), 200, "{}", bin.log());

        mock.set_api_mode(ApiMode::Delay(upstream_delay));
        let slow = tokio::spawn(try_post(url));
        assert!(mock.wait_api_calls(2, Duration::from_secs(5)).await, "{}", bin.log());
        let signalled = Instant::now();
        bin.signal("TERM");
        // The listener closes while the request is still at Zuora.
        eventually("the listener closes after SIGTERM", async || {
            TcpStream::connect(addr).await.is_err().then_some(())
        })
        .await;
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "still accepting {:?} after SIGTERM\n{}",
            signalled.elapsed(),
            bin.log()
        );
        SignalledBinary {
            bin,
            slow,
            _mock: mock,
            _dir: dir,
        }
    }
}

// ---- helpers ----

/// POSTs with no body; the status, or the client error when the connection failed.
async fn try_post(url: String) -> Result<u16, String> {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(url).body(Full::default()).unwrap();
    client
        .request(request)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// A new connection to `addr` is refused, or closed without a byte of an answer.
async fn assert_no_answer(addr: SocketAddr) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n",
        abort_path()
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out))
        .await
        .expect("a connection made after shutdown began is closed, not left hanging");
    assert!(
        out.is_empty(),
        "answered after shutdown began ({read:?}): {}",
        String::from_utf8_lossy(&out)
    );
}
