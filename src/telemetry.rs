//! Log setup: one JSON object per line (or human text), on standard error, filtered by
//! `RUST_LOG` when set, else by `log.level`. A line is appended to a shared buffer under a
//! short lock and nothing else: only the flusher thread writes, every `FLUSH_INTERVAL_MS` or
//! as soon as `WAKE_AT_BYTES` are pending. A stalled standard error (a full pipe, a stuck log
//! collector) therefore never blocks a request; once `MAX_PENDING_BYTES` are waiting, new
//! lines are dropped whole and counted ([`dropped_lines`]).

use crate::config::{LogFormat, LogSettings};
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A log line waits at most this long before it is written.
const FLUSH_INTERVAL_MS: u64 = 100;
/// With nothing to write, the flusher looks again after this many ticks (a first line wakes
/// it at once).
const IDLE_TICKS: u32 = 10;
/// This much pending wakes the flusher before its next tick.
const WAKE_AT_BYTES: usize = 64 * 1024;
/// Past this much pending, the writer is not keeping up: new lines are dropped.
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// At exit, how long the flusher may take to write what is pending.
const EXIT_FLUSH_TIMEOUT_MS: u64 = 2_000;

/// The buffer and its counters, under one lock.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes ever appended and ever written: a flush waits for `written` to reach `appended`.
    appended: u64,
    written: u64,
    /// Someone waits in [`Sink::flush_within`]: the flusher writes without waiting its tick.
    flush_requested: bool,
}

/// A log buffer in front of `W`, written by one flusher thread.
struct Sink<W> {
    pending: Mutex<Pending>,
    /// Wakes the flusher before its tick.
    wake: Condvar,
    /// Signalled by the flusher after each batch it wrote.
    wrote: Condvar,
    /// Only the flusher writes here (or appends themselves, in `direct` mode).
    output: Mutex<W>,
    max_pending: usize,
    wake_at: usize,
    dropped: AtomicU64,
    /// No flusher thread could be started: lines are written as they come rather than lost.
    direct: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while logging leaves the buffer usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Write + Send + 'static> Sink<W> {
    fn new(output: W, max_pending: usize) -> Sink<W> {
        Sink {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            wrote: Condvar::new(),
            output: Mutex::new(output),
            max_pending,
            wake_at: WAKE_AT_BYTES.min(max_pending),
            dropped: AtomicU64::new(0),
            direct: AtomicBool::new(false),
        }
    }

    /// Queues one whole line, or drops it (and counts it) if the buffer is full. Never writes,
    /// never waits but for the buffer's lock.
    fn append(&self, line: &[u8]) {
        if self.direct.load(Ordering::Relaxed) {
            let _ = lock(&self.output).write_all(line);
            return;
        }
        let mut pending = lock(&self.pending);
        let before = pending.bytes.len();
        if before + line.len() > self.max_pending {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        pending.appended += line.len() as u64;
        // The first line into an empty buffer starts the flusher's tick; a full one writes now.
        if before == 0 || (before < self.wake_at && pending.bytes.len() >= self.wake_at) {
            self.wake.notify_one();
        }
    }

    /// Starts the flusher thread; it stops once the sink is dropped.
    fn spawn_flusher(sink: &Arc<Sink<W>>, interval: Duration) -> io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<Sink<W>> = Arc::downgrade(sink);
        std::thread::Builder::new().name("log-flush".into()).spawn(move || {
            let mut reported = 0;
            let mut spare = Vec::new();
            while let Some(sink) = weak.upgrade() {
                sink.write_batch(interval, &mut spare);
                // Said once standard error takes lines again, so the gap in the log is explained.
                let dropped = sink.dropped.load(Ordering::Relaxed);
                if dropped > reported {
                    tracing::warn!(
                        dropped = dropped - reported,
                        "log lines dropped: standard error was not keeping up"
                    );
                    reported = dropped;
                }
            }
        })
    }

    /// One flusher step: waits for a first line (at most [`IDLE_TICKS`] ticks: an idle proxy's
    /// flusher wakes once a second, not ten times), then for the tick (or an early wake), and
    /// writes what was appended meanwhile. The buffers take turns, so that neither grows
    /// again from nothing for every batch.
    fn write_batch(&self, interval: Duration, spare: &mut Vec<u8>) {
        {
            let mut pending = lock(&self.pending);
            if pending.bytes.is_empty() && !pending.flush_requested {
                pending = self
                    .wake
                    .wait_timeout_while(pending, interval * IDLE_TICKS, |p| {
                        p.bytes.is_empty() && !p.flush_requested
                    })
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if pending.bytes.len() < self.wake_at && !pending.flush_requested {
                pending = self
                    .wake
                    .wait_timeout(pending, interval)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            pending.flush_requested = false;
            spare.clear();
            std::mem::swap(&mut pending.bytes, spare);
        }
        let batch = &*spare;
        if batch.is_empty() {
            return;
        }
        {
            let mut output = lock(&self.output);
            // Nowhere to report a failed log write; the next batch tries again.
            let _ = output.write_all(batch);
            let _ = output.flush();
        }
        lock(&self.pending).written += batch.len() as u64;
        self.wrote.notify_all();
    }

    /// Waits up to `timeout` for everything appended so far to be written; whether it was.
    fn flush_within(&self, timeout: Duration) -> bool {
        if self.direct.load(Ordering::Relaxed) {
            return true;
        }
        let mut pending = lock(&self.pending);
        let target = pending.appended;
        pending.flush_requested = true;
        self.wake.notify_one();
        let (pending, _) = self
            .wrote
            .wait_timeout_while(pending, timeout, |p| p.written < target)
            .unwrap_or_else(|e| e.into_inner());
        pending.written >= target
    }

    /// Without a flusher thread: write what is pending, then every line as it comes.
    fn write_directly(&self) {
        let mut output = lock(&self.output);
        self.direct.store(true, Ordering::Relaxed);
        let batch = std::mem::take(&mut lock(&self.pending).bytes);
        let _ = output.write_all(&batch);
    }
}

/// The process's log buffer, in front of standard error.
fn global() -> &'static Arc<Sink<io::Stderr>> {
    static SINK: OnceLock<Arc<Sink<io::Stderr>>> = OnceLock::new();
    SINK.get_or_init(|| Arc::new(Sink::new(io::stderr(), MAX_PENDING_BYTES)))
}

/// Log lines dropped so far because standard error was not keeping up.
pub fn dropped_lines() -> u64 {
    global().dropped.load(Ordering::Relaxed)
}

/// The writer the fmt layer gets for each line (it writes a line in one call).
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        global().append(buf);
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
/// into the buffer in the same JSON shape (the access log does).
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Whether [`write_line`] reaches the installed JSON log.
pub fn json_lines() -> bool {
    JSON_LINES.load(Ordering::Relaxed)
}

/// Appends one finished JSON line (with its newline) to the log.
pub fn write_line(line: &[u8]) {
    global().append(line);
}

/// Writes out the log buffer when dropped (waiting at most `EXIT_FLUSH_TIMEOUT_MS` for a
/// stalled standard error); keep it until exit.
#[must_use = "dropping the guard flushes the logs; keep it until exit"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        global().flush_within(Duration::from_millis(EXIT_FLUSH_TIMEOUT_MS));
    }
}

/// Installs the global subscriber (with JSON, a panic hook that logs panics as JSON lines too)
/// and starts the flusher thread. Call once, before anything logs or can fail. `None` if a
/// subscriber was already installed (tests, demo).
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
    if settings.format == LogFormat::Json {
        JSON_LINES.store(true, Ordering::Relaxed);
        std::panic::set_hook(Box::new(log_panic));
    }
    if let Err(error) = Sink::spawn_flusher(global(), Duration::from_millis(FLUSH_INTERVAL_MS)) {
        global().write_directly();
        tracing::warn!(%error, "cannot start the log flusher thread; log lines are written as they come");
    }
    Some(LogGuard(()))
}

/// A panic as a log line, so that a JSON log stays JSON (the default hook prints plain text).
/// The line is flushed with the rest: by the `LogGuard` when the panic unwinds `main`, by the
/// flusher otherwise.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("(unnamed)");
    // Honours RUST_BACKTRACE, as the default hook does.
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(panic = message, %location, thread, %backtrace, "panicked");
    } else {
        tracing::error!(panic = message, %location, thread, "panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// Collects what reaches it; shared with the test.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A standard error that stalls: its first write reports that it started, then blocks
    /// until the test releases it.
    struct Stalled {
        out: Collect,
        started: Option<mpsc::Sender<()>>,
        release: mpsc::Receiver<()>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
                let _ = self.release.recv();
            }
            self.out.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(n: usize) -> Vec<u8> {
        let line = format!("{{\"n\":{n:08},\"pad\":\"{}\"}}\n", "x".repeat(76)).into_bytes();
        assert_eq!(line.len(), 100);
        line
    }

    #[test]
    fn appends_return_while_the_writer_is_stalled_and_excess_lines_are_dropped_whole() {
        let out = Collect::default();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let writer = Stalled {
            out: out.clone(),
            started: Some(started_tx),
            release: release_rx,
        };
        // Room for ten 100-byte lines.
        let sink = Arc::new(Sink::new(writer, 1_000));
        Sink::spawn_flusher(&sink, Duration::from_millis(10)).unwrap();
        sink.append(&line(0));
        started.recv_timeout(PATIENCE).expect("the flusher writes line 0");

        // The flusher is stuck inside write(2); appends must still return, from another thread
        // so that a blocked append fails the test instead of hanging it.
        let (done_tx, done) = mpsc::channel();
        let appender = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for n in 1..=25 {
                    sink.append(&line(n));
                }
                done_tx.send(()).unwrap();
            })
        };
        done.recv_timeout(PATIENCE)
            .expect("25 appends returned while the writer was stalled");
        appender.join().unwrap();
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 15, "lines 11..=25 dropped");
        assert!(
            !sink.flush_within(Duration::from_millis(50)),
            "a stalled writer cannot have written"
        );

        release.send(()).unwrap();
        assert!(
            sink.flush_within(PATIENCE),
            "everything kept is written once the writer is back"
        );
        let expected: Vec<u8> = (0..=10).flat_map(line).collect();
        assert_eq!(
            String::from_utf8(lock(&out.0).clone()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }

    #[test]
    fn a_healthy_writer_gets_every_line_in_order() {
        let out = Collect::default();
        let sink = Arc::new(Sink::new(out.clone(), MAX_PENDING_BYTES));
        Sink::spawn_flusher(&sink, Duration::from_millis(10)).unwrap();
        const THREADS: usize = 4;
        const LINES: usize = 2_000;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for n in 0..LINES {
                        sink.append(format!("{t} {n}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(sink.flush_within(PATIENCE));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let mut next = [0usize; THREADS];
        for l in text.lines() {
            let (t, n) = l.split_once(' ').unwrap();
            let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, next[t], "thread {t}'s lines in order, none missing");
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
    }

    #[test]
    fn the_flusher_writes_without_being_asked_and_stops_with_its_sink() {
        let out = Collect::default();
        let sink = Arc::new(Sink::new(out.clone(), MAX_PENDING_BYTES));
        let flusher = Sink::spawn_flusher(&sink, Duration::from_millis(10)).unwrap();
        sink.append(b"tick\n");
        // No flush request: the flusher's own tick writes it.
        let written = {
            let pending = lock(&sink.pending);
            sink.wrote
                .wait_timeout_while(pending, PATIENCE, |p| p.written < 5)
                .unwrap()
                .0
                .written
        };
        assert_eq!(written, 5);
        assert_eq!(lock(&out.0).as_slice(), b"tick\n");
        drop(sink);
        flusher.join().expect("the flusher ends once its sink is gone");
    }

    #[test]
    fn without_a_flusher_lines_are_written_as_they_come() {
        let out = Collect::default();
        let sink = Sink::new(out.clone(), MAX_PENDING_BYTES);
        sink.append(b"early\n");
        sink.write_directly();
        sink.append(b"late\n");
        assert_eq!(lock(&out.0).as_slice(), b"early\nlate\n");
        assert!(sink.flush_within(Duration::ZERO));
    }
}
