//! The ceilings: the hardest references on the same machine, broker, database and receiver, measured
//! in the same run as regrelay itself (issue 5 item 2), so the report can say what fraction of the
//! achievable rate regrelay reaches.
//!
//! Design constraints:
//! - Each ceiling does the least work that still keeps regrelay's guarantees, with the tools regrelay
//!   uses, so regrelay cannot be faster than it on the same path:
//!   - broker: raw lapin on a durable quorum queue, persistent messages, publisher confirms kept
//!     pipelined, a consumer with manual acks and regrelay's delivery prefetch;
//!   - HTTP: the consumer's own shared, keep-alive `reqwest` client posting to the receiver;
//!   - history: `Database::record_deliveries`, the history crate's batch write, with full batches.
//! - Every ceiling runs a short warm-up first (connections, pools, JIT-like caches in the servers),
//!   excluded from its timing.
//! - The ceilings run one after the other, never together: on a 2-core machine they would mostly
//!   measure each other.
//! - Nothing is left behind on the shared services: the broker's queue is deleted and the history
//!   policy (with its history, by cascade) is deleted, also when the measurement fails. A run that
//!   is cancelled or killed midway cannot clean up; its queue expires (`x-expires`) a minute later.
//! - Nothing is logged; failures come back as errors with context.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures::stream::{FuturesUnordered, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use regrelay_consumer::{HttpClients, HttpSettings};
use regrelay_events::EventType;
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionTrigger, TaskStatus, VendorType,
};
use regrelay_history::policy::{Filters, PayloadFormat, PolicySpec, Target, TargetKind};
use regrelay_history::Database;

/// What to measure against, and how hard.
pub struct CeilingSettings {
    /// AMQP URL of the broker regrelay uses. Holds a password: never shown (errors redact it).
    pub amqp_url: String,
    /// PostgreSQL URL of the database regrelay uses. Holds a password: never shown.
    pub database_url: String,
    /// The bench's receiver, POSTed to by the HTTP ceiling.
    pub receiver_url: String,
    /// Messages, requests and deliveries per ceiling (the warm-up comes on top).
    pub messages: usize,
    /// Concurrent requests (HTTP), concurrent batches (history, at most 32), and the confirm
    /// window (broker: 16 unconfirmed messages per unit).
    pub concurrency: usize,
}

/// The four ceilings, each in units per second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceilings {
    /// Ingest-shaped requests (the load client posting one Harbor event) answered by a minimal
    /// handler (the receiver), per second.
    pub ingest_requests_per_sec: f64,
    /// Persistent messages published with confirms, consumed and acked, per second.
    pub broker_msgs_per_sec: f64,
    /// Successful POSTs to the receiver per second.
    pub http_posts_per_sec: f64,
    /// Deliveries (a Pending and a Success record each) written to the history per second.
    pub history_rows_per_sec: f64,
}

impl Ceilings {
    /// The composed ceiling at `fanout` targets per event: the deliveries per second the machine
    /// could do if it did nothing but the unit steps a delivery pays, each at its own ceiling,
    /// `1 / Σ (1 / rate)`. The ingest request and the event's broker trip are shared by the
    /// event's `fanout` deliveries; the POST and the history row are paid per delivery.
    pub fn composed(&self, fanout: usize) -> f64 {
        let fanout = fanout.max(1) as f64;
        let per_event = 1.0 / self.ingest_requests_per_sec + 1.0 / self.broker_msgs_per_sec;
        let per_delivery = 1.0 / self.http_posts_per_sec + 1.0 / self.history_rows_per_sec;
        1.0 / (per_event / fanout + per_delivery)
    }

    /// The lowest ceiling and its name (`"broker"`, `"http"` or `"history"`): what bounds regrelay's
    /// end-to-end rate on this machine.
    pub fn lowest(&self) -> (&'static str, f64) {
        [
            ("ingest", self.ingest_requests_per_sec),
            ("broker", self.broker_msgs_per_sec),
            ("http", self.http_posts_per_sec),
            ("history", self.history_rows_per_sec),
        ]
        .into_iter()
        .fold(("broker", f64::INFINITY), |lowest, candidate| {
            if candidate.1.total_cmp(&lowest.1).is_lt() {
                candidate
            } else {
                lowest
            }
        })
    }
}

/// Measures the four ceilings, one after the other.
pub async fn measure(settings: &CeilingSettings) -> anyhow::Result<Ceilings> {
    ensure!(
        settings.messages > 0,
        "the ceilings need at least 1 message"
    );
    ensure!(
        settings.concurrency > 0,
        "the ceilings need a concurrency of at least 1"
    );
    let ingest_requests_per_sec = ingest_ceiling(settings)
        .await
        .context("measuring the ingest ceiling (event POSTs to a minimal handler)")?;
    let broker_msgs_per_sec = broker_ceiling(settings)
        .await
        .context("measuring the broker ceiling (publish with confirms, consume, ack)")?;
    let http_posts_per_sec = http_ceiling(settings)
        .await
        .context("measuring the HTTP ceiling (POSTs to the receiver)")?;
    let history_rows_per_sec = history_ceiling(settings)
        .await
        .context("measuring the history ceiling (batched history writes)")?;
    Ok(Ceilings {
        ingest_requests_per_sec,
        broker_msgs_per_sec,
        http_posts_per_sec,
        history_rows_per_sec,
    })
}

/// regrelay's delivery-stage prefetch (`delivery_prefetch` in the default configuration).
const PREFETCH: u16 = 256;
/// Unconfirmed publishes allowed per unit of concurrency: together they play the part of
/// regrelay's many concurrent ingest requests, each waiting for its batch's confirms.
const CONFIRM_WINDOW_PER_WORKER: usize = 16;
/// Most concurrent history batches (one connection each): PostgreSQL allows 100 connections by
/// default, regrelay's processes hold some, and 2 cores gain nothing from more.
const MAX_HISTORY_CONNECTIONS: usize = 32;
/// Records per history batch: the recorder's `max_batch` under load.
const HISTORY_BATCH: usize = 256;
/// The longest wait for the next consumed message or confirm before the broker ceiling gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the ceiling's queue may stay unused before the broker deletes it by itself.
const ORPHAN_QUEUE_EXPIRY_MS: i64 = 60_000;
/// Size of the bodies sent (a delivery task, a webhook payload): about 1 KiB.
const BODY_BYTES: usize = 1024;

/// Warm-up size: a tenth of the run, at least a few and at most a thousand.
fn warmup(messages: usize) -> usize {
    (messages / 10).clamp(10, 1000)
}

/// A JSON object of about [`BODY_BYTES`] bytes, shaped like a Harbor push event.
fn json_body(id: usize) -> String {
    let head = format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"bench","event_data":{{"resources":[{{"digest":"sha256:{id:064x}","tag":"t{id}","resource_url":"reg.local/bench/app:t{id}"}}],"repository":{{"name":"app","namespace":"bench","repo_full_name":"bench/app","repo_type":"private"}}}},"padding":""#
    );
    let padding = BODY_BYTES.saturating_sub(head.len() + 2);
    let mut body = head;
    body.extend(std::iter::repeat_n('x', padding));
    body.push_str("\"}");
    body
}

// ---------------------------------------------------------------------------------------------
// Broker

/// Publishes and consumes through a fresh quorum queue; returns messages per second.
async fn broker_ceiling(settings: &CeilingSettings) -> anyhow::Result<f64> {
    let address = regrelay_producer::broker::redact_url(&settings.amqp_url);
    let connect = |name: &'static str| {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let url = settings.amqp_url.clone();
        let address = address.clone();
        async move {
            Connection::connect(&url, properties)
                .await
                .with_context(|| format!("cannot connect to the broker at {address}"))
        }
    };
    // Separate connections for publishing and consuming, as regrelay has (flow control on a
    // publishing connection must not stall the consumer).
    let publishing = connect("regrelay-bench-ceiling-publish").await?;
    let consuming = match connect("regrelay-bench-ceiling-consume").await {
        Ok(connection) => connection,
        Err(error) => {
            let _ = publishing.close(200, "bench ceiling failed".into()).await;
            return Err(error);
        }
    };
    let queue = format!("regrelay-bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let result = broker_rounds(&publishing, &consuming, &queue, settings).await;
    let _ = consuming.close(200, "bench ceiling done".into()).await;
    let deleted = delete_queue(&publishing, &queue).await;
    let _ = publishing.close(200, "bench ceiling done".into()).await;
    let rate = result?;
    deleted.with_context(|| format!("cannot delete the ceiling's queue {queue}"))?;
    Ok(rate)
}

async fn broker_rounds(
    publishing: &Connection,
    consuming: &Connection,
    queue: &str,
    settings: &CeilingSettings,
) -> anyhow::Result<f64> {
    let publish_channel = publishing.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // The queue is deleted at the end; should the bench be killed first, the broker deletes it
    // once it has been unused this long. Changes nothing about how messages are stored.
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(ORPHAN_QUEUE_EXPIRY_MS),
    );
    publish_channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .with_context(|| format!("cannot declare the quorum queue {queue}"))?;

    let consume_channel = consuming.create_channel().await?;
    consume_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            queue.into(),
            "regrelay-bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue}"))?;

    let window = settings
        .concurrency
        .saturating_mul(CONFIRM_WINDOW_PER_WORKER)
        .max(1);
    let body = json_body(0).into_bytes();
    for (round, count) in [warmup(settings.messages), settings.messages]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        let publish = publish_confirmed(&publish_channel, queue, &body, count, window, round);
        let consume = async {
            for received in 0..count {
                let delivery = match tokio::time::timeout(STALL_TIMEOUT, consumer.next()).await {
                    Err(_) => bail!(
                        "no message for {STALL_TIMEOUT:?} after {received} of {count} were consumed"
                    ),
                    Ok(None) => bail!("the broker cancelled the consumer"),
                    Ok(Some(delivery)) => delivery.context("the consumer failed")?,
                };
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("cannot ack a message")?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(publish, consume)?;
        if round == 1 {
            return Ok(count as f64 / started.elapsed().as_secs_f64());
        }
    }
    bail!("the broker ceiling ran no measured round")
}

/// Publishes `count` persistent messages to `queue` through the default exchange, keeping at most
/// `window` unconfirmed, and fails on any nack, return or missing confirm.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    count: usize,
    window: usize,
    round: usize,
) -> anyhow::Result<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut pending = FuturesUnordered::new();
    for i in 0..count {
        while pending.len() >= window {
            settle(pending.next().await)?;
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(format!("ceiling-{round}-{i}").into());
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await
            .context("cannot publish")?;
        pending.push(tokio::time::timeout(STALL_TIMEOUT, confirm));
    }
    while let Some(next) = pending.next().await {
        settle(Some(next))?;
    }
    Ok(())
}

/// Checks one publisher confirm.
fn settle(
    confirm: Option<Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>>,
) -> anyhow::Result<()> {
    match confirm {
        None => Ok(()),
        Some(Err(_)) => bail!("no publisher confirm within {STALL_TIMEOUT:?}"),
        Some(Ok(confirmation)) => match confirmation.context("publisher confirm failed")? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => bail!(
                "the broker returned a message: {} {}",
                returned.reply_code,
                returned.reply_text
            ),
            Confirmation::Nack(_) => bail!("the broker nacked a message"),
            Confirmation::NotRequested => bail!("confirm mode is off on the publishing channel"),
        },
    }
}

async fn delete_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = channel.close(200, "bench ceiling done".into()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// POSTs to the receiver with `concurrency` requests in flight; returns successful POSTs per second.
async fn http_ceiling(settings: &CeilingSettings) -> anyhow::Result<f64> {
    // The consumer's own client, built the way `serve` builds it (private targets allowed: the
    // receiver is on 127.0.0.1), so the ceiling pays exactly the client costs a delivery pays.
    let clients = HttpClients::new(&HttpSettings {
        timeout: Duration::from_secs(10),
        allow_private_targets: true,
        user_agent: format!("regrelay-bench/{}", env!("CARGO_PKG_VERSION")),
        pool_idle_per_host: settings.concurrency,
    })
    .context("cannot build the HTTP client")?;
    let client = clients.for_target(false);
    post_rounds(client, &settings.receiver_url, json_body(0), settings).await
}

/// POSTs one Harbor event per request with the load generator's own client (the one that drives
/// ingest) to the receiver, a handler that reads the body and answers at once: what one ingest
/// request costs the machine without regrelay's part of it.
async fn ingest_ceiling(settings: &CeilingSettings) -> anyhow::Result<f64> {
    let client = crate::load::client(settings.concurrency)?;
    let url = format!("{}-ingest", settings.receiver_url);
    post_rounds(&client, &url, crate::load::event_body("ceiling"), settings).await
}

/// A warm-up round, then `settings.messages` POSTs of `body` to `url`, `concurrency` in flight;
/// returns the timed round's successful POSTs per second.
async fn post_rounds(
    client: &reqwest::Client,
    url: &str,
    body: String,
    settings: &CeilingSettings,
) -> anyhow::Result<f64> {
    // `Bytes`, so each request's body is a reference count, not a copy.
    let body = bytes::Bytes::from(body);
    let mut rate = 0.0;
    for count in [warmup(settings.messages), settings.messages] {
        let started = Instant::now();
        let mut failures = 0usize;
        let mut first_failure = None;
        let mut requests = futures::stream::iter(0..count)
            .map(|_| {
                let request = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                async move {
                    let response = request.send().await?;
                    let status = response.status();
                    // Read the answer to the end so the connection goes back to the pool.
                    response.bytes().await?;
                    Ok::<_, reqwest::Error>(status)
                }
            })
            .buffer_unordered(settings.concurrency);
        while let Some(result) = requests.next().await {
            let failure = match result {
                Ok(status) if status.is_success() => continue,
                Ok(status) => format!("HTTP {status}"),
                Err(error) => error.without_url().to_string(),
            };
            failures += 1;
            first_failure.get_or_insert(failure);
        }
        rate = count as f64 / started.elapsed().as_secs_f64();
        if let Some(first) = first_failure {
            bail!("{failures} of {count} POSTs to the receiver failed (first: {first})");
        }
    }
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// History

/// Writes deliveries' history records in batches, `concurrency` batches at once; returns deliveries
/// per second.
async fn history_ceiling(settings: &CeilingSettings) -> anyhow::Result<f64> {
    let concurrency = settings.concurrency.min(MAX_HISTORY_CONNECTIONS);
    let db = Database::connect(&settings.database_url, concurrency)
        .context("cannot set up the database pool")?;
    db.migrate().await.context("cannot migrate the database")?;
    let project = db
        .ensure_project(HISTORY_PROJECT)
        .await
        .context("cannot create the ceiling's project")?;
    let spec = PolicySpec {
        name: format!("regrelay-bench-ceiling-{}", uuid::Uuid::new_v4().simple()),
        description: "Temporary: the bench's history ceiling; deleted when it ends.".into(),
        targets: vec![Target {
            kind: TargetKind::Http,
            address: "http://127.0.0.1:9/ceiling".into(),
            auth_header: None,
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: None,
            headers: Default::default(),
            options: Default::default(),
        }],
        event_types: vec![EventType::PushArtifact],
        filters: Filters::default(),
        creator: "regrelay-bench".into(),
        // Disabled: a running consumer sharing this database must never deliver through it.
        enabled: false,
    };
    let policy = db
        .create_policy(Some(project.id), &spec)
        .await
        .context("cannot create the ceiling's policy")?;
    let result = history_rounds(&db, policy.id, settings.messages, concurrency).await;
    // Deleting the policy deletes its history too (ON DELETE CASCADE).
    let deleted = db.delete_policy(Some(project.id), policy.id).await;
    let rate = result?;
    deleted.context("cannot delete the ceiling's policy and its history")?;
    Ok(rate)
}

/// The project the ceiling's temporary policy lives in.
const HISTORY_PROJECT: &str = "regrelay-bench-ceiling";

async fn history_rounds(
    db: &Database,
    policy_id: i64,
    messages: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let payload = json_body(0);
    let mut rate = 0.0;
    for count in [warmup(messages), messages] {
        let records = history_records(policy_id, count, &payload);
        // Pending records first, then the outcomes, as the consumer's two stages write them.
        let (pending, done): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|record| record.status == TaskStatus::Pending);
        let started = Instant::now();
        let mut batches = futures::stream::iter(
            pending
                .chunks(HISTORY_BATCH)
                .chain(done.chunks(HISTORY_BATCH)),
        )
        .map(|batch| db.record_deliveries(batch))
        .buffer_unordered(concurrency);
        while let Some(written) = batches.next().await {
            written.context("a history batch failed")?;
        }
        rate = count as f64 / started.elapsed().as_secs_f64();
    }
    Ok(rate)
}

/// Two records per delivery, as the consumer writes them: Pending when the task is created, then
/// Success with the attempt's log line and the payload sent.
fn history_records(policy_id: i64, deliveries: usize, payload: &str) -> Vec<DeliveryRecord> {
    let mut records = Vec::with_capacity(deliveries * 2);
    for _ in 0..deliveries {
        let key = uuid::Uuid::new_v4();
        let pending = DeliveryRecord {
            history_key: key,
            policy_id,
            vendor_type: VendorType::Webhook,
            trigger: ExecutionTrigger::Event,
            event_type: EventType::PushArtifact.as_str().into(),
            event_id: uuid::Uuid::new_v4(),
            status: TaskStatus::Pending,
            status_message: String::new(),
            run_count: 0,
            payload: None,
            attempt: None,
            at: chrono::Utc::now(),
            target: None,
        };
        let now = chrono::Utc::now();
        let success = DeliveryRecord {
            status: TaskStatus::Success,
            status_message: "HTTP 200".into(),
            run_count: 1,
            payload: Some(payload.to_owned()),
            attempt: Some(AttemptLog {
                attempt: 1,
                at: now,
                status_code: Some(200),
                error: None,
                duration: Duration::from_millis(2),
                response_snippet: Some("ok".into()),
            }),
            at: now,
            ..pending.clone()
        };
        records.push(pending);
        records.push(success);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_ceiling_is_named() {
        let ceilings = Ceilings {
            ingest_requests_per_sec: 20000.0,
            broker_msgs_per_sec: 9000.0,
            http_posts_per_sec: 12000.0,
            history_rows_per_sec: 4000.0,
        };
        assert_eq!(ceilings.lowest(), ("history", 4000.0));
        let ceilings = Ceilings {
            broker_msgs_per_sec: 100.0,
            ..ceilings
        };
        assert_eq!(ceilings.lowest(), ("broker", 100.0));
    }

    #[test]
    fn the_composed_ceiling_adds_the_unit_costs_and_shares_the_event_s() {
        // The figures of issue 16: 0.043 + 0.180 + 0.043 + 0.165 ms per delivery at fan-out 1.
        let ceilings = Ceilings {
            ingest_requests_per_sec: 1000.0 / 0.043,
            broker_msgs_per_sec: 1000.0 / 0.180,
            http_posts_per_sec: 1000.0 / 0.043,
            history_rows_per_sec: 1000.0 / 0.165,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1.0;
        assert!(
            close(ceilings.composed(1), 1000.0 / 0.431),
            "{}",
            ceilings.composed(1)
        );
        assert!(
            close(ceilings.composed(10), 1000.0 / (0.0223 + 0.208)),
            "{}",
            ceilings.composed(10)
        );
        // Fan-out 0 is treated as 1; more fan-out only ever raises the ceiling.
        assert_eq!(ceilings.composed(0), ceilings.composed(1));
        assert!(ceilings.composed(100) > ceilings.composed(10));
    }

    #[test]
    fn bodies_are_about_a_kibibyte_of_json() {
        for id in [0, 7, usize::MAX] {
            let body = json_body(id);
            assert!(
                (BODY_BYTES..BODY_BYTES + 200).contains(&body.len()),
                "{}",
                body.len()
            );
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(value["type"], "PUSH_ARTIFACT");
        }
    }

    #[test]
    fn warmup_is_short_but_not_empty() {
        assert_eq!(warmup(1), 10);
        assert_eq!(warmup(5000), 500);
        assert_eq!(warmup(1_000_000), 1000);
    }
}
