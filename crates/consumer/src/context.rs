//! [`DeliveryContext`]: the handles both stages borrow, and [`ConsumerSettings`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use regrelay_history::{Database, HistoryRecorder};
use regrelay_producer::{Broker, ConfirmedPublisher, Topology};

use crate::http_client::HttpClients;
use crate::limiter::TargetLimiter;
use crate::policy_cache::PolicyCache;
use crate::retry::RetrySchedule;
use crate::telemetry::ConsumerMetrics;

/// The consumer's tunables (from the `REGRELAY_*` configuration).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Events the matching stage holds unacked at once (AMQP prefetch).
    pub matching_prefetch: u16,
    /// Delivery tasks the delivery stage holds unacked at once (AMQP prefetch): the bound on
    /// concurrent deliveries per consumer process.
    pub delivery_prefetch: u16,
    /// Attempts one target may have in flight at once.
    pub per_target_concurrency: usize,
    /// Tasks that may wait for one busy target before further ones are deferred.
    pub max_waiting_per_target: usize,
    /// How long a deferred task waits before it is tried again (rounded up to a retry bucket).
    pub deferral_delay: Duration,
    /// How often the policy cache checks the store for changes.
    pub policy_refresh_interval: Duration,
    /// Deliver to loopback/private/link-local addresses (development and tests only).
    pub allow_private_targets: bool,
    /// The matching stage makes the first attempt of a task itself when the target is fast (see
    /// `matching`), instead of publishing it to the deliveries queue; saves a broker round trip.
    pub direct_first_attempt: bool,
}

/// See [`DeliveryContext::fanout_budget`]. Enough for dozens of ordinary events at once.
pub const FANOUT_BUDGET: usize = 1024;

/// Everything a stage needs, shared by all its tasks.
pub struct DeliveryContext {
    pub topology: Topology,
    /// The connection deliveries are consumed on (separate from publishing: see `BrokerSettings::role`).
    pub consume_broker: Arc<Broker>,
    /// Publishes delivery tasks, retries and dead letters, and waits for the confirms.
    pub publisher: ConfirmedPublisher,
    pub cache: Arc<PolicyCache>,
    pub db: Database,
    pub clients: HttpClients,
    pub schedule: RetrySchedule,
    pub limiter: TargetLimiter,
    pub settings: ConsumerSettings,
    pub metrics: ConsumerMetrics,
    /// Writes delivery history; `None` when history is turned off (`history_enabled = false`).
    pub history: Option<HistoryRecorder>,
    /// Delivery tasks the matching stage may be building and publishing at once, across all its
    /// events. The prefetch bounds events, not tasks: at fan-out 100, 64 events in flight are 6400
    /// tasks with their bodies and history records, which is what peak memory tracked.
    pub fanout_budget: tokio::sync::Semaphore,
    /// Direct first attempts the matching stage may have in flight at once (`delivery_prefetch`,
    /// the delivery stage's own bound). Each attempt may hold an HTTP connection and its buffers:
    /// without this bound, fan-out 100 ran 1024 attempts at once and the consumer's RSS passed
    /// 64 MiB.
    pub direct_attempts: tokio::sync::Semaphore,
    /// Project ids by name, for the CloudEvents `source` of system-wide policies; ids never change.
    project_ids: Mutex<HashMap<String, i64>>,
    /// Retry buckets already declared by this process.
    declared_buckets: Mutex<HashSet<Duration>>,
}

impl DeliveryContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topology: Topology,
        consume_broker: Arc<Broker>,
        publisher: ConfirmedPublisher,
        cache: Arc<PolicyCache>,
        db: Database,
        clients: HttpClients,
        schedule: RetrySchedule,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        history: Option<HistoryRecorder>,
    ) -> Self {
        let direct_attempts = usize::from(settings.delivery_prefetch.max(1));
        Self {
            limiter: TargetLimiter::new(
                settings.per_target_concurrency,
                settings.max_waiting_per_target,
                settings.deferral_delay,
            ),
            topology,
            consume_broker,
            publisher,
            cache,
            db,
            clients,
            schedule,
            settings,
            metrics,
            history,
            fanout_budget: tokio::sync::Semaphore::new(FANOUT_BUDGET),
            direct_attempts: tokio::sync::Semaphore::new(direct_attempts),
            project_ids: Mutex::new(HashMap::new()),
            declared_buckets: Mutex::new(HashSet::new()),
        }
    }

    /// The stable id of a project, creating the project on first sight.
    pub async fn project_id(&self, name: &str) -> Result<i64, regrelay_history::StoreError> {
        if let Some(id) = self
            .project_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(*id);
        }
        let project = self.db.ensure_project(name).await?;
        self.project_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), project.id);
        Ok(project.id)
    }

    pub(crate) fn bucket_declared(&self, bucket: Duration) -> bool {
        self.declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&bucket)
    }

    pub(crate) fn set_bucket_declared(&self, bucket: Duration, declared: bool) {
        let mut buckets = self
            .declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if declared {
            buckets.insert(bucket);
        } else {
            buckets.remove(&bucket);
        }
    }
}
