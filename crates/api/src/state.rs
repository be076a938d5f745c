//! [`AppState`]: what every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use regrelay_history::Database;
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
}

/// Who may use the policy and configuration API.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// HTTP Basic user name, as Harbor's API clients send it.
    pub user: String,
    pub password: SecretString,
    /// An optional bearer token with the same rights.
    pub token: Option<SecretString>,
}

/// Shared, cheaply cloned state of the HTTP application.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes accepted events; also the broker handle `/readyz` probes.
    publisher: EventPublisher,
    /// Policies, settings and history; `/readyz` probes it too.
    db: Database,
    /// Present when this process serves the ingest endpoint.
    ingest: Option<IngestSettings>,
    /// Present when this process serves the policy and configuration API.
    admin: Option<AdminSettings>,
    /// The process's metrics registry, rendered by `/metrics`.
    registry: Registry,
    metrics: ApiMetrics,
}

impl AppState {
    /// State for a process that serves only health and metrics; add the API parts with
    /// [`Self::with_ingest`] and [`Self::with_admin`]. Registers the API's metrics on `registry`.
    pub fn new(
        publisher: EventPublisher,
        db: Database,
        registry: Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = ApiMetrics::register(&registry)?;
        Ok(Self {
            inner: Arc::new(Inner {
                publisher,
                db,
                ingest: None,
                admin: None,
                registry,
                metrics,
            }),
        })
    }

    pub fn with_ingest(self, ingest: IngestSettings) -> Self {
        self.map(|inner| inner.ingest = Some(ingest))
    }

    pub fn with_admin(self, admin: AdminSettings) -> Self {
        self.map(|inner| inner.admin = Some(admin))
    }

    fn map(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                publisher: shared.publisher.clone(),
                db: shared.db.clone(),
                ingest: shared.ingest.clone(),
                admin: shared.admin.clone(),
                registry: shared.registry.clone(),
                metrics: shared.metrics.clone(),
            },
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn publisher(&self) -> &EventPublisher {
        &self.inner.publisher
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    pub fn ingest(&self) -> Option<&IngestSettings> {
        self.inner.ingest.as_ref()
    }

    pub fn admin(&self) -> Option<&AdminSettings> {
        self.inner.admin.as_ref()
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }
}

/// The default request timeout, for tests and callers without configuration.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
