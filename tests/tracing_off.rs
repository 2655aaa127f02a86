//! With `[tracing] otlp_endpoint` unset (the default) the proxy starts nothing for tracing: no
//! export thread exists, while requests still carry trace context. Its own test binary, so
//! that no other test's exporter runs in the same process.
#![cfg(feature = "demo")] // drives the embedded mock Zuora

mod support {
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod wait;
}

use support::client::*;
use support::fixtures::*;
use support::harness::*;
use support::wait::eventually;

/// Threads of this process whose name starts with the span exporter's (`comm` keeps 15 bytes).
fn export_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("Linux /proc");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("OpenTelemetry"))
        .count()
}

#[tokio::test]
async fn no_export_thread_without_an_endpoint_and_one_with_it() {
    let off = Harness::builder().start().await;
    let answer = post(&off.url(&abort_path()), &[]).await;
    assert_eq!(answer.status, 200);
    assert!(off.mock.received()[0].headers.contains_key("traceparent"));
    assert_eq!(export_threads(), 0, "export is off: no thread of its own");

    // The same look finds the thread once export is on (nothing listens there: no matter).
    let endpoint = format!("http://{}/v1/traces", closed_addr());
    let on = Harness::builder()
        .rules(&format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n"))
        .start()
        .await;
    // A thread names itself once it runs, just after it was started.
    eventually("the export thread named", async || {
        (export_threads() == 1).then_some(())
    })
    .await;
    drop(on);
}
