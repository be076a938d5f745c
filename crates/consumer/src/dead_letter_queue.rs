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

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use regrelay_history::policy::TargetKind;
use regrelay_producer::{
    trace_context, Broker, BrokerError, ConfirmedPublisher, EventMessage, OutgoingMessage, Topology,
};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::dead_letter::{redact_address, SCHEMA};
use crate::task::{now_ms, DeliveryTask, Trigger};

/// How many messages one operation reads at most, unless set with [`DeadLetterQueue::with_scan_limit`].
pub const DEFAULT_SCAN_LIMIT: usize = 10_000;

/// Operator access to the dead-letter queue. Cloning shares the broker and the metrics.
#[derive(Clone)]
pub struct DeadLetterQueue {
    /// Where scan channels are opened (a channel of their own, never a pooled publishing channel:
    /// a scan holds messages until it ends).
    broker: Arc<Broker>,
    /// Publishes replayed tasks and waits for the confirms.
    publisher: ConfirmedPublisher,
    /// The names of the queues (`<prefix>.dead-letter`, `<prefix>.deliveries`).
    topology: Topology,
    metrics: DeadLetterMetrics,
    /// Upper bound of messages one operation takes (and holds) from the queue.
    scan_limit: usize,
}

/// Which dead letters an operation applies to. Every field that is set must match; an empty filter
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The event's project (namespace), exactly.
    pub project: Option<String>,
    /// The policy's id.
    pub policy_id: Option<i64>,
    /// The event type, e.g. `PUSH_ARTIFACT` (case-insensitive).
    pub event_type: Option<String>,
    /// The dead-letter reason, e.g. `attempts_exhausted`, `client_error`, `poison`.
    pub reason: Option<String>,
    /// Dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    pub newer_than: Option<Duration>,
}

/// One dead letter in a listing: what an operator needs to decide what to do with it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    /// The dead letter's id: the delivery id (`webhook-id`) for deliveries; what `show` and
    /// `replay` take.
    pub id: Uuid,
    pub reason: String,
    pub detail: String,
    /// RFC 3339, as written when the message was dead-lettered.
    pub dead_lettered_at: String,
    /// Seconds since `dead_lettered_at`, when it could be read.
    pub age_seconds: Option<u64>,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub event_type: Option<String>,
    pub project: Option<String>,
    pub policy: Option<PolicyRef>,
    pub target: Option<TargetRef>,
    /// Whether it carries a delivery task, so `replay` can resume it (poison messages do not).
    pub replayable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRef {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    /// The policy's project; `None` for a system-wide policy.
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRef {
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Redacted: no credentials, no query values, no Slack path.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub payload_format: String,
}

/// Everything known about one dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The whole body (`dead-letter.v1`), as JSON; the text of the body if it is not JSON.
    pub body: Value,
    /// The AMQP headers (`x-regrelay-*`).
    pub headers: Map<String, Value>,
    /// Where the message sits and its AMQP properties.
    pub message: MessageInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageInfo {
    pub queue: String,
    /// How it was published: exchange (empty: the default exchange) and routing key.
    pub exchange: String,
    pub routing_key: String,
    /// Whether the broker delivered it before (a previous scan, a consumer that went away).
    pub redelivered: bool,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub app_id: Option<String>,
    /// Publication time, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    pub size_bytes: usize,
}

/// What to replay.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    /// These dead letters, by id.
    Ids(Vec<Uuid>),
    /// Every dead letter that matches (up to the scan limit).
    All(DeadLetterFilter),
}

/// What a replay did. Serialised as `{"replayed": [id], "not_found": [id], "failed": [{"id", "reason"}]}`.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Replayed: the task is confirmed on `<prefix>.deliveries` and the dead letter is gone.
    pub replayed: Vec<Uuid>,
    /// Asked for by id, but not on the queue (or not within the scan limit).
    pub not_found: Vec<Uuid>,
    /// Not replayed (or not removed), with why; these stay on the queue.
    pub failed: Vec<(Uuid, String)>,
}

impl ReplayReport {
    /// True when everything asked for was replayed.
    pub fn is_complete(&self) -> bool {
        self.not_found.is_empty() && self.failed.is_empty()
    }
}

impl Serialize for ReplayReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Failed<'a> {
            id: &'a Uuid,
            reason: &'a str,
        }
        #[derive(Serialize)]
        struct Shape<'a> {
            replayed: &'a [Uuid],
            not_found: &'a [Uuid],
            failed: Vec<Failed<'a>>,
        }
        Shape {
            replayed: &self.replayed,
            not_found: &self.not_found,
            failed: self
                .failed
                .iter()
                .map(|(id, reason)| Failed { id, reason })
                .collect(),
        }
        .serialize(serializer)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    #[error("broker operation on the dead-letter queue failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("invalid dead-letter id {0:?}: expected a UUID")]
    InvalidId(String),
    #[error("invalid duration {text:?}: {message} (examples: 90s, 10m, 1h30m, 2d)")]
    InvalidDuration { text: String, message: &'static str },
}

impl DeadLetterError {
    /// The broker is down or the connection failed: try again later (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DeadLetterError::Unavailable(_) | DeadLetterError::Amqp(_)
        )
    }
}

/// Metrics of operator actions on the dead-letter queue, registered once per process.
#[derive(Clone)]
pub struct DeadLetterMetrics {
    /// `regrelay_dead_letter_replays_total{outcome}`: dead letters replayed (`replayed`) or not
    /// (`failed`).
    pub replays: IntCounterVec,
    /// `regrelay_dead_letters_purged_total`.
    pub purged: IntCounter,
    /// `regrelay_dead_letter_queue_depth`: messages ready on the dead-letter queue, as last read.
    pub depth: IntGauge,
}

impl DeadLetterMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let replays = IntCounterVec::new(
            Opts::new(
                "regrelay_dead_letter_replays_total",
                "Dead letters an operator replayed, by outcome (replayed, failed).",
            ),
            &["outcome"],
        )?;
        let purged = IntCounter::new(
            "regrelay_dead_letters_purged_total",
            "Dead letters an operator purged.",
        )?;
        let depth = IntGauge::new(
            "regrelay_dead_letter_queue_depth",
            "Messages ready on the dead-letter queue, as last read.",
        )?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(purged.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        for outcome in ["replayed", "failed"] {
            replays.with_label_values(&[outcome]);
        }
        Ok(Self {
            replays,
            purged,
            depth,
        })
    }
}

impl DeadLetterFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `letter` matches, its age taken at `now`.
    pub fn matches(&self, letter: &DeadLetterSummary, now: DateTime<Utc>) -> bool {
        let same = |wanted: &Option<String>, actual: &Option<String>| match wanted {
            None => true,
            Some(wanted) => actual.as_deref() == Some(wanted.as_str()),
        };
        if !same(&self.project, &letter.project) {
            return false;
        }
        if let Some(policy_id) = self.policy_id {
            if letter.policy.as_ref().map(|p| p.id) != Some(policy_id) {
                return false;
            }
        }
        if let Some(event_type) = &self.event_type {
            if !letter
                .event_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(event_type))
            {
                return false;
            }
        }
        if self.reason.as_ref().is_some_and(|r| *r != letter.reason) {
            return false;
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            // A dead letter whose time cannot be read matches no age filter.
            let Some(age) = age_at(&letter.dead_lettered_at, now) else {
                return false;
            };
            if self.older_than.is_some_and(|min| age < min) {
                return false;
            }
            if self.newer_than.is_some_and(|max| age > max) {
                return false;
            }
        }
        true
    }
}

impl DeadLetterQueue {
    /// Operator access over `publisher`'s broker and topology.
    pub fn new(publisher: ConfirmedPublisher, metrics: DeadLetterMetrics) -> Self {
        let broker = publisher.broker().clone();
        let topology = broker.topology().clone();
        Self {
            broker,
            publisher,
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
        let body = task
            .encode()
            .map_err(|e| format!("cannot encode the task: {e}"))?;
        let queue = self.topology.deliveries_queue();
        // The replay continues the trace the delivery was dead-lettered in (when this process
        // exports traces), so the whole story of a delivery stays in one trace.
        let span = tracing::debug_span!("replay_dead_letter", delivery_id = %id);
        let _ = span.set_parent(trace_context::extract(&first.delivery.properties));
        self.publisher
            .publish(vec![OutgoingMessage {
                exchange: "",
                routing_key: &queue,
                body: &body,
                properties: task.properties(&event_type),
            }])
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
        let queue = self.topology.events_queue();
        self.publisher
            .publish(vec![OutgoingMessage {
                exchange: "",
                routing_key: &queue,
                body: &first.delivery.data,
                properties,
            }])
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
    task.trigger = Trigger::Retry;
    // A new history record (trigger RETRY), while the delivery id, which receivers dedupe on, stays.
    task.history_key = Some(Uuid::new_v4());
    task.enqueued_at_ms = now_ms();
    task
}

/// Parses dead-letter ids given as text.
pub fn parse_ids<S: AsRef<str>>(ids: &[S]) -> Result<Vec<Uuid>, DeadLetterError> {
    ids.iter()
        .map(|id| {
            let id = id.as_ref().trim();
            Uuid::parse_str(id).map_err(|_| DeadLetterError::InvalidId(id.to_owned()))
        })
        .collect()
}

/// Parses an age such as `90s`, `10m`, `1h30m`, `2d`, `1w`, `500ms`, or a number of seconds.
pub fn parse_age(text: &str) -> Result<Duration, DeadLetterError> {
    let invalid = |message| DeadLetterError::InvalidDuration {
        text: text.to_owned(),
        message,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    // The configuration's own duration syntax (humantime): `90s`, `1h30m`, `1h 30m`, `2days`.
    humantime::parse_duration(trimmed).map_err(|error| DeadLetterError::InvalidDuration {
        text: text.to_owned(),
        message: match error {
            humantime::DurationError::UnknownUnit { .. } => {
                "unknown unit; use ms, s, m, h, d or w (e.g. 1h 30m)"
            }
            humantime::DurationError::NumberOverflow => "too long",
            _ => "expected a duration such as 90s, 10m or 1h 30m",
        },
    })
}

/// The time since `dead_lettered_at` (RFC 3339) at `now`.
fn age_at(dead_lettered_at: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = DateTime::parse_from_rfc3339(dead_lettered_at).ok()?;
    (now - at.with_timezone(&Utc))
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// Messages taken from the queue and held (unacked) by one operation.
struct Scan {
    channel: Channel,
    held: Vec<Held>,
    /// Set by [`Scan::release`]; a scan dropped without it closes its channel, which returns
    /// everything it held.
    released: bool,
}

/// One held message.
struct Held {
    delivery: Delivery,
    letter: DeadLetter,
    task: Stored,
    /// Acked (replayed or purged): not to be released.
    settled: bool,
}

/// What a dead letter carries for replay.
enum Stored {
    Task(Box<DeliveryTask>),
    /// An event message RabbitMQ itself dead-lettered from `<prefix>.events` (its delivery limit
    /// was reached): replayed by publishing it to the events queue again, unchanged.
    Event,
    /// A message that was never a task (poison).
    Poison,
    /// A body or task this version cannot read.
    Unreadable(String),
}

impl Scan {
    /// Puts every message not acted on back on the queue, then closes the channel.
    async fn release(mut self) {
        for held in self.held.iter().filter(|held| !held.settled) {
            let nack = held.delivery.nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            });
            if let Err(error) = nack.await {
                // The channel is gone, and with it every message it held went back to the queue.
                tracing::debug!(message = "Cannot release a dead letter; the channel is gone.", error = %error);
                break;
            }
        }
        let _ = self
            .channel
            .close(200, "dead-letter scan done".into())
            .await;
        self.released = true;
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Cut short (an error or a dropped future): closing the channel returns what it held.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                let _ = channel
                    .close(200, "dead-letter scan abandoned".into())
                    .await;
            });
        }
    }
}

/// The body's fields this module reads; everything else is shown as it is.
#[derive(Deserialize)]
struct Body {
    schema: String,
    id: Option<Uuid>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    dead_lettered_at: String,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    last_status: Option<u16>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    policy: Option<PolicyRef>,
    #[serde(default)]
    target: Option<TargetRef>,
    #[serde(default)]
    task: Option<Box<RawValue>>,
}

/// Namespace of the ids of messages that carry none (a fixed random UUID): the same message gets
/// the same id on every scan.
const UNREADABLE_NAMESPACE: Uuid = Uuid::from_u128(0x8c1f_2b7e_54a9_4d63_a0e2_7f19_c3d8_6b45);

impl Held {
    fn read(topology: &Topology, delivery: Delivery) -> Self {
        let queue = topology.dead_letter_queue();
        let queue = queue.as_str();
        let properties = &delivery.properties;
        let message_id = properties.message_id().as_ref().map(|s| s.to_string());
        let message = MessageInfo {
            queue: queue.to_owned(),
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            message_id: message_id.clone(),
            content_type: properties.content_type().as_ref().map(|s| s.to_string()),
            app_id: properties.app_id().as_ref().map(|s| s.to_string()),
            timestamp: *properties.timestamp(),
            size_bytes: delivery.data.len(),
        };
        let mut headers = properties
            .headers()
            .as_ref()
            .map(table_to_json)
            .unwrap_or_default();
        scrub_headers(&mut headers);
        let now = Utc::now();
        let fallback_id = message_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(|| Uuid::new_v5(&UNREADABLE_NAMESPACE, &delivery.data));

        let parsed: Result<Body, String> = serde_json::from_slice::<Body>(&delivery.data)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                if body.schema == SCHEMA {
                    Ok(body)
                } else {
                    Err(format!("unknown dead-letter schema {:?}", body.schema))
                }
            });
        let mut body_json = serde_json::from_slice::<Value>(&delivery.data).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&delivery.data).into_owned())
        });
        scrub_body(&mut body_json);

        let (summary, task) = match parsed {
            Ok(body) => {
                let task = match &body.task {
                    Some(raw) => match serde_json::from_str::<DeliveryTask>(raw.get()) {
                        Ok(task) => Stored::Task(Box::new(task)),
                        Err(error) => Stored::Unreadable(error.to_string()),
                    },
                    None => Stored::Poison,
                };
                let target = body.target.map(|mut target| {
                    target.address = redact_again(&target.kind, &target.address);
                    target
                });
                let summary = DeadLetterSummary {
                    id: body.id.unwrap_or(fallback_id),
                    age_seconds: age_at(&body.dead_lettered_at, now).map(|d| d.as_secs()),
                    reason: body.reason,
                    detail: body.detail,
                    dead_lettered_at: body.dead_lettered_at,
                    attempts: body.attempts,
                    last_status: body.last_status,
                    last_error: body.last_error,
                    event_type: body.event_type,
                    project: body.project,
                    policy: body.policy,
                    target,
                    replayable: matches!(task, Stored::Task(_)),
                };
                (summary, task)
            }
            Err(_) if first_death(properties).is_some() => {
                broker_dead_letter(topology, &delivery, fallback_id, now)
            }
            Err(error) => {
                let summary = DeadLetterSummary {
                    id: fallback_id,
                    reason: "unreadable".to_owned(),
                    detail: format!("not a {SCHEMA} body: {error}"),
                    dead_lettered_at: String::new(),
                    age_seconds: None,
                    attempts: 0,
                    last_status: None,
                    last_error: None,
                    event_type: None,
                    project: None,
                    policy: None,
                    target: None,
                    replayable: false,
                };
                (summary, Stored::Unreadable(error))
            }
        };
        Self {
            letter: DeadLetter {
                summary,
                body: body_json,
                headers,
                message,
            },
            task,
            delivery,
            settled: false,
        }
    }
}

/// Acks the dead letters a confirmed replay replaced (every copy the scan holds).
async fn remove_replayed(scan: &mut Scan, indexes: &[usize], if_kept: &str) -> Result<(), String> {
    for &index in indexes {
        let held = &mut scan.held[index];
        if let Err(error) = held.delivery.ack(BasicAckOptions::default()).await {
            return Err(format!(
                "replayed, but the dead letter could not be removed ({error}); it stays on the queue and {if_kept}"
            ));
        }
        held.settled = true;
    }
    Ok(())
}

/// `(reason, queue)` of the first time RabbitMQ dead-lettered a message (`x-first-death-*`).
fn first_death(properties: &lapin::BasicProperties) -> Option<(String, String)> {
    let headers = properties.headers().as_ref()?;
    let text = |key: &str| match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((
        text("x-first-death-reason")?,
        text("x-first-death-queue").unwrap_or_default(),
    ))
}

/// A message RabbitMQ moved here itself (a work queue's delivery limit, `delivery_limit`): the
/// original event message or delivery task, unchanged, with `x-death` headers.
fn broker_dead_letter(
    topology: &Topology,
    delivery: &Delivery,
    fallback_id: Uuid,
    now: DateTime<Utc>,
) -> (DeadLetterSummary, Stored) {
    let (reason, from) = first_death(&delivery.properties).unwrap_or_default();
    let dead_lettered_at = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| match headers.inner().get("x-death")? {
            AMQPValue::FieldArray(deaths) => {
                deaths.as_slice().first().and_then(|death| match death {
                    AMQPValue::FieldTable(death) => match death.inner().get("time")? {
                        AMQPValue::Timestamp(at) => i64::try_from(*at)
                            .ok()
                            .and_then(|at| DateTime::<Utc>::from_timestamp(at, 0)),
                        _ => None,
                    },
                    _ => None,
                })
            }
            _ => None,
        })
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let mut summary = DeadLetterSummary {
        id: fallback_id,
        age_seconds: age_at(&dead_lettered_at, now).map(|d| d.as_secs()),
        reason,
        detail: format!("dead-lettered by RabbitMQ from {from}"),
        dead_lettered_at,
        attempts: 0,
        last_status: None,
        last_error: None,
        event_type: None,
        project: None,
        policy: None,
        target: None,
        replayable: false,
    };
    let stored = if from == topology.deliveries_queue() {
        match DeliveryTask::decode(&delivery.data) {
            Ok(task) => {
                summary.id = task.delivery_id;
                summary.attempts = task.attempts;
                summary.last_status = task.last_status;
                summary.last_error = task.last_error.clone();
                if let Ok(event) = task.registry_event() {
                    summary.event_type = Some(event.event_type().as_str().to_owned());
                    summary.project = Some(event.project().to_owned());
                }
                summary.policy = Some(PolicyRef {
                    id: task.policy_id,
                    name: String::new(),
                    project: None,
                });
                Stored::Task(Box::new(task))
            }
            Err(error) => Stored::Unreadable(error.to_string()),
        }
    } else if from == topology.events_queue() {
        match EventMessage::decode(&delivery.properties, &delivery.data) {
            Ok(message) => {
                summary.id = message.id;
                summary.event_type = Some(message.event_type().as_str().to_owned());
                summary.project = Some(message.event.project().to_owned());
                Stored::Event
            }
            Err(error) => Stored::Unreadable(error.to_string()),
        }
    } else {
        Stored::Unreadable(format!("dead-lettered from {from:?}, not a work queue"))
    };
    summary.replayable = matches!(stored, Stored::Task(_) | Stored::Event);
    (summary, stored)
}

/// A stored address redacted once more (idempotent on an address that already is).
fn redact_again(kind: &str, address: &str) -> String {
    let kind = if kind == "slack" {
        TargetKind::Slack
    } else {
        TargetKind::Http
    };
    redact_address(kind, address)
}

fn scrub_body(body: &mut Value) {
    if let Some(target) = body.get_mut("target").and_then(Value::as_object_mut) {
        let kind = target
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("http")
            .to_owned();
        if let Some(address) = target.get_mut("address") {
            if let Some(text) = address.as_str() {
                *address = Value::String(redact_again(&kind, text));
            }
        }
    }
}

fn scrub_headers(headers: &mut Map<String, Value>) {
    // The header does not say the target's type; a Slack address is recognised by its host.
    if let Some(Value::String(address)) = headers.get_mut("x-regrelay-target") {
        let kind = if address.contains("hooks.slack.com") {
            "slack"
        } else {
            "http"
        };
        *address = redact_again(kind, address);
    }
}

fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), amqp_to_json(value)))
        .collect()
}

fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => Value::String(format!("<{} bytes>", b.as_slice().len())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::DecimalValue(d) => Value::String(format!("{d:?}")),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse() {
        let ok = |text: &str, secs: u64| {
            assert_eq!(
                parse_age(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            )
        };
        ok("90", 90);
        ok("90s", 90);
        ok("10m", 600);
        ok("1h30m", 5400);
        ok("1h 30m", 5400);
        ok("10 m", 600);
        ok("2d", 172_800);
        ok("1w", 604_800);
        assert_eq!(parse_age("500ms").unwrap(), Duration::from_millis(500));
        ok("1.5h", 5400);
        for bad in ["", "h", "10x", "-1h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    fn summary(reason: &str, at: &str) -> DeadLetterSummary {
        DeadLetterSummary {
            id: Uuid::new_v4(),
            reason: reason.into(),
            detail: String::new(),
            dead_lettered_at: at.into(),
            age_seconds: None,
            attempts: 3,
            last_status: Some(500),
            last_error: None,
            event_type: Some("PUSH_ARTIFACT".into()),
            project: Some("lib".into()),
            policy: Some(PolicyRef {
                id: 7,
                name: "p".into(),
                project: Some("lib".into()),
            }),
            target: None,
            replayable: true,
        }
    }

    #[test]
    fn filters_match_every_set_field() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let letter = summary("attempts_exhausted", "2024-01-01T11:00:00.000Z");
        let check = |filter: DeadLetterFilter, expected: bool| {
            assert_eq!(filter.matches(&letter, now), expected, "{filter:?}")
        };
        check(DeadLetterFilter::default(), true);
        check(
            DeadLetterFilter {
                project: Some("lib".into()),
                policy_id: Some(7),
                event_type: Some("push_artifact".into()),
                reason: Some("attempts_exhausted".into()),
                ..Default::default()
            },
            true,
        );
        check(
            DeadLetterFilter {
                project: Some("other".into()),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                policy_id: Some(8),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                older_than: Some(Duration::from_secs(1800)),
                ..Default::default()
            },
            true,
        );
        check(
            DeadLetterFilter {
                older_than: Some(Duration::from_secs(7200)),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                newer_than: Some(Duration::from_secs(1800)),
                ..Default::default()
            },
            false,
        );
        let undated = summary("poison", "");
        assert!(!DeadLetterFilter {
            newer_than: Some(Duration::from_secs(1)),
            ..Default::default()
        }
        .matches(&undated, now));
    }

    #[test]
    fn replay_report_serialises_failures_as_objects() {
        let id = Uuid::nil();
        let report = ReplayReport {
            replayed: vec![id],
            not_found: vec![],
            failed: vec![(id, "poison".into())],
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"replayed": [id], "not_found": [], "failed": [{"id": id, "reason": "poison"}]})
        );
    }

    #[test]
    fn stored_addresses_are_redacted_again() {
        let mut body = serde_json::json!({"target": {"type": "slack", "address": "https://hooks.slack.com/services/T/B/X"}});
        scrub_body(&mut body);
        assert_eq!(
            body["target"]["address"],
            "https://hooks.slack.com/services/********"
        );
        let mut headers = Map::new();
        headers.insert(
            "x-regrelay-target".into(),
            Value::String("https://u:p@h.example/x?k=v".into()),
        );
        scrub_headers(&mut headers);
        assert_eq!(
            headers["x-regrelay-target"],
            "https://********@h.example/x?k=********"
        );
    }
}
