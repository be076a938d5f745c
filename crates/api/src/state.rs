//! [`AppState`]: what every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use prometheus::Registry;
use regrelay_dead_letters::{DeadLetterMetrics, DeadLetterQueue};
use regrelay_history::Database;
use regrelay_producer::EventPublisher;
use secrecy::SecretString;

use crate::policy_generation::PolicyGenerationStamp;
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

/// How test deliveries (`POST .../webhook/policies/{id}/test`) reach receivers: the same HTTP
/// clients and SSRF rule as the consumer's deliveries.
#[derive(Clone)]
pub struct TestDeliverySettings {
    pub clients: regrelay_consumer::HttpClients,
    pub allow_private_targets: bool,
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
    /// Present when this process can make test deliveries.
    test_delivery: Option<TestDeliverySettings>,
    /// Operator access to the dead letters (`/api/v1/dead-letters`), over the publisher's broker.
    dead_letters: DeadLetterQueue,
    /// The process's metrics registry, rendered by `/metrics`.
    registry: Registry,
    metrics: ApiMetrics,
    /// The policy generation ingest stamps on events (shared by clones of the state).
    policy_generation: Arc<PolicyGenerationStamp>,
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
        let policy_generation = Arc::new(PolicyGenerationStamp::new(db.clone(), &registry)?);
        let dead_letters = DeadLetterQueue::new(
            regrelay_producer::ConfirmedPublisher::new(
                publisher.broker().clone(),
                DEAD_LETTER_CONFIRM_TIMEOUT,
            ),
            DeadLetterMetrics::register(&registry)?,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                publisher,
                db,
                ingest: None,
                admin: None,
                test_delivery: None,
                dead_letters,
                registry,
                metrics,
                policy_generation,
            }),
        })
    }

    pub fn with_ingest(self, ingest: IngestSettings) -> Self {
        self.map(|inner| inner.ingest = Some(ingest))
    }

    pub fn with_admin(self, admin: AdminSettings) -> Self {
        self.map(|inner| inner.admin = Some(admin))
    }

    pub fn with_test_delivery(self, settings: TestDeliverySettings) -> Self {
        self.map(|inner| inner.test_delivery = Some(settings))
    }

    fn map(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                publisher: shared.publisher.clone(),
                db: shared.db.clone(),
                ingest: shared.ingest.clone(),
                admin: shared.admin.clone(),
                test_delivery: shared.test_delivery.clone(),
                dead_letters: shared.dead_letters.clone(),
                registry: shared.registry.clone(),
                metrics: shared.metrics.clone(),
                policy_generation: shared.policy_generation.clone(),
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

    pub fn test_delivery(&self) -> Option<&TestDeliverySettings> {
        self.inner.test_delivery.as_ref()
    }

    /// Replaces the dead-letter access built by [`Self::new`] (e.g. to share its metrics with a
    /// depth monitor, or to set another confirm timeout or scan limit).
    pub fn with_dead_letters(self, dead_letters: DeadLetterQueue) -> Self {
        self.map(|inner| inner.dead_letters = dead_letters)
    }

    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.inner.dead_letters
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }

    pub fn policy_generation(&self) -> &PolicyGenerationStamp {
        &self.inner.policy_generation
    }
}

/// What the metrics layer takes from the state (`telemetry::track_http`).
impl FromRef<AppState> for ApiMetrics {
    fn from_ref(state: &AppState) -> Self {
        state.inner.metrics.clone()
    }
}

/// What `/metrics` renders (`telemetry::metrics`).
impl FromRef<AppState> for Registry {
    fn from_ref(state: &AppState) -> Self {
        state.inner.registry.clone()
    }
}

/// How long a dead-letter replay waits for the broker's confirm of the replayed task.
pub const DEAD_LETTER_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The default request timeout, for tests and callers without configuration.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
