//! The mock over real TLS, seen through a raw client that shows exactly what goes on the wire.

use super::*;
use http::Version;
use rustls::pki_types::ServerName;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const PATIENCE: Duration = Duration::from_secs(5);
const JOB: &str = "3a3e85c4-96e7-486b-ae02-827120104301";

async fn connect(mock: &MockZuora) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(mock.ca().cert_der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(mock.addr()).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// Reads until the mock closes the connection (a missing close_notify counts as closed).
async fn read_to_close(stream: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut read = Vec::new();
    let until_close = async {
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, until_close)
        .await
        .expect("the mock closed the connection");
    read
}

/// Reads until at least `n` bytes came.
async fn read_at_least(stream: &mut TlsStream<TcpStream>, read: &mut Vec<u8>, n: usize) {
    let mut chunk = [0u8; 16384];
    while read.len() < n {
        let got = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("bytes within the patience")
            .expect("no read error");
        assert!(
            got > 0,
            "closed after {} bytes: {:?}",
            read.len(),
            String::from_utf8_lossy(read)
        );
        read.extend_from_slice(&chunk[..got]);
    }
}

/// Reads a head and `n` bytes after it.
async fn read_past_head(stream: &mut TlsStream<TcpStream>, n: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    let head_end = loop {
        let more = wire.len() + 1;
        read_at_least(stream, &mut wire, more).await;
        if let Some(end) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    read_at_least(stream, &mut wire, head_end + n).await;
    assert_eq!(wire.len(), head_end + n, "more than {n} bytes after the head");
    wire
}

/// Sends `request` on a fresh connection and returns all the mock sent until it closed.
async fn exchange(mock: &MockZuora, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(mock).await;
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

/// A request with `Connection: close`, so that a normal answer ends the connection too.
fn request(method: &str, path: &str, token: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// A mock whose answers stall after `after_bytes` of a `declared` body, and a connection on
/// which an abort (with a fresh token) was sent.
async fn stalled_abort(after_bytes: usize, declared: usize) -> (MockZuora, TlsStream<TcpStream>) {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    mock.set_api_mode(ApiMode::StallBody { after_bytes, declared });
    let mut stream = connect(&mock).await;
    stream.write_all(&abort(&token)).await.unwrap();
    (mock, stream)
}

fn abort(token: &str) -> Vec<u8> {
    request("POST", &format!("/bulk-data/bulk-jobs/{JOB}/aborts"), token, &[], "")
}

/// The token endpoint's answer to the mock's own credentials.
async fn token_answer(mock: &MockZuora) -> Answer {
    let form = format!("grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}");
    Answer::parse(&exchange(mock, &token_request(&form)).await)
}

async fn token(mock: &MockZuora) -> String {
    let answer = token_answer(mock).await;
    assert_eq!(answer.status(), 200, "{}", answer.head);
    answer.json()["access_token"].as_str().unwrap().to_string()
}

fn token_request(form: &str) -> Vec<u8> {
    format!(
        "POST /oauth/token HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    )
    .into_bytes()
}

/// An answer as sent: the head as text, and every byte after it.
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(wire: &[u8]) -> Answer {
        let end = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(wire)));
        Answer {
            head: String::from_utf8_lossy(&wire[..end]).into_owned(),
            body: wire[end + 4..].to_vec(),
        }
    }

    fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    fn status(&self) -> u16 {
        self.status_line().split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Every value of the header `name`, in order.
    fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).first().copied()
    }

    /// The body as JSON, dechunked when the answer is chunked.
    fn json(&self) -> serde_json::Value {
        let body = if self.header("transfer-encoding") == Some("chunked") {
            dechunk(&self.body).0
        } else {
            self.body.clone()
        };
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&body)))
    }
}

/// The data of a chunked body, and whether its last chunk came.
fn dechunk(mut wire: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some(line_end) = wire.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&wire[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (data, true);
        }
        let start = line_end + 2;
        data.extend_from_slice(&wire[start..(start + size).min(wire.len())]);
        wire = &wire[(start + size + 2).min(wire.len())..];
    }
    (data, false)
}

#[tokio::test]
async fn a_script_answers_call_by_call_then_the_set_mode_applies_again() {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    mock.set_api_script(vec![
        ApiMode::Status {
            status: 503,
            retry_after_secs: None,
        },
        ApiMode::BodyError { code: 53_100_050 },
    ]);
    let first = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(first.status(), 503);
    assert_eq!(first.json()["code"], "REQUEST_EXCEEDED_LIMIT");
    let second = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(second.status(), 200, "a body error travels in a 200");
    let error = second.json();
    assert_eq!(error["success"], false);
    assert_eq!(error["reasons"][0]["code"], 53_100_050);
    assert!(
        error["reasons"][0]["message"].as_str().unwrap().contains("lock"),
        "{error}"
    );
    assert_eq!(error["processId"].as_str().unwrap().len(), 16);
    let third = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(third.json(), json!({"id": JOB, "status": "Aborted"}));
}

#[tokio::test]
async fn a_request_without_a_valid_token_does_not_use_up_the_script() {
    let mock = MockZuora::builder().start().await.unwrap();
    mock.set_api_script(vec![ApiMode::BodyError { code: 53_100_061 }]);
    let refused = Answer::parse(&exchange(&mock, &abort("not-a-token")).await);
    assert_eq!(refused.status(), 401);
    assert!(refused
        .header("www-authenticate")
        .unwrap()
        .contains("Bearer realm=Zuora API"));
    let token = token(&mock).await;
    let scripted = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(scripted.json()["reasons"][0]["code"], 53_100_061);
    assert_eq!(mock.api_calls(), 2, "both calls are counted");
}

#[tokio::test]
async fn an_answer_replaces_the_mocks_headers_of_the_same_name() {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    mock.set_api_mode(ApiMode::Answer {
        status: 503,
        headers: vec![
            ("RateLimit-Reset".into(), "42".into()),
            ("RateLimit-Remaining".into(), "100".into()),
        ],
        body: r#"{"message":"Service Unavailable"}"#.into(),
    });
    let answer = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers("ratelimit-reset"), ["42"]);
    assert_eq!(answer.headers("ratelimit-remaining"), ["100"]);
    assert_eq!(answer.headers("ratelimit-limit"), ["12500"], "headers not given stay");
    assert!(answer.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(answer.json()["message"], "Service Unavailable");

    mock.set_api_mode(ApiMode::Answer {
        status: 409,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: "in progress".into(),
    });
    let answer = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(answer.status(), 409);
    assert_eq!(answer.headers("content-type"), ["text/plain"]);
    assert_eq!(answer.body, b"in progress");
}

#[tokio::test]
async fn received_records_the_version_and_whether_the_body_came_whole() {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    let echo = format!("/bulk-data/bulk-jobs/{JOB}/echo");
    let whole = Answer::parse(&exchange(&mock, &request("POST", &echo, &token, &[], "0123456789")).await);
    assert_eq!(whole.status(), 200);
    let http10 = format!("POST {echo} HTTP/1.0\r\nauthorization: Bearer {token}\r\ncontent-length: 2\r\n\r\nok");
    let old = Answer::parse(&exchange(&mock, http10.as_bytes()).await);
    assert_eq!(old.status(), 200);

    // Half a body, then the sender goes away.
    let mut stream = connect(&mock).await;
    let head =
        format!("POST {echo} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 100\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"0123456789").await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(mock.wait_api_calls(3, PATIENCE).await);

    let received = mock.received();
    assert_eq!(received[0].version, Version::HTTP_11);
    assert!(received[0].body_complete);
    assert_eq!(received[0].body, "0123456789");
    assert_eq!(received[1].version, Version::HTTP_10);
    assert!(received[1].body_complete);
    assert!(!received[2].body_complete);
    assert_eq!(received[2].body, "0123456789", "the part that came is kept");
}

/// A fresh mock answering in `mode`, the abort sent to it, and every byte it sent back.
async fn answered_in(mode: ApiMode) -> (MockZuora, Vec<u8>) {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    mock.set_api_mode(mode);
    let wire = exchange(&mock, &abort(&token)).await;
    (mock, wire)
}

fn aborted() -> serde_json::Value {
    json!({"id": JOB, "status": "Aborted"})
}

#[tokio::test]
async fn both_lengths_declares_half_the_body_and_chunks_all_of_it() {
    let (_mock, wire) = answered_in(ApiMode::BothLengths).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    let declared: usize = answer.header("content-length").unwrap().parse().unwrap();
    let (data, last) = dechunk(&answer.body);
    assert!(last);
    assert!(declared < data.len(), "{declared} vs {}", data.len());
    assert_eq!(answer.json(), aborted());
    assert!(answer.header("zuora-request-id").is_some(), "Zuora's headers are kept");
}

#[tokio::test]
async fn a_coding_list_ending_in_chunked_gzips_then_chunks_the_body() {
    let (_mock, wire) = answered_in(ApiMode::TransferCoding("gzip, chunked".into())).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers("transfer-encoding"), ["gzip, chunked"]);
    assert!(answer.header("content-length").is_none());
    let (member, last) = dechunk(&answer.body);
    assert!(last);
    assert_eq!(&member[..2], &[0x1f, 0x8b], "a gzip member");
    let plain = aborted().to_string();
    // One stored block: the data sits after the 10-byte header and the 5-byte block header.
    assert_eq!(&member[15..15 + plain.len()], plain.as_bytes());
}

#[tokio::test]
async fn a_102_comes_before_the_normal_answer() {
    let (_mock, wire) = answered_in(ApiMode::Informational(102)).await;
    let interim = b"HTTP/1.1 102 Processing\r\n\r\n";
    assert!(wire.starts_with(interim), "{:?}", String::from_utf8_lossy(&wire));
    let answer = Answer::parse(&wire[interim.len()..]);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json(), aborted());
}

#[tokio::test]
async fn an_unsolicited_101_is_followed_by_no_http_at_all() {
    let (_mock, wire) = answered_in(ApiMode::Informational(101)).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status_line(), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(answer.header("upgrade"), Some("websocket"));
    assert_eq!(answer.body, b"\x81\x05hello");
}

#[tokio::test]
async fn http10_answers_with_a_10_status_line_and_a_length() {
    let (_mock, wire) = answered_in(ApiMode::Http10).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status_line(), "HTTP/1.0 200 OK");
    let length: usize = answer.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, answer.body.len());
    assert_eq!(answer.json(), aborted());
}

#[tokio::test]
async fn truncated_sends_less_than_it_declares_then_closes() {
    let (_mock, wire) = answered_in(ApiMode::Truncated {
        declared: 1000,
        sent: 10,
    })
    .await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("content-length"), Some("1000"));
    assert_eq!(answer.body, pattern_bytes(10));
}

#[tokio::test]
async fn truncated_chunked_never_sends_the_last_chunk() {
    let (_mock, wire) = answered_in(ApiMode::TruncatedChunked).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    let (data, last) = dechunk(&answer.body);
    assert!(!last);
    assert_eq!(data, aborted().to_string().as_bytes());
}

#[tokio::test]
async fn an_early_answer_comes_before_the_body_is_sent() {
    let mock = MockZuora::builder().start().await.unwrap();
    let token = token(&mock).await;
    mock.set_api_mode(ApiMode::EarlyAnswer { status: 413 });
    let mut stream = connect(&mock).await;
    let head = format!(
        "POST /bulk-data/bulk-jobs/{JOB}/echo HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 10000000\r\n\r\n"
    );
    // Only the head: the answer must come without a byte of the body.
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = Answer::parse(&read_to_close(&mut stream).await);
    assert_eq!(answer.status(), 413);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.headers("content-type"), [JSON]);
    let length: usize = answer.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, answer.body.len());
    let received = mock.received();
    assert_eq!(received.len(), 1);
    assert!(!received[0].body_complete);

    mock.set_api_mode(ApiMode::EarlyAnswer { status: 401 });
    let answer = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(answer.status(), 401);
    assert!(answer.header("www-authenticate").unwrap().contains("Bearer"));
    assert!(mock.received()[1].body_complete, "an empty body is whole");
}

#[tokio::test]
async fn a_stalled_body_stays_silent_until_released() {
    let (mock, mut stream) = stalled_abort(10, 100).await;
    let mut wire = read_past_head(&mut stream, 10).await;
    let mut more = [0u8; 16];
    let silent = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut more)).await;
    assert!(silent.is_err(), "the stalled answer sent more: {silent:?}");
    mock.release_stalls();
    wire.extend(read_to_close(&mut stream).await);
    let answer = Answer::parse(&wire);
    assert_eq!(answer.header("content-length"), Some("100"));
    assert_eq!(answer.body, pattern_bytes(100));
}

#[tokio::test]
async fn the_concurrency_limit_refuses_a_request_while_the_limit_is_busy() {
    let stall = ApiMode::StallBody {
        after_bytes: 1,
        declared: 2,
    };
    let mock = MockZuora::builder()
        .concurrency_limit(2)
        .concurrency_retry_after(3)
        .api_script(vec![stall.clone(), stall])
        .start()
        .await
        .unwrap();
    let token = token(&mock).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&mock).await;
        stream.write_all(&abort(&token)).await.unwrap();
        read_past_head(&mut stream, 1).await;
        stalled.push(stream);
    }
    assert_eq!(mock.in_flight(), 2, "a stalled answer is still being sent");

    let refused = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.json()["code"], "REQUEST_EXCEEDED_LIMIT");
    assert_eq!(refused.header("concurrency-limit-type"), Some("Default"));
    assert_eq!(refused.header("concurrency-limit-limit"), Some("2"));
    assert_eq!(refused.header("concurrency-limit-remaining"), Some("0"));
    assert_eq!(refused.header("retry-after"), Some("3"));
    assert_eq!(refused.header("ratelimit-limit"), Some("12500"));
    assert_eq!(mock.rejected_429(), 1);
    assert_eq!(mock.peak_concurrency(), 3, "the refused request was in flight too");
    assert_eq!(mock.received().len(), 3, "Zuora received the refused request");

    mock.release_stalls();
    for mut stream in stalled {
        assert_eq!(
            read_to_close(&mut stream).await,
            pattern_bytes(2)[1..],
            "the rest of the body"
        );
    }
    let after = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(after.status(), 200, "places free up once answers are sent");
    assert_eq!(
        after.header("concurrency-limit-limit"),
        None,
        "only /v1 answers carry them"
    );
    assert_eq!(mock.rejected_429(), 1);
}

#[tokio::test]
async fn latency_delays_normal_answers_and_they_keep_their_place_meanwhile() {
    let latency = Duration::from_millis(500);
    let mock = MockZuora::builder().latency(latency).start().await.unwrap();
    let token = token(&mock).await;
    let sent = Instant::now();
    let first = Answer::parse(&exchange(&mock, &abort(&token)).await);
    assert_eq!(first.status(), 200);
    assert!(sent.elapsed() >= latency, "{:?}", sent.elapsed());
    assert_eq!(mock.peak_concurrency(), 1, "one after another is one at a time");

    mock.set_concurrency_limit(Some(1));
    // Connected beforehand, so the second request arrives well within the first's latency.
    let stream_for_first = connect(&mock).await;
    let mut second = connect(&mock).await;
    let request = abort(&token);
    let first = tokio::spawn(async move {
        let mut stream = stream_for_first;
        stream.write_all(&request).await.unwrap();
        read_to_close(&mut stream).await
    });
    assert!(mock.wait_in_flight(1, PATIENCE).await);
    second.write_all(&abort(&token)).await.unwrap();
    let refused = Answer::parse(&read_to_close(&mut second).await);
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("retry-after"), None, "no Retry-After unless set");
    assert_eq!(Answer::parse(&first.await.unwrap()).status(), 200);
    assert_eq!(mock.peak_concurrency(), 2);
    assert_eq!(mock.rejected_429(), 1);
}

#[tokio::test]
async fn as_many_requests_as_the_limit_are_all_answered() {
    let mock = Arc::new(
        MockZuora::builder()
            .concurrency_limit(5)
            .latency(Duration::from_millis(50))
            .start()
            .await
            .unwrap(),
    );
    let token = token(&mock).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (mock, request) = (mock.clone(), abort(&token));
        calls.spawn(async move { Answer::parse(&exchange(&mock, &request).await).status() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(mock.rejected_429(), 0);
    assert!(
        (1..=5).contains(&mock.peak_concurrency()),
        "{}",
        mock.peak_concurrency()
    );
}

#[tokio::test]
async fn every_token_call_is_recorded_without_its_secret() {
    let mock = MockZuora::builder().start().await.unwrap();
    let before = Instant::now();
    token(&mock).await;
    let wrong = format!("grant_type=client_credentials&client_id=someone-else&client_secret={CLIENT_SECRET}");
    let refused = Answer::parse(&exchange(&mock, &token_request(&wrong)).await);
    assert_eq!(refused.status(), 401);
    mock.set_token_mode(TokenMode::Status(503));
    assert_eq!(token_answer(&mock).await.status(), 503);

    let calls = mock.token_requests();
    assert_eq!(mock.token_calls(), 3);
    let seen: Vec<(&str, bool)> = calls.iter().map(|c| (c.client_id.as_str(), c.granted)).collect();
    assert_eq!(seen, [(CLIENT_ID, true), ("someone-else", false), (CLIENT_ID, false)]);
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at) && calls[0].at >= before);
    assert!(!format!("{calls:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn an_account_is_retrieved_by_its_key_with_the_limit_headers_of_v1() {
    let mock = MockZuora::builder().concurrency_limit(40).start().await.unwrap();
    let token = token(&mock).await;
    let wire = exchange(&mock, &request("GET", "/v1/accounts/A00000042", &token, &[], "")).await;
    let answer = Answer::parse(&wire);
    assert_eq!(answer.status(), 200);
    let account = answer.json();
    assert_eq!(account["success"], true);
    assert_eq!(account["basicInfo"]["accountNumber"], "A00000042");
    assert_eq!(account["basicInfo"]["id"], "A00000042");
    assert_eq!(account["basicInfo"]["status"], "Active");
    assert_eq!(account["billToContact"]["accountNumber"], "A00000042");
    for section in ["billingAndPayment", "metrics", "soldToContact"] {
        assert!(account[section].is_object(), "{section} missing: {account}");
    }
    assert!(account["metrics"]["balance"].is_number());
    assert_eq!(answer.header("concurrency-limit-type"), Some("Default"));
    assert_eq!(answer.header("concurrency-limit-limit"), Some("40"));
    assert_eq!(
        answer.header("concurrency-limit-remaining"),
        Some("39"),
        "this request holds one place"
    );
}

#[tokio::test]
async fn a_stalled_answer_ends_when_its_client_goes_away() {
    let (mock, mut stream) = stalled_abort(1, 10).await;
    read_past_head(&mut stream, 1).await;
    assert_eq!(mock.in_flight(), 1);
    drop(stream);
    assert!(mock.wait_idle(PATIENCE).await, "the stall still holds its place");
}
