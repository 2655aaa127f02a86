//! Log setup: one JSON object per line (or human text), on standard error, filtered by
//! `RUST_LOG` when set, else by `log.level`. Lines are handed to a background thread that
//! writes them in batches, so a request never waits for a write(2) of its access line.

use crate::config::{LogFormat, LogSettings};
use std::io::{BufWriter, IsTerminal};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines that may wait for the writer thread; past this (a stalled log pipe) new lines are
/// dropped rather than stalling requests.
const BUFFERED_LINES: usize = 128_000;

/// Installs the global subscriber. Call once, before anything logs, and keep the guard
/// until exit: dropping it flushes the lines still queued. `None` if a subscriber was
/// already installed (tests, demo).
pub fn init(settings: &LogSettings) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    installed.ok().map(|()| guard)
}
