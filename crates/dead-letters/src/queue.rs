//! [`DeadLetterQueue`]: inspect, replay and purge what waits on `<prefix>.dead-letter`, without
//! losing anything on the way.
//!
//! Design constraints:
//! - The queue stays the source of truth: there is no copy elsewhere, and a dead letter leaves the
//!   queue only once its outcome is durable. A replay publishes the task to `<prefix>.deliveries`,
//!   waits for the broker's confirm, and only then acks the dead letter; a purge acks on purpose.
//! - Browsing takes messages with `basic_get` (no auto-ack) on a channel of its own and *holds* them
//!   until the operation ends, so one scan never sees a message twice and never loses one. At the end
//!   every message not acted on is released with `basic.nack(requeue)`, one by one. Not
//!   `basic.reject` and not a channel close: from RabbitMQ 4.3 on, those count as failed deliveries
//!   against a quorum queue's delivery limit, a nack does not.
//! - If an operation is cut short (an error, a dropped future such as a timed-out HTTP request, the
//!   broker closing the channel), the channel goes away and RabbitMQ returns every message it held.
//! - Caveats, for the operator's docs (docs/dead-letters.md): while a scan holds messages, nobody
//!   else sees them (another scan, the management UI's "Get messages"); two concurrent scans each see
//!   part of the queue; released messages may come back in a different order; one scan reads at most
//!   `scan_limit` messages. On RabbitMQ 4.0–4.2 every release (nack included) counts against a
//!   quorum queue's default delivery limit of 20, after which the broker drops the message: there,
//!   set the dead-letter queue's `delivery-limit` to unlimited with a policy.
//! - A replay is at-least-once: if the dead letter's ack is lost after the replayed task was
//!   confirmed, the dead letter comes back and may be replayed again. The replay keeps the delivery
//!   id, so receivers drop the duplicate by its `webhook-id`.
//! - Nothing here adds a secret: dead letters were redacted when they were written, and target
//!   addresses are redacted once more on the way out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use regrelay_producer::task::now_ms;
use regrelay_producer::{
    trace_context, Broker, ConfirmedPublisher, DeliveryTask, TaskQueue, Topology, Trigger,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::error::DeadLetterError;
use crate::filter::{DeadLetterFilter, ReplaySelection};
use crate::metrics::DeadLetterMetrics;
use crate::scan::{remove_replayed, Held, Scan, Stored};
use crate::view::{DeadLetter, DeadLetterSummary, ReplayReport};

pub const DEFAULT_SCAN_LIMIT: usize = 10_000;

/// Operator access to the dead-letter queue. Cloning shares the broker and the metrics.
#[derive(Clone)]
pub struct DeadLetterQueue {
    /// Where scan channels are opened (a channel of their own, never a pooled publishing channel:
    /// a scan holds messages until it ends).
    broker: Arc<Broker>,
    /// Publishes replayed tasks and events and waits for the confirms.
    queue: Arc<TaskQueue>,
    /// The names of the queues (`<prefix>.dead-letter`, `<prefix>.deliveries`).
    topology: Topology,
    metrics: DeadLetterMetrics,
    /// Upper bound of messages one operation takes (and holds) from the queue.
    scan_limit: usize,
}

impl DeadLetterQueue {
    /// Operator access over `publisher`'s broker and topology.
    pub fn new(publisher: ConfirmedPublisher, metrics: DeadLetterMetrics) -> Self {
        let broker = publisher.broker().clone();
        let topology = broker.topology().clone();
        Self {
            broker,
            queue: Arc::new(TaskQueue::new(publisher)),
            topology,
            metrics,
            scan_limit: DEFAULT_SCAN_LIMIT,
        }
    }

    /// Sets how many messages one operation may take from the queue (at least 1).
    pub fn with_scan_limit(mut self, scan_limit: usize) -> Self {
        self.scan_limit = scan_limit.max(1);
        self
    }

    pub fn metrics(&self) -> &DeadLetterMetrics {
        &self.metrics
    }

    pub fn queue_name(&self) -> String {
        self.topology.dead_letter_queue()
    }

    /// Up to `limit` dead letters that match `filter`, in queue order.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterSummary>, DeadLetterError> {
        let now = Utc::now();
        let mut matched = 0;
        let scan = self
            .scan(|held| {
                if filter.matches(&held.letter.summary, now) {
                    matched += 1;
                }
                matched >= limit
            })
            .await?;
        let found = scan
            .held
            .iter()
            .filter(|held| filter.matches(&held.letter.summary, now))
            .take(limit)
            .map(|held| held.letter.summary.clone())
            .collect();
        scan.release().await;
        Ok(found)
    }

    /// The dead letter `id`, with its whole body, headers and properties.
    pub async fn show(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let scan = self.scan(|held| held.letter.summary.id == id).await?;
        let found = scan
            .held
            .iter()
            .find(|held| held.letter.summary.id == id)
            .map(|held| held.letter.clone());
        scan.release().await;
        Ok(found)
    }

    /// Replays the selected dead letters: each task goes back to `<prefix>.deliveries` as a new
    /// execution (trigger `RETRY`, attempts from 0, a fresh history key, the same delivery id), and
    /// the dead letter is acked only once the broker confirmed the task. Poison messages cannot be
    /// replayed; they are reported in `failed` and stay.
    pub async fn replay(
        &self,
        selection: &ReplaySelection,
    ) -> Result<ReplayReport, DeadLetterError> {
        let now = Utc::now();
        let wanted: Option<HashSet<Uuid>> = match selection {
            ReplaySelection::Ids(ids) => Some(ids.iter().copied().collect()),
            ReplaySelection::All(_) => None,
        };
        let selected = |letter: &DeadLetterSummary| match selection {
            ReplaySelection::Ids(_) => wanted.as_ref().is_some_and(|w| w.contains(&letter.id)),
            ReplaySelection::All(filter) => filter.matches(letter, now),
        };
        let mut seen = HashSet::new();
        let mut scan = self
            .scan(|held| {
                let Some(wanted) = &wanted else {
                    return false;
                };
                if wanted.contains(&held.letter.summary.id) {
                    seen.insert(held.letter.summary.id);
                }
                // Selected by id: stop as soon as every id was found.
                seen.len() == wanted.len()
            })
            .await?;

        // Copies of one delivery (dead-lettered twice) are replayed once: group them by id, in
        // queue order.
        let mut order: Vec<Uuid> = Vec::new();
        let mut copies: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (index, held) in scan.held.iter().enumerate() {
            if selected(&held.letter.summary) {
                let id = held.letter.summary.id;
                copies.entry(id).or_default().push(index);
                if copies[&id].len() == 1 {
                    order.push(id);
                }
            }
        }

        let mut report = ReplayReport::default();
        if let ReplaySelection::Ids(ids) = selection {
            let mut reported = HashSet::new();
            report.not_found = ids
                .iter()
                .filter(|id| !copies.contains_key(id) && reported.insert(**id))
                .copied()
                .collect();
        }
        let mut scan_lost = false;
        for id in order {
            let indexes = &copies[&id];
            // The held dead letters can only be removed on the scan's channel. Once it is gone
            // (the broker connection dropped), every further replay would be published while its
            // dead letter returns to the queue: a duplicate for the next replay. Stop instead.
            if scan_lost || !scan.channel.status().connected() {
                scan_lost = true;
                self.metrics.replays.with_label_values(&["failed"]).inc();
                report.failed.push((
                    id,
                    "not replayed: the connection holding the dead letters was lost; it stays on the queue, run the replay again".to_owned(),
                ));
                continue;
            }
            match self.replay_one(&mut scan, indexes).await {
                Ok(()) => {
                    self.metrics.replays.with_label_values(&["replayed"]).inc();
                    report.replayed.push(id);
                }
                Err(reason) => {
                    self.metrics.replays.with_label_values(&["failed"]).inc();
                    tracing::warn!(message = "Dead letter not replayed.", dead_letter_id = %id, reason = %reason);
                    report.failed.push((id, reason));
                }
            }
        }
        scan.release().await;
        tracing::info!(
            message = "Dead letters replayed.",
            replayed = report.replayed.len(),
            not_found = report.not_found.len(),
            failed = report.failed.len(),
        );
        Ok(report)
    }

    /// Acks (deletes) every dead letter that matches `filter`, up to the scan limit; returns how many.
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DeadLetterError> {
        let now = Utc::now();
        let mut scan = self.scan(|_| false).await?;
        let mut purged = 0;
        let mut failure = None;
        for held in scan.held.iter_mut() {
            if !filter.matches(&held.letter.summary, now) {
                continue;
            }
            match held.delivery.ack(BasicAckOptions::default()).await {
                Ok(_) => {
                    held.settled = true;
                    purged += 1;
                }
                // The channel is gone: whatever was not acked is back on the queue.
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        scan.release().await;
        self.metrics.purged.inc_by(purged as u64);
        tracing::info!(message = "Dead letters purged.", purged, filter = ?filter);
        match failure {
            Some(error) if purged == 0 => Err(error.into()),
            Some(error) => {
                tracing::warn!(message = "Purge stopped early.", purged, error = %error);
                Ok(purged)
            }
            None => Ok(purged),
        }
    }

    /// Messages ready on the dead-letter queue (not counting those held by a scan), read with a
    /// passive declare; also sets `regrelay_dead_letter_queue_depth`.
    pub async fn depth(&self) -> Result<u32, DeadLetterError> {
        let channel = self.broker.open_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(
                self.topology.dead_letter_queue().as_str().into(),
                options,
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "depth read".into()).await;
        let depth = declared?.message_count();
        self.metrics.depth.set(i64::from(depth));
        Ok(depth)
    }

    /// Refreshes `regrelay_dead_letter_queue_depth` every `interval` until `shutdown`.
    pub async fn monitor_depth(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.depth().await {
                // The broker's own reconnect logic already warns; once per interval here is enough.
                tracing::debug!(message = "Cannot read the dead-letter queue depth.", error = %error);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Publishes the replay of the dead letter held at `indexes[0]`, then acks every copy.
    async fn replay_one(&self, scan: &mut Scan, indexes: &[usize]) -> Result<(), String> {
        let first = &scan.held[indexes[0]];
        let id = first.letter.summary.id;
        let task = match &first.task {
            Stored::Task(task) => task,
            Stored::Event => return self.replay_event(scan, indexes).await,
            Stored::Poison => {
                return Err("poison message: it holds no delivery task to replay; inspect it with `regrelay dlq show`, then purge it".to_owned())
            }
            Stored::Unreadable(error) => {
                return Err(format!("cannot read the delivery task: {error}"));
            }
        };
        let event_type = match task.registry_event() {
            Ok(event) => event.event_type().as_str().to_owned(),
            Err(error) => return Err(format!("the task's event is unreadable: {error}")),
        };
        let task = replay_task(task);
        let message = task
            .to_message(&event_type)
            .map_err(|e| format!("cannot encode the task: {e}"))?;
        // The replay continues the trace the delivery was dead-lettered in (when this process
        // exports traces), so the whole story of a delivery stays in one trace.
        let span = tracing::debug_span!("replay_dead_letter", delivery_id = %id);
        let _ = span.set_parent(trace_context::extract(&first.delivery.properties));
        self.queue
            .publish_tasks(&[&message])
            .instrument(span)
            .await
            .map_err(|e| format!("cannot publish the replay: {e}"))?;
        // Confirmed: the replay is durable, the dead letter (and any copy of it) may go.
        remove_replayed(
            scan,
            indexes,
            "a second replay would deliver a duplicate with the same webhook-id",
        )
        .await?;
        tracing::info!(
            message = "Dead letter replayed.",
            dead_letter_id = %id,
            delivery_id = %task.delivery_id,
            history_key = ?task.history_key,
            policy_id = task.policy_id,
            event_type = %event_type,
        );
        Ok(())
    }

    /// Replays an event message RabbitMQ dead-lettered from the events queue: the same body and
    /// properties (its id, headers, trace) back onto `<prefix>.events`, then the dead letter is
    /// acked. The matching stage fans it out again (same delivery ids).
    async fn replay_event(&self, scan: &mut Scan, indexes: &[usize]) -> Result<(), String> {
        let first = &scan.held[indexes[0]];
        let id = first.letter.summary.id;
        let mut properties = first.delivery.properties.clone();
        if let Some(headers) = properties.headers().clone() {
            let mut kept = FieldTable::default();
            for (key, value) in headers.inner() {
                if !key.as_str().starts_with("x-death")
                    && !key.as_str().starts_with("x-first-death")
                    && !key.as_str().starts_with("x-last-death")
                {
                    kept.insert(key.clone(), value.clone());
                }
            }
            properties = properties.with_headers(kept);
        }
        self.queue
            .replay_event(&first.delivery.data, properties)
            .await
            .map_err(|e| format!("cannot publish the replay: {e}"))?;
        remove_replayed(scan, indexes, "a second replay would match the event again").await?;
        tracing::info!(message = "Dead-lettered event replayed.", event_id = %id);
        Ok(())
    }

    /// Takes messages from the queue, holding each, until the queue is empty, the scan limit is
    /// reached, or `stop` (called with each newly held message) says so.
    async fn scan(&self, mut stop: impl FnMut(&Held) -> bool) -> Result<Scan, DeadLetterError> {
        let queue = self.topology.dead_letter_queue();
        let channel = self.broker.open_channel().await?;
        let mut scan = Scan {
            channel,
            held: Vec::new(),
            released: false,
        };
        while scan.held.len() < self.scan_limit {
            let got = scan
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?;
            let Some(message) = got else { break };
            let held = Held::read(&self.topology, message.delivery);
            let done = stop(&held);
            scan.held.push(held);
            if done {
                break;
            }
        }
        if scan.held.len() >= self.scan_limit {
            tracing::warn!(
                message =
                    "Dead-letter scan stopped at its limit; later messages were not looked at.",
                scan_limit = self.scan_limit,
            );
        }
        Ok(scan)
    }
}

/// Runs [`DeadLetterQueue::monitor_depth`] on its own task.
pub fn spawn_depth_monitor(
    queue: DeadLetterQueue,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(queue.monitor_depth(interval, shutdown))
}

/// The task a replay publishes: a new execution of the same delivery.
fn replay_task(task: &DeliveryTask) -> DeliveryTask {
    let mut task = task.clone();
    task.attempts = 0;
    task.deferrals = 0;
    task.last_status = None;
    task.last_error = None;
    task.rate_slot_ms = None;
    task.trigger = Trigger::Retry;
    // A new history record (trigger RETRY), while the delivery id, which receivers dedupe on, stays.
    task.history_key = Some(Uuid::new_v4());
    task.enqueued_at_ms = now_ms();
    task
}
