//! Waiting for a condition that has no notification to await (a gauge, a token phase, a
//! listener closing): one poll loop with a patience knob, instead of a loop per test. And
//! timing: [`timed`] measures a request, [`assert_took`] checks a duration's bounds.
#![allow(dead_code)]

use std::time::Duration;
use tokio::time::Instant;

/// How long [`eventually`] waits; `TEST_PATIENCE_SECS` stretches it on a slow machine.
pub fn patience() -> Duration {
    let secs = std::env::var("TEST_PATIENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// Runs `probe` until it returns `Some`, looking again every 5 ms, for at most
/// [`patience`]; panics naming `what`. Not a sleep between steps: where an event can be
/// awaited (a watch, a mock's `wait_*`, a log line), await it.
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, patience(), probe).await
}

/// [`eventually`] with a bound of its own, for a wait that is itself under test.
pub async fn eventually_within<T>(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that `took` lies `within` its bounds: a lower one says a deadline or a wait was
/// honoured, an upper one that it was not missed; the failure names `what`.
#[track_caller]
pub fn assert_took(took: Duration, within: impl std::ops::RangeBounds<Duration> + std::fmt::Debug, what: &str) {
    assert!(within.contains(&took), "{what}: took {took:?}, not within {within:?}");
}

/// `request` awaited, with how long it took.
pub async fn timed<T>(request: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = request.await;
    (value, started.elapsed())
}
