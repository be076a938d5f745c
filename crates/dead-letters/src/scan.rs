//! Reading the dead-letter queue without losing anything: [`Scan`] takes messages with
//! `basic_get` and holds them until the operation ends; [`Held::read`] makes each one a
//! [`DeadLetter`] (a `dead-letter.v1` body, or a message RabbitMQ moved here itself), redacted once
//! more on the way out.

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::Channel;
use regrelay_history::policy::{redact_address, TargetKind};
use regrelay_producer::{DeliveryTask, EventMessage, Topology};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::amqp_json::table_to_json;
use crate::filter::age_at;
use crate::letter::{DeadLetterBody, PolicySummary, TargetSummary, SCHEMA};
use crate::reason::DeadLetterReason;
use crate::view::{DeadLetter, DeadLetterSummary, MessageInfo};

/// Messages taken from the queue and held (unacked) by one operation.
pub(crate) struct Scan {
    pub(crate) channel: Channel,
    pub(crate) held: Vec<Held>,
    /// Set by [`Scan::release`]; a scan dropped without it closes its channel, which returns
    /// everything it held.
    pub(crate) released: bool,
}

/// One held message.
pub(crate) struct Held {
    pub(crate) delivery: Delivery,
    pub(crate) letter: DeadLetter,
    pub(crate) task: Stored,
    /// Acked (replayed or purged): not to be released.
    pub(crate) settled: bool,
}

/// What a dead letter carries for replay.
pub(crate) enum Stored {
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
    pub(crate) async fn release(mut self) {
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

/// Namespace of the ids of messages that carry none (a fixed random UUID): the same message gets
/// the same id on every scan.
const UNREADABLE_NAMESPACE: Uuid = Uuid::from_u128(0x8c1f_2b7e_54a9_4d63_a0e2_7f19_c3d8_6b45);

impl Held {
    pub(crate) fn read(topology: &Topology, delivery: Delivery) -> Self {
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
        let now = Utc::now();
        let fallback_id = message_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(|| Uuid::new_v5(&UNREADABLE_NAMESPACE, &delivery.data));

        let parsed = serde_json::from_slice::<DeadLetterBody<Box<RawValue>>>(&delivery.data)
            .map_err(|e| e.to_string());
        let mut body_json = serde_json::from_slice::<Value>(&delivery.data).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&delivery.data).into_owned())
        });
        // The target's kind says how its address is redacted: the header written with it, or (dead
        // letters written before that header) the body's `target.type`.
        let kind = target_kind(&headers, &body_json);
        scrub_body(&mut body_json, kind);
        scrub_headers(&mut headers, kind);

        let (summary, task) = match parsed {
            Ok(body) => {
                let task = match &body.task {
                    Some(raw) => match serde_json::from_str::<DeliveryTask>(raw.get()) {
                        Ok(task) => Stored::Task(Box::new(task)),
                        Err(error) => Stored::Unreadable(error.to_string()),
                    },
                    None => Stored::Poison,
                };
                let target = body.target.map(TargetSummary::redacted);
                let summary = DeadLetterSummary {
                    id: body.id,
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
                    reason: DeadLetterReason::Unreadable,
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
pub(crate) async fn remove_replayed(
    scan: &mut Scan,
    indexes: &[usize],
    if_kept: &str,
) -> Result<(), String> {
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
        // RabbitMQ's reasons are part of the vocabulary; one this version does not know is shown
        // in the detail.
        reason: reason.parse().unwrap_or(DeadLetterReason::Unreadable),
        detail: match reason.parse::<DeadLetterReason>() {
            Ok(_) => format!("dead-lettered by RabbitMQ from {from}"),
            Err(_) => format!("dead-lettered by RabbitMQ from {from} ({reason})"),
        },
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
                summary.policy = Some(PolicySummary {
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

/// The kind of the dead letter's target: the `x-regrelay-target-type` header, else the body's
/// `target.type`; `None` when neither says (nothing then needs a kind's redaction).
fn target_kind(headers: &Map<String, Value>, body: &Value) -> Option<TargetKind> {
    let named = headers
        .get("x-regrelay-target-type")
        .or_else(|| body.get("target").and_then(|target| target.get("type")))?;
    serde_json::from_value(named.clone()).ok()
}

/// A stored address redacted once more (idempotent on an address that already is). Without a
/// known kind, as an HTTP address (credentials and query values).
fn redact_again(kind: Option<TargetKind>, address: &str) -> String {
    redact_address(kind.unwrap_or(TargetKind::Http), address)
}

fn scrub_body(body: &mut Value, kind: Option<TargetKind>) {
    if let Some(target) = body.get_mut("target").and_then(Value::as_object_mut) {
        if let Some(address) = target.get_mut("address") {
            if let Some(text) = address.as_str() {
                *address = Value::String(redact_again(kind, text));
            }
        }
    }
}

fn scrub_headers(headers: &mut Map<String, Value>, kind: Option<TargetKind>) {
    if let Some(Value::String(address)) = headers.get_mut("x-regrelay-target") {
        *address = redact_again(kind, address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_addresses_are_redacted_again() {
        let mut body = serde_json::json!({"target": {"type": "slack", "address": "https://hooks.slack.com/services/T/B/X"}});
        let kind = target_kind(&Map::new(), &body);
        assert_eq!(kind, Some(TargetKind::Slack));
        scrub_body(&mut body, kind);
        assert_eq!(
            body["target"]["address"],
            "https://hooks.slack.com/services/********"
        );
        let mut headers = Map::new();
        headers.insert(
            "x-regrelay-target".into(),
            Value::String("https://u:p@h.example/x?k=v".into()),
        );
        scrub_headers(&mut headers, None);
        assert_eq!(
            headers["x-regrelay-target"],
            "https://********@h.example/x?k=********"
        );
        // A Slack address in the header, its kind in the header beside it: the path is the secret.
        let mut headers = Map::new();
        headers.insert(
            "x-regrelay-target".into(),
            Value::String("https://hooks.slack.com/services/T/B/X".into()),
        );
        headers.insert(
            "x-regrelay-target-type".into(),
            Value::String("slack".into()),
        );
        let kind = target_kind(&headers, &Value::Null);
        scrub_headers(&mut headers, kind);
        assert_eq!(
            headers["x-regrelay-target"],
            "https://hooks.slack.com/services/********"
        );
    }
}
