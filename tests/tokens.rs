//! The OAuth token's life: one fetch however many callers wait, refresh before expiry, one
//! refetch and one replay after a 401, backoff and `Retry-After` while the token endpoint
//! fails, and serving from the cached token meanwhile.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use std::collections::HashSet;
use std::time::Duration;
use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::wait::assert_took;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zuora_auth_proxy::mock::{ExpiresIn, TokenMode};

/// Sends `n` aborts at once and returns every answer.
async fn burst(h: &Harness, n: usize) -> Vec<Answer> {
    let url = h.url(&abort_path());
    let mut set = JoinSet::new();
    for _ in 0..n {
        let url = url.clone();
        set.spawn(async move { post(&url, &[]).await });
    }
    set.join_all().await
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers
        .iter()
        .map(|a| a.status.as_u16())
        .filter(|s| *s != 200)
        .collect()
}

/// The bearer tokens Zuora saw, oldest first.
fn tokens_seen(h: &Harness) -> Vec<String> {
    h.mock.received_header("authorization")
}

#[tokio::test]
async fn a_cold_start_burst_causes_exactly_one_token_fetch() {
    // Enough concurrency slots that every request waits for the token itself, not in the queue.
    let h = Harness::builder()
        .tenant("max_concurrency", "256")
        .mock(|m| m.token_mode(TokenMode::Delay(Duration::from_millis(400))))
        .start()
        .await;
    assert!(
        h.token().is_none(),
        "no token yet: the burst must wait for the first one"
    );
    let answers = burst(&h, 200).await;
    assert_eq!(statuses(&answers), Vec::<u16>::new(), "every request succeeds");
    assert_eq!(h.mock.token_calls(), 1, "the waiting requests shared one fetch");
    assert_eq!(h.mock.received().len(), 200, "no request needed a 401 replay");
    assert_eq!(tokens_seen(&h).into_iter().collect::<HashSet<_>>().len(), 1);
}

#[tokio::test]
async fn the_token_is_refreshed_before_it_expires() {
    let h = Harness::builder().token_lifetime(2, "1s").ready().await;
    let first = h.token().expect("a token");
    assert_eq!(first.generation, 1);
    let left = first.expires_at.saturating_duration_since(Instant::now());
    assert!(
        h.mock.wait_token_calls(2, left).await,
        "no refresh within the first token's lifetime"
    );

    // Keep calling past the first token's expiry and past the second refresh: every request
    // must carry a token Zuora accepts (the mock answers 401 to an expired one, which would
    // show up as a second request to Zuora for the replay).
    let until = first.expires_at + Duration::from_millis(1500);
    let url = h.url(&abort_path());
    let mut sent = 0;
    while Instant::now() < until && sent < 5_000 {
        let answer = post(&url, &[]).await;
        assert_eq!(answer.status, 200, "request {sent}: {:?}", answer.body);
        sent += 1;
    }
    assert!(Instant::now() >= until, "too many requests");
    assert_eq!(
        h.mock.received().len(),
        sent,
        "some request was sent with a token Zuora refused"
    );
    let distinct: HashSet<String> = tokens_seen(&h).into_iter().collect();
    assert!(
        distinct.len() >= 2,
        "requests after the first expiry used a newer token"
    );
    let calls = h.mock.token_calls();
    assert!(
        (3..=5).contains(&calls),
        "about one fetch per second of a 2s token, got {calls}"
    );
    assert!(h.token().expect("a token").generation >= 3);
}

#[tokio::test]
async fn a_401_causes_one_refetch_and_one_replay() {
    let h = Harness::builder().ready().await;
    h.mock.revoke_tokens();
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "replayed-1")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["status"], "Aborted");
    assert!(answer.header("x-zuora-proxy-error").is_none());
    assert_eq!(h.mock.token_calls(), 2, "exactly one refetch");
    let received = h.mock.received();
    assert_eq!(received.len(), 2, "the request was sent once more, not more");
    let seen = tokens_seen(&h);
    assert_ne!(seen[0], seen[1], "the replay carries the new token");
    for r in &received {
        assert_eq!(r.target, abort_path());
        assert_eq!(
            r.headers["zuora-track-id"], "replayed-1",
            "the replay keeps the track id"
        );
    }
    // The new token is kept for later requests.
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(h.mock.token_calls(), 2);
    assert_eq!(h.mock.received().len(), 3);
}

#[tokio::test]
async fn a_401_with_no_new_token_to_be_had_is_a_503_not_a_loop() {
    let h = Harness::builder().tenant("token_wait", "\"1s\"").ready().await;
    // The client secret was rotated at Zuora and the token revoked: no new token can be had.
    h.mock.set_client_secret("rotated-elsewhere");
    h.mock.revoke_tokens();
    let answer = post(&h.url(&abort_path()), &[("zuora-track-id", "revoked-1")]).await;
    assert_eq!(assert_refusal(&answer, 503, "token_unavailable"), "revoked-1");
    assert_eq!(h.mock.received().len(), 1, "nothing is replayed without a new token");
    assert!(h.mock.token_calls() >= 2, "a new token was asked for");
}

#[tokio::test]
async fn many_requests_after_a_revocation_cause_one_refetch() {
    let h = Harness::builder().ready().await;
    h.mock.revoke_tokens();
    let answers = burst(&h, 64).await;
    assert_eq!(statuses(&answers), Vec::<u16>::new(), "every request succeeds");
    assert_eq!(h.mock.token_calls(), 2, "the 401s were answered by one refetch");
    let received = h.mock.received().len();
    assert!(
        (65..=128).contains(&received),
        "each request replayed at most once: {received}"
    );
    assert_eq!(tokens_seen(&h).into_iter().collect::<HashSet<_>>().len(), 2);
}

#[tokio::test]
async fn a_token_endpoint_down_at_start_is_retried_with_backoff_until_it_recovers() {
    let h = Harness::builder()
        .tenant("token_wait", "\"1s\"")
        .mock(|m| m.token_mode(TokenMode::Status(503)))
        .first_fetch_made()
        .await;
    let waited = timed_refusal(&h.url(&abort_path()), "waiting-1", 503, "token_unavailable").await;
    assert_took(
        waited,
        Duration::from_millis(900)..Duration::from_secs(3),
        "the request waited token_wait first",
    );
    assert!(h.mock.received().is_empty(), "nothing is sent to Zuora without a token");

    h.mock.set_token_mode(TokenMode::Normal);
    let recovering = Instant::now();
    let mut answer = None;
    for _ in 0..8 {
        let a = post(&h.url(&abort_path()), &[]).await;
        if a.status == 200 {
            answer = Some(a);
            break;
        }
        assert_refusal(&a, 503, "token_unavailable");
        assert!(recovering.elapsed() < Duration::from_secs(6), "no recovery in time");
    }
    let answer = answer.expect("a request succeeds once the endpoint recovers");
    assert_eq!(answer.json()["status"], "Aborted");
    assert!(
        recovering.elapsed() < Duration::from_secs(5),
        "{:?}",
        recovering.elapsed()
    );
    // Backoff, not a retry per waiting request: 1 s, 2 s, 4 s... over a few seconds.
    let calls = h.mock.token_calls();
    assert!((2..=5).contains(&calls), "token endpoint called {calls} times");
}

#[tokio::test]
async fn retry_after_from_the_token_endpoint_is_honoured() {
    let h = Harness::builder()
        .tenant("token_wait", "\"1s\"")
        .mock(|m| m.token_mode(TokenMode::RateLimited { retry_after_secs: 2 }))
        .first_fetch_made()
        .await;
    let refused_at = Instant::now();
    // A waiting request does not cut Zuora's Retry-After short.
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&answer, 503, "token_unavailable");
    assert_eq!(h.mock.token_calls(), 1, "asked again before Retry-After");

    h.mock.set_token_mode(TokenMode::Normal);
    assert!(
        h.mock.wait_token_calls(2, Duration::from_secs(5)).await,
        "never asked again"
    );
    let gap = refused_at.elapsed();
    // Backoff alone would have retried within 1 s.
    assert_took(
        gap,
        Duration::from_millis(1800)..Duration::from_secs(4),
        "retried after a 429 with Retry-After: 2",
    );
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(h.mock.token_calls(), 2);
}

#[tokio::test]
async fn a_cached_token_keeps_serving_while_refreshes_fail() {
    let h = Harness::builder()
        .token_lifetime(3, "2s")
        .tenant("token_wait", "\"1s\"")
        .ready()
        .await;
    let cached = h.token().expect("a token");
    h.mock.set_token_mode(TokenMode::Status(500));

    let url = h.url(&abort_path());
    let until = cached.usable_until - Duration::from_millis(300);
    let mut sent = 0;
    let mut failed = Vec::new();
    while Instant::now() < until && sent < 5_000 {
        let answer = post(&url, &[]).await;
        if answer.status != 200 {
            failed.push((sent, answer.status, answer.body));
        }
        sent += 1;
    }
    assert!(
        failed.is_empty(),
        "requests failed while a valid token was cached: {failed:?}"
    );
    assert!(sent >= 5, "only {sent} requests");
    assert!(
        h.mock.token_calls() >= 2,
        "a refresh was attempted (and failed) meanwhile"
    );
    assert_eq!(h.token().expect("still cached").generation, cached.generation);
    assert_eq!(h.mock.received().len(), sent, "no request was refused by Zuora");

    // Past its last usable moment the token is not used any more: the proxy says so itself.
    tokio::time::sleep_until(cached.usable_until + Duration::from_millis(50)).await;
    let answer = post(&url, &[]).await;
    assert_refusal(&answer, 503, "token_unavailable");
    assert_eq!(h.mock.received().len(), sent, "an expired token was sent to Zuora");
}

/// A lifetime outside [1 s, 30 days] is a broken answer: it is refused (no tight refetch loop,
/// no clock overflow), reported by /readyz, and requests get 503 `token_unavailable`.
#[tokio::test]
async fn an_absurd_expires_in_is_refused_not_used() {
    let h = Harness::builder()
        .tenant("token_wait", "\"300ms\"")
        .mock(|m| m.expires_in(ExpiresIn::Float(0.001)))
        .first_fetch_made()
        .await;
    let answer = post(&h.url(&abort_path()), &[]).await;
    assert_refusal(&answer, 503, "token_unavailable");
    let ready = get(&h.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    let state = ready.json()["tenants"]["default"]["state"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(state.contains("expires_in is not between"), "{state}");
    // Backoff, not a loop: at most a couple of calls in the first second.
    assert!(h.mock.token_calls() <= 3, "{} token calls", h.mock.token_calls());
    assert!(h.mock.received().is_empty());
}
