//! Traces: the service's `tracing` spans exported over OTLP/HTTP (protobuf) to an OpenTelemetry
//! collector, with W3C trace context carried from the ingest request through the broker to every
//! delivery attempt (see `regrelay_producer::trace_context`).
//!
//! Design constraints:
//! - Off unless `otlp_endpoint` is set. Off, no exporter thread runs and no propagator is installed:
//!   no trace headers are written to messages, and the spans only give log lines their context.
//! - The SDK's batch processor exports from its own thread and blocks on each export. reqwest needs
//!   a tokio runtime, so [`OtlpHttpClient`] spawns each request onto the service's runtime and the
//!   export thread waits for it. That reuses the workspace's reqwest (the exporter's own reqwest
//!   feature would pull in a second major version).
//! - Every export is counted by result and timed (`regrelay_trace_exports_total`,
//!   `regrelay_trace_export_seconds`); a failed one is logged. Spans the batch processor drops
//!   because its queue is full (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048) are not a metric: the SDK reports
//!   them only at shutdown. Sample (`trace_sample_ratio`) before that happens.
//! - Sampling is parent-based: a sender's sampled `traceparent` is always followed, and a new trace
//!   is started for `trace_sample_ratio` of the requests that bring none.
//! - Collector credentials come from the standard `OTEL_EXPORTER_OTLP_HEADERS` variable, which the
//!   exporter reads itself; regrelay never logs them.
//! - At exit, [`TraceExport`] is shut down after the service has drained and before the runtime
//!   stops, so the spans of the last deliveries are exported.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tokio::runtime::Handle;

/// Longest the exporter may spend flushing queued spans at exit.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Where and how much to export.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Share of new traces (requests without a sampled parent) that are recorded, 0.0–1.0.
    pub sample_ratio: f64,
    /// Longest one export request may take.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot create the trace export metrics: {0}")]
    Metrics(String),
}

/// The running export pipeline; [`TraceExport::shutdown`] flushes it.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts the exporter and installs the W3C propagator. Call with the runtime the export
    /// requests should run on.
    pub fn start(settings: &TraceSettings, runtime: Handle) -> Result<Self, TraceError> {
        let client = OtlpHttpClient {
            metrics: METRICS
                .as_ref()
                .map_err(|e| TraceError::Metrics(e.clone()))?,
            client: reqwest::Client::builder()
                .timeout(settings.timeout)
                .user_agent(format!("regrelay/{}", env!("CARGO_PKG_VERSION")))
                .build()?,
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(traces_url(&settings.endpoint))
            .with_timeout(settings.timeout)
            .build()?;
        let mut resource = Resource::builder();
        // OTEL_SERVICE_NAME, when set, names the service; the default would be `unknown_service`.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("regrelay");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Self { provider })
    }

    /// The tracer the `tracing` bridge layer records spans with.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("regrelay")
    }

    /// Exports what is queued and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
            tracing::warn!(message = "Trace export did not shut down cleanly.", error = %error);
        }
    }
}

/// `<endpoint>/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read by OpenTelemetry SDKs.
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// The export counters, created once per process and registered by [`register_metrics`].
#[derive(Debug)]
struct ExportMetrics {
    exports: IntCounterVec,
    seconds: Histogram,
}

/// The process's export metrics, created on first use (an error only for an invalid metric name).
static METRICS: LazyLock<Result<ExportMetrics, String>> =
    LazyLock::new(|| ExportMetrics::new().map_err(|error| error.to_string()));

impl ExportMetrics {
    fn new() -> prometheus::Result<Self> {
        let metrics = ExportMetrics {
            exports: IntCounterVec::new(
                Opts::new(
                    "regrelay_trace_exports_total",
                    "Span export requests to the OTLP collector, by result (ok; rejected: a \
                     non-2xx answer; error: no answer).",
                ),
                &["result"],
            )?,
            seconds: Histogram::with_opts(HistogramOpts::new(
                "regrelay_trace_export_seconds",
                "Duration of span export requests to the OTLP collector.",
            ))?,
        };
        for result in ["ok", "rejected", "error"] {
            metrics.exports.with_label_values(&[result]);
        }
        Ok(metrics)
    }
}

/// Registers the trace export metrics (they stay zero while tracing is off).
pub fn register_metrics(registry: &Registry) -> prometheus::Result<()> {
    let metrics = METRICS
        .as_ref()
        .map_err(|error| prometheus::Error::Msg(error.clone()))?;
    registry.register(Box::new(metrics.exports.clone()))?;
    registry.register(Box::new(metrics.seconds.clone()))
}

/// Sends the exporter's requests with the service's reqwest client, on the service's runtime.
#[derive(Debug)]
struct OtlpHttpClient {
    client: reqwest::Client,
    runtime: Handle,
    metrics: &'static ExportMetrics,
}

/// The most of a collector's answer read back (it is a small protobuf status, or an error text).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let started = Instant::now();
        let sent = self
            .runtime
            .spawn(async move {
                let mut response = client.execute(request).await?;
                let status = response.status();
                let headers = std::mem::take(response.headers_mut());
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await;
        let metrics = self.metrics;
        metrics.seconds.observe(started.elapsed().as_secs_f64());
        let (status, headers, body) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                metrics.exports.with_label_values(&["error"]).inc();
                tracing::warn!(message = "Span export failed.", error = %error);
                return Err(Box::new(error));
            }
            Err(join) => {
                metrics.exports.with_label_values(&["error"]).inc();
                tracing::warn!(message = "Span export was cancelled.", error = %join);
                return Err(Box::new(join));
            }
        };
        if status.is_success() {
            metrics.exports.with_label_values(&["ok"]).inc();
        } else {
            metrics.exports.with_label_values(&["rejected"]).inc();
            tracing::warn!(
                message = "The collector refused a span export.",
                status = status.as_u16(),
                answer = %String::from_utf8_lossy(&body[..body.len().min(200)]),
            );
        }
        let mut response = http::Response::builder()
            .status(status)
            .body(Bytes::from(body))?;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }
}
