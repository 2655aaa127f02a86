//! A build without the cargo feature `demo` (the production build: `--no-default-features`)
//! refuses `demo` with a message naming the missing feature and a non-zero exit, and still
//! serves the rest of its commands. Runs under `cargo test --no-default-features`.
#![cfg(not(feature = "demo"))]

use std::process::Command;

#[test]
fn demo_is_refused_with_the_missing_feature_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_zuora-auth-proxy"))
        .args(["demo", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no demo"), "{stderr}");
    assert!(stderr.contains("cargo feature `demo`"), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn the_other_commands_are_there() {
    let out = Command::new(env!("CARGO_BIN_EXE_zuora-auth-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "check-config", "wait"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command}: {help}"
        );
    }
}
