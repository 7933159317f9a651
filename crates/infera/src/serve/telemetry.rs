//! Logs (text or JSON, levels from RUST_LOG) and, with `--otlp-endpoint`, traces: the
//! request, queue, step and backend spans exported over OTLP/HTTP by a batching exporter on
//! its own thread.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes the traces still buffered when dropped.
pub(super) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("infera: could not flush traces to the OTLP endpoint: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL of a collector's base address (as OTEL_EXPORTER_OTLP_ENDPOINT
/// is read), or the URL itself when it already names the traces path.
fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

/// Call before any runtime starts: the exporter's HTTP client blocks on its own thread.
pub(super) fn init(format: &str, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.with_ansi(std::io::stdout().is_terminal()).boxed()
    }
    .with_filter(filter);
    let (otel, provider) = match otlp_endpoint {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "--otlp-endpoint {url}: give an http:// or https:// URL, e.g. http://127.0.0.1:4318"
                );
            }
            // The exporter's HTTP client (https endpoints too) uses the process's TLS provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(traces_url(url))
                .build()
                .with_context(|| format!("--otlp-endpoint {url}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name("infera").build())
                .build();
            // infera's own spans, down to the debug-level queue, step and backend spans,
            // which cost nothing when traces are off.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("infera"))
                .with_filter(filter_fn(|m| {
                    m.is_span() && m.target().starts_with("infera") && *m.level() <= Level::DEBUG
                }));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    // A process embedding infera (a second server in the same Python process) keeps the
    // logging it has.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_collector_address_gets_the_traces_path() {
        assert_eq!(
            super::traces_url("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c/v1/traces"),
            "http://c/v1/traces"
        );
    }
}
