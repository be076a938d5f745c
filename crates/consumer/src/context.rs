//! [`DeliveryContext`]: the handles both stages borrow, and [`ConsumerSettings`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use regrelay_history::{Database, HistoryRecorder};
use regrelay_producer::{Broker, ConfirmedPublisher, TaskQueue, Topology};
use tokio_util::sync::CancellationToken;

use crate::http_client::HttpClients;
use crate::limiter::TargetLimiter;
use crate::open_circuits::Circuits;
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
    /// How often `regrelay_queue_messages` is refreshed with passive declares; zero turns it off.
    pub queue_depth_interval: Duration,
    /// Deliver to loopback/private/link-local addresses (development and tests only).
    pub allow_private_targets: bool,
    /// The matching stage makes the first attempt of a task itself when the target is fast (see
    /// `matching`), instead of publishing it to the deliveries queue; saves a broker round trip.
    pub direct_first_attempt: bool,
    /// How long a stage holds a message while waiting out a database or broker outage before it
    /// parks it in a delay queue (see `outage`).
    pub outage_hold: Duration,
    /// How long a delivery that was attempted waits for its history record while the database is
    /// unavailable before it is settled without it (counted). Both holds stay well below
    /// RabbitMQ's `consumer_timeout` (30 min).
    pub history_outage_hold: Duration,
    /// Consecutive failed attempts that open a target's circuit (see `circuit`); 0 turns the
    /// breaker off.
    pub breaker_failures: u32,
    /// The first probe of an open circuit comes this long after it opened; each later one twice
    /// as long after the one before, up to `retry_max_delay`.
    pub breaker_probe_interval: Duration,
    /// A target whose circuit stays open this long is disabled (see `circuit`); `None`: never.
    pub auto_disable_after: Option<Duration>,
    /// Bytes of message bodies each stage may hold at once (see `byte_budget`): the prefetch
    /// shrinks when messages are large.
    pub max_in_flight_bytes: usize,
    /// The largest message body a stage may get (ingest's `max_body_bytes` plus a task's own
    /// fields): a stage starts with the prefetch that fits `max_in_flight_bytes` at that size.
    pub largest_message_bytes: usize,
}

/// Project ids kept in memory for system-wide policies' CloudEvents `source`.
pub(crate) const MAX_CACHED_PROJECTS: usize = 10_000;

/// See [`DeliveryContext::fanout_budget`]. Enough for dozens of ordinary events at once.
pub(crate) const FANOUT_BUDGET: usize = 1024;

/// Everything a stage needs, shared by all its tasks.
pub struct DeliveryContext {
    pub topology: Topology,
    /// The connection deliveries are consumed on (separate from publishing: see `BrokerSettings::role`).
    pub consume_broker: Arc<Broker>,
    /// Publishes delivery tasks, retries, parked messages and dead letters, and waits for the
    /// confirms.
    pub queue: TaskQueue,
    pub cache: Arc<PolicyCache>,
    pub db: Database,
    pub clients: HttpClients,
    pub schedule: RetrySchedule,
    pub limiter: TargetLimiter,
    pub settings: ConsumerSettings,
    pub metrics: ConsumerMetrics,
    /// Writes delivery history; `None` when history is turned off (`history_enabled = false`).
    pub history: Option<HistoryRecorder>,
    /// Cancelled when the process stops: no new attempt starts after that, and outage waits end.
    pub shutdown: CancellationToken,
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
    /// The open circuits (see `circuit`).
    pub(crate) circuits: Circuits,
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
        shutdown: CancellationToken,
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
            queue: TaskQueue::new(publisher),
            cache,
            db,
            clients,
            schedule,
            settings,
            metrics,
            history,
            shutdown,
            fanout_budget: tokio::sync::Semaphore::new(FANOUT_BUDGET),
            direct_attempts: tokio::sync::Semaphore::new(direct_attempts),
            project_ids: Mutex::new(HashMap::new()),
            circuits: Circuits::default(),
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
        let mut ids = self
            .project_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded: a registry with very many projects (or a sender inventing names) costs at most
        // this many entries; past it the cache starts again (ids are read back from the store).
        if ids.len() >= MAX_CACHED_PROJECTS {
            ids.clear();
        }
        ids.insert(name.to_owned(), project.id);
        Ok(project.id)
    }
}
