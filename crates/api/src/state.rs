//! [`AppState`]: what every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use regrelay_producer::EventPublisher;
use secrecy::SecretString;

use crate::telemetry::ApiMetrics;

/// Settings of the ingest endpoint.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The bearer token producers must send (`REGRELAY_INGEST_TOKEN`).
    pub token: SecretString,
    /// Largest request body accepted; larger ones get `413`.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered `408`.
    pub request_timeout: Duration,
}

/// Shared, cheaply cloned state of the HTTP application.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes accepted events; also the broker handle `/readyz` probes.
    publisher: EventPublisher,
    ingest: IngestSettings,
    /// The process's metrics registry, rendered by `/metrics`.
    registry: Registry,
    metrics: ApiMetrics,
}

impl AppState {
    /// Builds the state and registers the API's metrics on `registry`.
    pub fn new(
        publisher: EventPublisher,
        ingest: IngestSettings,
        registry: Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = ApiMetrics::register(&registry)?;
        Ok(Self {
            inner: Arc::new(Inner {
                publisher,
                ingest,
                registry,
                metrics,
            }),
        })
    }

    pub fn publisher(&self) -> &EventPublisher {
        &self.inner.publisher
    }

    pub fn ingest(&self) -> &IngestSettings {
        &self.inner.ingest
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.ingest.request_timeout
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }
}
