//! The `zuora-auth-proxy` binary: arguments, logging, configuration, signals.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or_else(|| {
        let config = std::env::var_os(zuora_auth_proxy::CONFIG_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Command::Run(ConfigArg { config })
    });
    runtime.block_on(async move {
        match command {
            Command::CheckConfig(arg) => match Config::load(&arg.config) {
                Ok(config) => {
                    // A closed pipe (`| head`) is not an error worth a panic.
                    let text = serde_json::to_string_pretty(&config.to_redacted_json()).unwrap_or_default();
                    let _ = writeln!(std::io::stdout().lock(), "{text}");
                    eprintln!("{}: configuration is valid", arg.config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", arg.config.display());
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Command::Run(arg) => serve(arg.config).await,
            Command::Demo { once, listen, admin } => {
                match zuora_auth_proxy::run_demo(once, listen, &admin, ctrl_c()).await {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("demo failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = zuora_auth_proxy::init_logging(&config.fixed.log);
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("cannot install signal handlers");
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
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&running, &path),
        }
    }
    running.begin_shutdown();
    let drained = running.wait();
    tokio::select! {
        _ = drained => ExitCode::SUCCESS,
        _ = term.recv() => second_signal(),
        _ = int.recv() => second_signal(),
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
