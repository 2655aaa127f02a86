//! The `zuora-auth-proxy` binary: arguments, logging, configuration, signals.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zuora_auth_proxy::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "zuora-auth-proxy",
    version,
    about = "Forwards allowlisted Zuora REST calls from local services, with an OAuth token it manages itself"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default when no command is given).
    Run(ConfigArg),
    /// Validate the configuration, print it with secrets redacted; exit 2 if invalid.
    CheckConfig(ConfigArg),
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

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

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
        Command::Demo { once, listen, admin } => match async_runtime() {
            Ok(runtime) => runtime.block_on(demo(once, listen, &admin)),
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
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
    loop {
        tokio::select! {
            () = stop.next() => break,
            _ = hup.recv() => reload(&running, &path),
        }
    }
    running.begin_shutdown();
    tokio::select! {
        () = running.wait() => ExitCode::SUCCESS,
        () = stop.next() => second_signal(),
    }
}

/// The demo stops as `run` does: the first SIGTERM/SIGINT drains, a second exits at once.
/// Either way the demo's future is dropped before returning, which removes its files.
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

fn second_signal() -> ExitCode {
    tracing::warn!("second signal: exiting without waiting for the drain");
    ExitCode::FAILURE
}

fn reload(running: &zuora_auth_proxy::Running, path: &Path) {
    // Outcome is logged and counted inside; the old configuration stays on failure.
    let _ = running.reload_from(path);
}
