//! `opentelemetry`: traces of server API and proxy calls over OTLP (docs/operations.md).
//! The exporter is set up by the binary from the standard `OTEL_EXPORTER_OTLP_*`
//! variables; the library only marks the spans.

use serde::{Deserialize, Serialize};

/// The `opentelemetry` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenTelemetryConfig {
    /// Export traces over OTLP/HTTP. Default `false`.
    pub enabled: bool,
    /// A span for every server API request. Default `false`.
    pub api: bool,
    /// A span for every backend proxy call. A Tidings key. Default `false`.
    pub proxy: bool,
}

impl OpenTelemetryConfig {
    /// Server API requests are traced.
    pub fn traces_api(&self) -> bool {
        self.enabled && self.api
    }

    /// Proxy calls are traced.
    pub fn traces_proxy(&self) -> bool {
        self.enabled && self.proxy
    }
}

/// The `tracing` target of the spans that go to OpenTelemetry (and only those).
pub const OTEL_TARGET: &str = "tidings::otel";
