//! The `zuora-auth-proxy` executable Cargo built for these tests.

use std::process::Command;

/// The path of the binary.
pub const EXE: &str = env!("CARGO_BIN_EXE_zuora-auth-proxy");

/// The binary with an empty environment: it reads `ZUORA_PROXY_*`, `RUST_LOG` and `*_PROXY`;
/// none of the test's may leak in.
pub fn command() -> Command {
    let mut command = Command::new(EXE);
    command.env_clear();
    command
}
