//! Log capture: every event the test binary's process logs, as JSON lines in one buffer shared
//! by the binary's tests, which tell their lines apart by track id.

use serde_json::Value;
use std::sync::{Mutex, Once};
use tracing::Level;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber, once per test binary (a binary passes one level).
pub fn capture(level: Level) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(level)
            .with_writer(|| Capture)
            .try_init()
            .expect("the only subscriber of this test binary");
    });
}

/// Everything captured so far.
pub fn text() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// The access log lines captured so far of the request with this track id.
pub fn access_lines(track: &str) -> Vec<Value> {
    text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access" && v["track_id"] == track)
        .collect()
}

/// The access log line of the request with this track id, for a request whose line is written
/// before its answer.
#[allow(dead_code)] // tests/caller_token.rs waits for its lines instead
pub fn access_line(track: &str) -> Value {
    let lines = access_lines(track);
    assert_eq!(lines.len(), 1, "access lines for {track}: {lines:?}");
    lines.into_iter().next().unwrap()
}

/// Asserts fields of the [`access_line`] of `track`: each `(name, value)` of `fields`.
#[allow(dead_code)] // tests/caller_token.rs waits for its lines instead
#[track_caller]
pub fn assert_access_line(track: &str, fields: &[(&str, Value)]) {
    let line = access_line(track);
    for (name, value) in fields {
        assert_eq!(&line[*name], value, "{name} of {track}'s access line: {line}");
    }
}
