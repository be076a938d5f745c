//! [`DeliveryContext`]: the handles both stages borrow, and [`ConsumerSettings`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::BasicProperties;
use regrelay_history::{Database, HistoryRecorder};
use regrelay_producer::topology::bucket_for;
use regrelay_producer::{Broker, ConfirmedPublisher, OutgoingMessage, PublishError, Topology};
use tokio_util::sync::CancellationToken;

use crate::outage::GaveUp;

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
    /// How long a stage holds a message while waiting out a database or broker outage before it
    /// parks it in a delay queue (see `outage`).
    pub outage_hold: Duration,
    /// How long a delivery that was attempted waits for its history record while the database is
    /// unavailable before it is settled without it (counted). Both holds stay well below
    /// RabbitMQ's `consumer_timeout` (30 min).
    pub history_outage_hold: Duration,
    /// Bytes of message bodies each stage may hold at once (see `byte_budget`): the prefetch
    /// shrinks when messages are large.
    pub max_in_flight_bytes: usize,
    /// The largest message body a stage may get (ingest's `max_body_bytes` plus a task's own
    /// fields): a stage starts with the prefetch that fits `max_in_flight_bytes` at that size.
    pub largest_message_bytes: usize,
}

/// Project ids kept in memory for system-wide policies' CloudEvents `source`.
pub const MAX_CACHED_PROJECTS: usize = 10_000;

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
            publisher,
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

    /// Publishes to the deliveries or dead-letter queue, waiting out an outage for `outage_hold`.
    /// A publish that comes back unroutable (someone deleted the queue) declares the topology
    /// again before the next try, as the retry buckets do.
    pub(crate) async fn publish_patiently<'m>(
        &self,
        what: &'static str,
        build: impl Fn() -> Vec<OutgoingMessage<'m>>,
    ) -> Result<(), GaveUp<PublishError>> {
        let build = &build;
        self.patiently(what, self.settings.outage_hold, || async move {
            let result = self.publisher.publish(build()).await;
            if let Err(PublishError::Returned { .. }) = &result {
                if let Err(error) = self.publisher.broker().redeclare_topology().await {
                    tracing::warn!(message = "Cannot declare the topology again.", error = %error);
                }
            }
            result.map(|_| ())
        })
        .await
    }

    /// Publishes one message to the retry bucket for `delay` (rounded up) and waits for the
    /// confirm; returns the bucket. Buckets are declared on first use; if someone deleted one
    /// since, the publish comes back unroutable and one re-declaration fixes it.
    pub(crate) async fn publish_to_retry_bucket(
        &self,
        delay: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Duration, PublishError> {
        let bucket = bucket_for(delay);
        let queue = self.topology.retry_queue(bucket);
        for attempt in 0..2 {
            if !self.bucket_declared(bucket) {
                let channel = self.publisher.broker().open_channel().await?;
                let declared = self.topology.declare_retry_queue(&channel, bucket).await;
                let _ = channel.close(200, "declared".into()).await;
                declared?;
                self.set_bucket_declared(bucket, true);
            }
            let result = self
                .publisher
                .publish(vec![OutgoingMessage {
                    exchange: "",
                    routing_key: &queue,
                    body,
                    properties: properties.clone(),
                }])
                .await;
            match result {
                Err(PublishError::Returned { .. }) if attempt == 0 => {
                    self.set_bucket_declared(bucket, false);
                }
                other => return other.map(|_| bucket),
            }
        }
        Ok(bucket)
    }
}
