//! Tracing across hops: the W3C trace context a request carries in and out ([`context`]),
//! and the optional OTLP export of the spans the proxy records ([`export`]). A leaf: it
//! imports nothing of the crate.

pub mod context;
pub mod export;

pub use context::{span_id_hex, trace_id_hex, TraceContext, TRACEPARENT};
pub use export::{ExportSettings, Exporter, Kind, Span};
pub use opentelemetry::KeyValue as Attribute;
