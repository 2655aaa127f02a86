//! Connection and request limits: header and idle deadlines, the connection cap, head and
//! body size caps, and the connect and request timeouts toward Zuora, each on real sockets.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod hangup;
    pub mod harness;
    pub mod raw;
    pub mod wait;
}

use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::hangup::read_until_closed;
use support::harness::*;
use support::raw::{parse_response, read_response};
use support::wait::assert_took;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use zuora_auth_proxy::mock::ApiMode;

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let h = Harness::builder()
        .server("header_read_timeout", "\"500ms\"")
        .start()
        .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed within 5 s of a 500 ms header deadline");
    let elapsed = started.elapsed();
    assert_took(elapsed, Duration::from_millis(450).., "closed before the deadline");
    assert!(!got.contains(" 200 "), "{got}");
}

#[tokio::test]
async fn a_trickled_head_is_cut_at_header_read_timeout_and_never_forwarded() {
    let h = Harness::builder()
        .server("header_read_timeout", "\"500ms\"")
        .ready()
        .await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nX-Slow: {}\r\n\r\n",
        abort_path(),
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut sent = 0;
    let mut closed_at = None;
    // One byte every 50 ms: each byte is traffic, but none may push the deadline back.
    while started.elapsed() < Duration::from_secs(5) && sent < head.len() {
        if stream.write_all(&head.as_bytes()[sent..=sent]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        sent += 1;
        let mut byte = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "answered a head that never finished: {:?}",
                String::from_utf8_lossy(&byte[..n])
            ),
        }
    }
    let closed_at = closed_at.expect("the trickling connection was never closed");
    assert!(sent < head.len(), "the whole head got through ({sent} bytes)");
    assert_took(
        closed_at,
        Duration::from_millis(450)..Duration::from_secs(4),
        "closed at the header deadline",
    );
    assert!(h.mock.received().is_empty());
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let h = Harness::builder()
        .server("idle_timeout", "\"500ms\"")
        .server("header_read_timeout", "\"10s\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(abort_request("idle-1", "").as_bytes()).await.unwrap();
    let first = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    let answered = Instant::now();
    read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed within 5 s of a 500 ms idle timeout");
    let idle = answered.elapsed();
    assert_took(idle, Duration::from_millis(400).., "closed before the idle timeout");
}

#[tokio::test]
async fn a_request_in_flight_longer_than_both_deadlines_is_not_cut() {
    let h = Harness::builder()
        .server("idle_timeout", "\"300ms\"")
        .server("header_read_timeout", "\"300ms\"")
        .ready()
        .await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_millis(1500)));
    let started = Instant::now();
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    stream
        .write_all(abort_request("slow-zuora", "").as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(8))
        .await
        .expect("a slow Zuora answer reaches the caller");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("zuora-track-id"), Some("slow-zuora"));
    assert_took(
        started.elapsed(),
        Duration::from_millis(1400)..,
        "a slow Zuora answer waited for",
    );
}

#[tokio::test]
async fn idle_time_between_requests_is_measured_by_idle_timeout_not_the_header_deadline() {
    let h = Harness::builder()
        .server("idle_timeout", "\"10s\"")
        .server("header_read_timeout", "\"400ms\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(abort_request("keep-1", "").as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut stream, &mut buf, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        200
    );
    // Idle for well past the header deadline: the connection must stay open.
    let mut byte = [0u8; 64];
    let idle = tokio::time::timeout(Duration::from_millis(1200), stream.read(&mut byte)).await;
    assert!(
        idle.is_err(),
        "the idle connection was closed (or written to) by the header deadline: {idle:?}"
    );
    stream.write_all(abort_request("keep-2", "").as_bytes()).await.unwrap();
    let second = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((second.status, second.header("zuora-track-id")), (200, Some("keep-2")));
    // The next head starts the header deadline afresh at its first byte.
    let started = Instant::now();
    stream.write_all(b"POST /bulk-data").await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("a partial second head is cut by the header deadline");
    assert_took(
        started.elapsed(),
        Duration::from_millis(350)..,
        "the second head cut at the header deadline",
    );
    assert_eq!(h.mock.received().len(), 2);
}

#[tokio::test]
async fn past_max_connections_a_caller_waits_until_a_slot_frees() {
    let h = Harness::builder()
        .server("max_connections", "2")
        .server("idle_timeout", "\"30s\"")
        .start()
        .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
        let mut buf = Vec::new();
        stream
            .write_all(abort_request(&format!("held-{i}"), "").as_bytes())
            .await
            .unwrap();
        let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        held.push(stream);
    }
    // The third connection lands in the backlog: its request is not read, let alone answered.
    let mut third = TcpStream::connect(h.proxy.addr)
        .await
        .expect("the backlog takes the connection");
    third.write_all(abort_request("third", "").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let early = read_response(&mut third, &mut buf, Duration::from_millis(1000)).await;
    assert!(early.is_err(), "answered past max_connections: {early:?}");
    assert_eq!(h.mock.received().len(), 2);
    // One held connection closes: its slot goes to the waiting one.
    drop(held.remove(0));
    let answer = read_response(&mut third, &mut buf, Duration::from_secs(5))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert_eq!((answer.status, answer.header("zuora-track-id")), (200, Some("third")));
    // The other held connection is still served.
    let mut buf = Vec::new();
    held[0]
        .write_all(abort_request("held-again", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut held[0], &mut buf, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_gives_its_slot_back_after_idle_timeout() {
    let h = Harness::builder()
        .server("max_connections", "1")
        .server("idle_timeout", "\"300ms\"")
        .start()
        .await;
    // The only slot: one request answered, then nothing more on the connection.
    let mut idle = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(abort_request("idler", "").as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut idle, &mut buf, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        200
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        post(&h.url(&abort_path()), &[("zuora-track-id", "next")]),
    )
    .await
    .expect("the next caller is served once the idle connection times out (300 ms)");
    assert_eq!(answer.status, 200);
    read_until_closed(&mut idle, Duration::from_secs(1))
        .await
        .expect("the idle connection was closed");
}

#[tokio::test]
async fn silent_connections_holding_every_slot_are_cut_so_a_caller_gets_in() {
    let h = Harness::builder()
        .server("max_connections", "4")
        .server("header_read_timeout", "\"600ms\"")
        .start()
        .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(h.proxy.addr).await.unwrap());
    }
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(6), post(&h.url(&abort_path()), &[]))
        .await
        .expect("a caller behind silent connections is served once their head deadline passes");
    assert_eq!(answer.status, 200);
    assert_took(
        started.elapsed(),
        Duration::from_millis(300)..,
        "served while every slot was held",
    );
    for mut stream in silent {
        read_until_closed(&mut stream, Duration::from_secs(3))
            .await
            .expect("silent connection closed");
    }
}

#[tokio::test]
async fn a_head_within_max_header_bytes_is_forwarded_and_a_larger_one_is_431() {
    let h = Harness::builder().server("max_header_bytes", "16384").ready().await;
    let fits = "f".repeat(12_000);
    let answer = post(&h.url(&abort_path()), &[("x-big", &fits)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(h.mock.received()[0].headers["x-big"].len(), 12_000);

    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nX-Huge: {}\r\nContent-Length: 0\r\n\r\n",
        abort_path(),
        "h".repeat(20_000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .expect("an answer to an oversized head");
    assert_eq!(answer.status, 431);
    assert_eq!(answer.header("x-zuora-proxy-error"), None, "431 is the HTTP layer's");
    read_until_closed(&mut stream, Duration::from_secs(3))
        .await
        .expect("closed after 431");
    assert_eq!(h.mock.received().len(), 1, "the oversized head was forwarded");
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn a_declared_body_over_max_body_bytes_is_413_before_it_is_sent() {
    let h = Harness::builder().server("max_body_bytes", "1024").ready().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    // Only the head: the refusal must not wait for a body it will never read.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2000\r\n\r\n",
        job_path("echo")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("x-zuora-proxy-error"), Some("body_too_large"));
    assert!(h.mock.received().is_empty());
    assert_eq!(h.mock.token_calls(), 1);
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_413_and_never_reaches_zuora_whole() {
    let h = Harness::builder().server("max_body_bytes", "1024").ready().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n",
        job_path("echo")
    )
    .into_bytes();
    for _ in 0..3 {
        request.extend_from_slice(format!("3e8\r\n{}\r\n", "c".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, 413, "{:?}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("x-zuora-proxy-error"), Some("body_too_large"));
    for received in h.mock.received() {
        assert!(
            received.body.len() <= 1024,
            "Zuora got {} body bytes past a 1024-byte cap",
            received.body.len()
        );
    }
}

#[tokio::test]
async fn a_content_length_that_promises_more_than_is_sent_is_never_forwarded() {
    let h = Harness::builder().server("max_body_bytes", "1024").ready().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: short-body\r\nContent-Length: 100\r\n\r\n0123456789",
        job_path("echo")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection ends");
    // The caller hung up mid-body (half-close): the proxy's own 400 still reaches it.
    let (answer, _) = parse_response(got.as_bytes(), true).unwrap_or_else(|| panic!("no answer: {got:?}"));
    assert_eq!(answer.status, 400, "{got}");
    assert_eq!(answer.header("x-zuora-proxy-error"), Some("invalid_body"));
    assert_eq!(answer.header("zuora-track-id"), Some("short-body"));
    // A later request goes through; the truncated one never did.
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "after-short-body")]).await;
    assert_eq!(answer.status, 200);
    let tracks: Vec<String> = h.mock.received().iter().map(|r| track_of(&r.headers)).collect();
    assert_eq!(tracks, ["after-short-body"]);
}

#[tokio::test]
async fn bytes_past_the_content_length_are_not_part_of_the_body() {
    let h = Harness::builder().server("max_body_bytes", "1024").ready().await;
    let mut stream = TcpStream::connect(h.proxy.addr).await.unwrap();
    let declared = "d".repeat(1000);
    let extra = "x".repeat(1000);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: long-body\r\nContent-Length: 1000\r\n\r\n{declared}{extra}\r\n\r\n",
        job_path("echo")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((first.status, first.header("zuora-track-id")), (200, Some("long-body")));
    // The surplus is read as the next request, which is no request at all.
    match read_response(&mut stream, &mut buf, Duration::from_secs(5)).await {
        Ok(second) => assert_eq!(second.status, 400, "{second:?}"),
        Err(closed) => assert!(closed.contains("closed"), "{closed}"),
    }
    let received = h.mock.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body,
        declared.as_bytes(),
        "Zuora got more than the declared body"
    );
}

#[tokio::test]
async fn connect_timeout_toward_zuora_is_502_upstream_unreachable() {
    let (_blackhole, blackhole_addr, _fillers) = blackhole().await;
    let h = Harness::builder()
        .rest_at(blackhole_addr)
        .tenant("connect_timeout", "\"400ms\"")
        .ready()
        .await;
    let elapsed = timed_refusal(&h.url(&abort_path()), "connect-timeout", 502, "upstream_unreachable").await;
    assert_took(
        elapsed,
        Duration::from_millis(350)..Duration::from_secs(5),
        "gave up at connect_timeout",
    );
}

#[tokio::test]
async fn request_timeout_is_504_upstream_timeout() {
    let h = Harness::builder().server("request_timeout", "\"500ms\"").ready().await;
    h.mock.set_api_mode(ApiMode::Delay(Duration::from_secs(5)));
    let elapsed = timed_refusal(&h.url(&abort_path()), "too-slow", 504, "upstream_timeout").await;
    assert_took(
        elapsed,
        Duration::from_millis(450)..Duration::from_secs(4),
        "the 504 at request_timeout",
    );
    h.mock.set_api_mode(ApiMode::Normal);
    assert_eq!(post(&h.url(&abort_path()), &[]).await.status, 200);
}

// ---- helpers ----

/// A keep-alive abort request with this track id; `extra` is more header lines.
fn abort_request(track: &str, extra: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: proxy\r\nZuora-Track-Id: {track}\r\nContent-Length: 0\r\n{extra}\r\n",
        abort_path()
    )
}

/// A loopback listener whose accept queue is full, so a new connection attempt hangs
/// (Linux drops the SYN). Keep all three alive for as long as the black hole is needed.
async fn blackhole() -> (tokio::net::TcpListener, std::net::SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filler connect failed: {e}"),
            Err(_) => return (listener, addr, fillers),
        }
    }
    panic!("the accept queue never filled after {} connections", fillers.len());
}
