//! OpenTelemetry traces (`opentelemetry.enabled`): the spans the library marks with
//! the `tidings::otel` target (server API and proxy calls) go to an OTLP/HTTP
//! collector. Where to is read from the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...); the service is
//! `OTEL_SERVICE_NAME`, `tidings` by default.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

/// The exporter and the layer that feeds it.
pub struct Traces {
    pub provider: SdkTracerProvider,
    pub layer: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>,
}

/// Builds the OTLP exporter: spans are batched and sent from the SDK's own thread.
pub fn traces() -> anyhow::Result<Traces> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .context("opentelemetry: cannot build the OTLP exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tidings".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("tidings");
    let only_ours = Targets::new().with_target(tidings::config::OTEL_TARGET, tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(only_ours)
        .boxed();
    Ok(Traces { provider, layer })
}
