//! Log setup: one JSON object per line (or human text), on standard error, filtered by
//! `RUST_LOG` when set, else by `log.level`. Lines go into a shared buffer under a short lock
//! and reach standard error in batches: when the buffer fills, and every
//! `FLUSH_INTERVAL_MS` from a flusher thread, so a request never waits on a write(2) of its
//! access line.

use crate::config::{LogFormat, LogSettings};
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A log line waits at most this long before it is written.
const FLUSH_INTERVAL_MS: u64 = 100;
/// A buffer this full is written at once, by the thread that filled it.
const FLUSH_AT_BYTES: usize = 64 * 1024;

/// The process's log buffer.
struct Sink {
    pending: Mutex<Vec<u8>>,
    /// Held while writing, so batches reach standard error in the order they were taken.
    output: Mutex<io::Stderr>,
}

impl Sink {
    fn global() -> &'static Sink {
        static SINK: OnceLock<Sink> = OnceLock::new();
        SINK.get_or_init(|| Sink {
            pending: Mutex::new(Vec::with_capacity(FLUSH_AT_BYTES)),
            output: Mutex::new(io::stderr()),
        })
    }

    fn append(&self, line: &[u8]) {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.extend_from_slice(line);
            pending.len() >= FLUSH_AT_BYTES
        };
        if full {
            self.flush();
        }
    }

    fn flush(&self) {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            // Nowhere to report a failed log write; the next batch tries again.
            let _ = output.write_all(&batch);
        }
    }
}

/// The writer the fmt layer gets for each line.
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Sink::global().append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands the fmt layer a [`SinkWriter`] per line.
struct SinkMaker;

impl<'a> MakeWriter<'a> for SinkMaker {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter
    }
}

/// Set once the JSON subscriber is installed: hot-path lines may then be written straight
/// into the buffer in the same JSON shape (see [`crate::access_log`]).
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Whether [`write_line`] reaches the installed JSON log.
pub fn json_lines() -> bool {
    JSON_LINES.load(Ordering::Relaxed)
}

/// Appends one finished JSON line (with its newline) to the log.
pub fn write_line(line: &[u8]) {
    Sink::global().append(line);
}

/// Flushes the log buffer when dropped; keep it until exit.
#[must_use = "dropping the guard flushes the logs; keep it until exit"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        Sink::global().flush();
    }
}

/// Installs the global subscriber and starts the flusher thread. Call once, before anything
/// logs. `None` if a subscriber was already installed (tests, demo).
pub fn init(settings: &LogSettings) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(SinkMaker);
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
    };
    installed.ok()?;
    JSON_LINES.store(settings.format == LogFormat::Json, Ordering::Relaxed);
    let flusher = std::thread::Builder::new().name("log-flush".into()).spawn(|| loop {
        std::thread::sleep(Duration::from_millis(FLUSH_INTERVAL_MS));
        Sink::global().flush();
    });
    if flusher.is_err() {
        eprintln!("cannot start the log flusher thread; logs are written when the buffer fills");
    }
    Some(LogGuard(()))
}
