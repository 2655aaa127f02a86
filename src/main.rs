//! The `zuora-auth-proxy` binary: arguments, logging, configuration, signals, the watch
//! of the configuration file, systemd notifications, and `wait` for a start command.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zuora_auth_proxy::{Config, DEFAULT_CONFIG_PATH};

const AFTER_HELP: &str = "\
Environment:
  ZUORA_PROXY_CONFIG             configuration file when --config is not given
  ZUORA_PROXY__<SECTION>__<KEY>  overrides any configuration key, `__` between levels,
                                 e.g. ZUORA_PROXY__TENANTS__DEFAULT__CLIENT_ID
  RUST_LOG                       log filter; wins over log.level
  HTTPS_PROXY, NO_PROXY          egress proxy toward Zuora, unless a tenant sets proxy_url
  NOTIFY_SOCKET                  set by systemd (Type=notify): READY=1 and STOPPING=1 are sent
  TOKIO_WORKER_THREADS           when set, the main runtime is tokio's multi-thread one with
                                 that many threads (unset: one thread; see server.workers)

Signals (run):
  SIGTERM, SIGINT  drain: /readyz turns 503, in-flight requests finish within
                   server.shutdown_grace, then exit 0; a second signal exits at once (1)
  SIGHUP           reload the configuration file (it is also watched: a change, a
                   Kubernetes ConfigMap update included, is reloaded within a second)

Exit codes:
  0   success (a drain finished, check-config found the file valid, wait saw /readyz 200)
  1   failure at run time (cannot bind, cannot start, second signal, wait timed out,
      demo in a build without the `demo` feature)
  2   usage error (unknown command or option)
  78  configuration error (EX_CONFIG): the file is missing or invalid";

#[derive(Parser)]
#[command(
    name = "zuora-auth-proxy",
    version,
    about = "Forwards allowlisted Zuora REST calls from local services, with an OAuth token it manages itself",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default when no command is given).
    Run(ConfigArg),
    /// Validate the configuration, print it with secrets redacted; exit 78 if invalid.
    CheckConfig(ConfigArg),
    /// Wait until a running proxy's /readyz answers 200 (for an application's start
    /// command); exit 1 if it has not within the timeout.
    Wait {
        /// The proxy's admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// How long to wait, e.g. `30s`, `2m`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run against a built-in mock Zuora on loopback: no credentials needed.
    Demo {
        /// Send one sample abort through the proxy, print the answer and exit.
        #[arg(long)]
        once: bool,
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo admin listener listens (empty disables it).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "ZUORA_PROXY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// Exit code for an invalid configuration: sysexits(3)'s `EX_CONFIG`, distinct from clap's
/// usage errors (2), so that a supervisor can tell a bad file from a bad command line
/// (systemd's `RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;
/// How often `wait` asks `/readyz`.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long `wait` gives one `/readyz` request.
const WAIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        let config = std::env::var_os(zuora_auth_proxy::CONFIG_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Command::Run(ConfigArg { config })
    });
    match command {
        Command::CheckConfig(arg) => check_config(&arg.config),
        Command::Run(arg) => {
            // Until the configuration loads, the log format is unknown: plain text.
            let config = match Config::load(&arg.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{}: {e}", arg.config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // From here on every failure is a log line in the configured format.
            let _log_guard = zuora_auth_proxy::init_logging(&config.fixed.log);
            for warning in &config.warnings {
                tracing::warn!(key = %warning.key, message = %warning.message, "configuration warning");
            }
            match async_runtime() {
                Ok(runtime) => runtime.block_on(serve(config, arg.config)),
                Err(error) => {
                    tracing::error!(%error, "cannot start the async runtime");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Wait { admin, timeout } => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(wait_ready(admin, timeout)),
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { once, listen, admin } => match async_runtime() {
            Ok(runtime) => runtime.block_on(demo(once, listen, &admin)),
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// One thread: worker 0, the token fetchers, the admin listener and the signals share it;
/// `server.workers` > 1 adds a thread with a runtime of its own per further worker. No work
/// stealing: a sidecar's cores are shared with its application and its load. A deployment
/// that sets tokio's own `TOKIO_WORKER_THREADS` keeps what it asked for, as before
/// `server.workers`: tokio's multi-thread runtime with that many threads (tokio refuses 0).
fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return tokio::runtime::Builder::new_multi_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let text = serde_json::to_string_pretty(&config.to_redacted_json()).unwrap_or_default();
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            for warning in &config.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            eprintln!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// SIGTERM and SIGINT: the first asks for a drain, a second one for an exit at once.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn serve(config: Config, path: PathBuf) -> ExitCode {
    let (mut stop, mut hup) = match (StopSignals::install(), signal(SignalKind::hangup())) {
        (Ok(stop), Ok(hup)) => (stop, hup),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let running = match zuora_auth_proxy::start(config).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    notify("READY=1");
    {
        let watch = running.watch_config(&path);
        tokio::pin!(watch);
        loop {
            tokio::select! {
                () = stop.next() => break,
                _ = hup.recv() => reload(&running, &path),
                () = &mut watch => {}
            }
        }
    }
    notify("STOPPING=1");
    running.begin_shutdown();
    tokio::select! {
        () = running.wait() => ExitCode::SUCCESS,
        () = stop.next() => second_signal(),
    }
}

/// A build without the cargo feature `demo` has no mock Zuora to run against.
#[cfg(not(feature = "demo"))]
async fn demo(_once: bool, _listen: SocketAddr, _admin: &str) -> ExitCode {
    eprintln!(
        "demo: this build of zuora-auth-proxy has no demo (it was built without the cargo feature \
         `demo`, as the production build is); build with the default features, e.g. \
         `cargo run --release -- demo`"
    );
    ExitCode::FAILURE
}

/// The demo stops as `run` does: the first SIGTERM/SIGINT drains, a second exits at once.
/// Either way the demo's future is dropped before returning, which removes its files.
#[cfg(feature = "demo")]
async fn demo(once: bool, listen: SocketAddr, admin: &str) -> ExitCode {
    let mut signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let demo = zuora_auth_proxy::run_demo(once, listen, admin, async {
        let _ = stopped.await;
    });
    tokio::pin!(demo);
    let mut stop = Some(stop);
    loop {
        tokio::select! {
            outcome = &mut demo => return match outcome {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            },
            () = signals.next() => match stop.take() {
                Some(stop) => {
                    let _ = stop.send(());
                }
                None => return second_signal(),
            },
        }
    }
}

/// Tells systemd, if it started the process; a failure is logged, never fatal.
fn notify(state: &str) {
    if let Err(error) = zuora_auth_proxy::sd_notify(state) {
        tracing::warn!(%error, state, "cannot notify systemd");
    }
}

/// Asks `http://<admin>/readyz` until it answers 200 or `timeout` passes.
async fn wait_ready(admin: SocketAddr, timeout: Duration) -> ExitCode {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let url = format!("http://{admin}/readyz");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let request = hyper::Request::get(&url)
            .body(http_body_util::Empty::new())
            .expect("a valid request");
        let last = match tokio::time::timeout(WAIT_REQUEST_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status() == hyper::StatusCode::OK => {
                eprintln!("{url}: ready");
                return ExitCode::SUCCESS;
            }
            Ok(Ok(response)) => format!("status {}", response.status().as_u16()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2 s".to_string(),
        };
        if tokio::time::Instant::now() + WAIT_POLL >= deadline {
            eprintln!(
                "{url}: not ready within {} ({last})",
                humantime::format_duration(timeout)
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn second_signal() -> ExitCode {
    tracing::warn!("second signal: exiting without waiting for the drain");
    ExitCode::FAILURE
}

fn reload(running: &zuora_auth_proxy::Running, path: &Path) {
    // Outcome is logged and counted inside; the old configuration stays on failure.
    let _ = running.reload_from(path);
}
