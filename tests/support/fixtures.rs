//! The fixed names of the tests: the bulk job they act on, the routes that reach it, the
//! entity their rules send, and the helpers that name requests at the mock Zuora.

use http::HeaderMap;
use std::net::SocketAddr;

pub const JOB: &str = "3a3e85c4-96e7-486b-ae02-827120104301";

/// The entity of the tests whose rules send `Zuora-Entity-Ids`.
#[allow(dead_code)] // only those tests use it
pub const ENTITY: &str = "8a8aa0ad-5ab8-4a9b-9f2e-2f1c5b0c1d3e";

#[allow(dead_code)] // a few test files call only the other routes
pub fn abort_path() -> String {
    job_path("aborts")
}

/// `/bulk-data/bulk-jobs/{JOB}/{action}`: `summary`, `downloads` and `echo` are routes too.
pub fn job_path(action: &str) -> String {
    format!("/bulk-data/bulk-jobs/{JOB}/{action}")
}

/// The routes most tests use: the abort call, plus a GET and a streaming POST for body tests.
pub const ROUTES: &str = r#"
[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"

[[routes]]
name = "job-summary"
method = "GET"
path = "/bulk-data/bulk-jobs/{id:uuid}/summary"

[[routes]]
name = "job-downloads"
method = "GET"
path = "/bulk-data/bulk-jobs/{id:uuid}/downloads"

[[routes]]
name = "echo"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/echo"
"#;

/// [`ROUTES`] with each named route given the TOML lines after its name: the retry and body
/// policies a test file sets on the same four routes.
#[allow(dead_code)] // for the test files that set policies
pub fn routes_with(policies: &[(&str, &str)]) -> String {
    let mut routes = ROUTES.to_string();
    for (name, lines) in policies {
        let block = format!("[[routes]]\nname = \"{name}\"\n");
        let start = routes
            .find(&block)
            .unwrap_or_else(|| panic!("no route {name} in ROUTES"));
        // The route's keys end at the blank line before the next route (or at the end).
        let end = routes[start..].find("\n\n").map_or(routes.len() - 1, |at| start + at);
        routes.insert_str(end + 1, &format!("{}\n", lines.trim()));
    }
    routes
}

/// A `[[rules]]` entry for the `default` tenant, matching callers that send `header: value`,
/// with `extra` TOML lines (a `track_id_prefix`, say).
#[allow(dead_code)] // for the test files with rules
pub fn rule_for_header(name: &str, (header, value): (&str, &str), extra: &str) -> String {
    format!(
        "\n[[rules]]\nname = \"{name}\"\ntenant = \"default\"\nwhen_headers = {{ \"{header}\" = \"{value}\" }}\n{extra}\n"
    )
}

/// The `Zuora-Track-Id` of a request Zuora received, or `""`.
#[allow(dead_code)] // for the test files that follow requests by track id
pub fn track_of(headers: &HeaderMap) -> String {
    headers
        .get("zuora-track-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A loopback address nothing listens on: bound to find a free port, then released.
#[allow(dead_code)] // for the tests that need a port nobody answers on
pub fn closed_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}
