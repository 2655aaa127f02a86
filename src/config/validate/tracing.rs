//! Validation of `[tracing]`: how new traces are sampled, and where spans are exported.

use super::Issues;
use crate::config::raw::{Field, RawTracing};
use crate::config::TracingSettings;
use crate::trace::ExportSettings;
use url::Url;

pub const DEFAULT_SERVICE_NAME: &str = "zuora-auth-proxy";
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// The OpenTelemetry SDK's own default.
pub const DEFAULT_QUEUE_SIZE: u64 = 2048;
/// Past this, a stalled collector would hold too much memory.
const MAX_QUEUE_SIZE: u64 = 1_000_000;
/// The OpenTelemetry SDK's own default (`OTEL_BSP_SCHEDULE_DELAY`).
pub const DEFAULT_EXPORT_INTERVAL_SECS: u64 = 5;

pub(super) fn tracing(issues: &mut Issues, raw: &Field<RawTracing>) -> TracingSettings {
    let none = RawTracing::default();
    let raw = issues.field("tracing", raw).unwrap_or(&none);
    let sample_ratio = issues.number("tracing.sample_ratio", &raw.sample_ratio, DEFAULT_SAMPLE_RATIO);
    if !(0.0..=1.0).contains(&sample_ratio) {
        issues.push("tracing.sample_ratio", "must be between 0 and 1");
    }
    let service_name = issues
        .field("tracing.service_name", &raw.service_name)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
    if service_name.is_empty() {
        issues.push("tracing.service_name", "must not be empty");
    }
    let queue_size = issues.number("tracing.queue_size", &raw.queue_size, DEFAULT_QUEUE_SIZE);
    if !(1..=MAX_QUEUE_SIZE).contains(&queue_size) {
        issues.push("tracing.queue_size", format!("between 1 and {MAX_QUEUE_SIZE}"));
    }
    let export_interval = issues.duration(
        "tracing.export_interval",
        &raw.export_interval,
        DEFAULT_EXPORT_INTERVAL_SECS,
    );
    if export_interval.is_zero() {
        issues.push("tracing.export_interval", "must be longer than zero");
    }
    let endpoint = issues
        .field("tracing.otlp_endpoint", &raw.otlp_endpoint)
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .and_then(|e| endpoint(issues, e));
    TracingSettings {
        sample_ratio,
        export: endpoint.map(|endpoint| ExportSettings {
            endpoint,
            service_name,
            queue_size: usize::try_from(queue_size).unwrap_or(usize::MAX),
            export_interval,
        }),
    }
}

/// A collector's `http://` URL: spans carry no secret, and the exporter speaks no TLS (a
/// collector is a sidecar or node agent, reached on loopback or the node's network).
fn endpoint(issues: &mut Issues, written: &str) -> Option<Url> {
    issues.url(
        "tracing.otlp_endpoint",
        written,
        "http",
        "must be an http:// URL (e.g. http://127.0.0.1:4318/v1/traces)",
    )
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{keys, refused_at, GOOD};
    use crate::config::*;

    #[test]
    fn off_by_default_with_every_new_trace_sampled() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.fixed.tracing.sample_ratio, 1.0);
        assert!(c.fixed.tracing.export.is_none());
        let c = Config::from_toml(&format!("{GOOD}\n[tracing]\notlp_endpoint = \"\"\n")).unwrap();
        assert!(c.fixed.tracing.export.is_none());
        assert_eq!(
            c.to_redacted_json()["tracing"]["otlp_endpoint"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn an_endpoint_turns_export_on_with_defaults() {
        let text = format!("{GOOD}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n");
        let c = Config::from_toml(&text).unwrap();
        let export = c.fixed.tracing.export.as_ref().unwrap();
        assert_eq!(export.endpoint.as_str(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(export.service_name, "zuora-auth-proxy");
        assert_eq!(export.queue_size, 2048);
        assert_eq!(export.export_interval, std::time::Duration::from_secs(5));
        let json = c.to_redacted_json();
        assert_eq!(json["tracing"]["export_interval"], "5s");
        let text = format!(
            "{GOOD}\n[tracing]\notlp_endpoint = \"http://collector:4318/v1/traces\"\nservice_name = \"billing-proxy\"\n\
             sample_ratio = 0.25\nqueue_size = 10\nexport_interval = \"50ms\"\n"
        );
        let c = Config::from_toml(&text).unwrap();
        let export = c.fixed.tracing.export.as_ref().unwrap();
        assert_eq!(
            (export.service_name.as_str(), export.queue_size, export.export_interval),
            ("billing-proxy", 10, std::time::Duration::from_millis(50))
        );
        assert_eq!(c.fixed.tracing.sample_ratio, 0.25);
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let text = format!(
            "{GOOD}\n[tracing]\notlp_endpoint = \"https://collector/v1/traces\"\nservice_name = \" \"\n\
             sample_ratio = 1.5\nqueue_size = 0\nexport_interval = \"0s\"\nsampling = 1\n"
        );
        refused_at(
            &text,
            &[
                "tracing.otlp_endpoint",
                "tracing.service_name",
                "tracing.sample_ratio",
                "tracing.queue_size",
                "tracing.export_interval",
                "tracing.sampling",
            ],
        );
        let err = Config::from_toml(&format!(
            "{GOOD}\n[tracing]\notlp_endpoint = \"http://u:p@c/v1/traces\"\n"
        ))
        .unwrap_err();
        assert_eq!(keys(&err), ["tracing.otlp_endpoint"]);
    }
}
