//! The binary's tracing: log lines on stderr at `DSPEX_LOG` (default
//! `error`), and with the `otel` feature, spans exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter until the process ends; dropping it flushes the
/// spans not sent yet.
#[derive(Debug)]
pub(crate) struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("dspex: flushing the OTLP spans failed: {error}");
        }
    }
}

/// Installs the subscriber.
pub(crate) fn init() -> Guard {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_env("DSPEX_LOG").unwrap_or_else(|_| "error".into()));
    let registry = tracing_subscriber::registry().with(stderr);
    #[cfg(feature = "otel")]
    {
        let (layer, provider) = otel();
        registry.with(layer).init();
        Guard { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Guard {}
    }
}

/// The OTLP layer (its spans at `DSPEX_OTEL_LOG`, default `info`), when an
/// endpoint is configured.
#[cfg(feature = "otel")]
fn otel<S>() -> (
    Option<Box<dyn Layer<S> + Send + Sync>>,
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return (None, None);
    }
    // The endpoint, headers and timeout come from the standard OTEL_*
    // variables.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("dspex: OTLP export is off: {error}");
            return (None, None);
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("dspex")
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dspex"))
        .with_filter(EnvFilter::try_from_env("DSPEX_OTEL_LOG").unwrap_or_else(|_| "info".into()));
    (Some(Box::new(layer)), Some(provider))
}
