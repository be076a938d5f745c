//! [`DeliveryTask`]: one delivery of one event to one target of one policy, as it travels through
//! RabbitMQ between the matching stage, the delivery stage, the retry queues and the dead-letter queue.
//!
//! Design constraints:
//! - Versioned and serde-tagged ([`TaskMessage`]): a consumer refuses a version it does not know
//!   (dead-letters it as poison) instead of guessing.
//! - No secrets: the target is named by its index in the policy and a fingerprint of its address,
//!   never by the address itself (a Slack webhook URL *is* a credential), and never with its auth
//!   header or signing secret. The delivery stage looks the target up in the current policy.
//! - Deterministic ids: `delivery_id` is derived from the event id, policy id and target, so an event
//!   that is fanned out twice (a consumer died before acking it) yields the same `webhook-id` and
//!   CloudEvents `id`, and receivers can drop the duplicate.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use regrelay_events::RegistryEvent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What started a delivery; recorded in history as Harbor's execution `trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Trigger {
    /// A registry event matched the policy.
    Event,
    /// A test delivery asked for by a user.
    Manual,
    /// An operator replayed a dead letter.
    Retry,
}

/// The versions of the task message body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "schema")]
pub enum TaskMessage {
    #[serde(rename = "delivery.v1")]
    V1(DeliveryTask),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryTask {
    /// Stable across retries and re-fan-outs: the `webhook-id` header and the CloudEvents `id`.
    pub delivery_id: Uuid,
    /// The event's stable id (the event message's `message_id`).
    pub event_id: Uuid,
    /// The ingest request that accepted the event (CloudEvents `requestid`).
    pub request_id: String,
    pub policy_id: i64,
    /// The project id shown in the CloudEvents `source` (the policy's project, or for a system-wide
    /// policy the event's project).
    pub project_id: i64,
    /// Position of the target in the policy's target list when the task was made.
    pub target_index: usize,
    /// [`target_fingerprint`] of the target's address, to find it again if the list was reordered.
    pub target_fingerprint: String,
    /// Attempts made so far (0 before the first).
    pub attempts: u32,
    /// Times the task was put back because its target was saturated (not attempts).
    #[serde(default)]
    pub deferrals: u32,
    pub trigger: Trigger,
    /// The history record (Harbor's execution and task) this delivery's progress is written to.
    /// Absent: the delivery id. A replay or a test delivery sets a fresh one, so it shows as a new
    /// execution (trigger `RETRY` or `MANUAL`) while keeping the delivery id receivers dedupe on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_key: Option<Uuid>,
    /// When the task was first enqueued, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// The last attempt's HTTP status, if it got one.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// The last attempt's error (timeout, connection refused, ...), if it failed without a status.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The policy generation the task was matched against: the delivery stage looks the target up
    /// in a copy at least that new, so a task made just after a policy write finds its policy in
    /// every consumer. 0: no requirement (test deliveries, tasks written before this field).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub policy_generation: i64,
    /// A rate-limit slot this task reserved (ms since the Unix epoch, on the clock of the consumer
    /// that reserved it: its wait added to that host's time, so a skew to PostgreSQL's clock,
    /// which decides the slots, does not matter; consumers' hosts keep NTP time): it
    /// waits in the retry buckets until then and is sent without asking again
    /// (`consumer::rate_limit`). Not an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_slot_ms: Option<i64>,
    /// The event exactly as received.
    pub event: Box<RawValue>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

#[derive(Debug, thiserror::Error)]
pub enum TaskDecodeError {
    #[error("task body is not a known task message: {0}")]
    Body(#[from] serde_json::Error),
    #[error("task message schema {0:?} is not one this consumer knows")]
    UnknownSchema(String),
    #[error("task carries an invalid event: {0}")]
    Event(#[from] regrelay_events::EventError),
}

impl DeliveryTask {
    /// The key of this delivery's history record.
    pub fn history_key(&self) -> Uuid {
        self.history_key.unwrap_or(self.delivery_id)
    }

    /// A first delivery of `event` to target `target_index` of policy `policy_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        event_id: Uuid,
        request_id: &str,
        event: &RegistryEvent,
        policy_id: i64,
        project_id: i64,
        target_index: usize,
        target_address: &str,
        trigger: Trigger,
    ) -> Result<Self, serde_json::Error> {
        let fingerprint = target_fingerprint(target_address);
        Ok(Self {
            delivery_id: delivery_id(event_id, policy_id, &fingerprint, trigger),
            event_id,
            request_id: request_id.to_owned(),
            policy_id,
            project_id,
            target_index,
            target_fingerprint: fingerprint,
            attempts: 0,
            deferrals: 0,
            history_key: None,
            trigger,
            enqueued_at_ms: now_ms(),
            last_status: None,
            last_error: None,
            policy_generation: 0,
            rate_slot_ms: None,
            event: RawValue::from_string(event.raw_json().to_owned())?,
        })
    }

    /// The event, parsed again (it was validated at ingest; a failure here means a corrupt message).
    pub fn registry_event(&self) -> Result<RegistryEvent, TaskDecodeError> {
        Ok(RegistryEvent::from_json(self.event.get())?)
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Borrowed: a task carries the whole event, and cloning it to encode doubled the bytes
        // each task costs.
        #[derive(Serialize)]
        #[serde(tag = "schema")]
        enum TaskMessageRef<'a> {
            #[serde(rename = "delivery.v1")]
            V1(&'a DeliveryTask),
        }
        serde_json::to_vec(&TaskMessageRef::V1(self))
    }

    pub fn decode(body: &[u8]) -> Result<Self, TaskDecodeError> {
        // Not `from_slice::<TaskMessage>`: serde buffers an internally tagged enum's content before
        // picking the variant, and `RawValue` (the event) cannot be read back from that buffer. So
        // the tag is read first, then the body straight into the variant's struct (which ignores
        // the `schema` field).
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(borrow)]
            schema: std::borrow::Cow<'a, str>,
        }
        let tag: Tag<'_> = serde_json::from_slice(body)?;
        match tag.schema.as_ref() {
            "delivery.v1" => Ok(serde_json::from_slice(body)?),
            other => Err(TaskDecodeError::UnknownSchema(other.to_owned())),
        }
    }

    /// The task as the AMQP message the deliveries queue, the retry buckets and a replay take:
    /// the encoded body and its properties. Fails only if the task cannot be encoded.
    pub fn to_message(&self, event_type: &str) -> Result<TaskMessageOut, serde_json::Error> {
        Ok(TaskMessageOut {
            body: self.encode()?,
            properties: self.properties(event_type),
        })
    }

    /// Persistent properties, with headers that let an operator see at a glance what a message is.
    pub(crate) fn properties(&self, event_type: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("x-regrelay-event-type".into(), text(event_type));
        headers.insert(
            "x-regrelay-policy-id".into(),
            AMQPValue::LongLongInt(self.policy_id),
        );
        headers.insert(
            "x-regrelay-attempts".into(),
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        BasicProperties::default()
            .with_message_id(self.delivery_id.to_string().into())
            .with_content_type("application/json".into())
            .with_app_id("regrelay".into())
            .with_delivery_mode(2)
            .with_headers(headers)
    }
}

/// A delivery task encoded for the broker ([`DeliveryTask::to_message`]); published by
/// [`crate::TaskQueue`]. Opaque: only this crate builds AMQP messages.
#[derive(Debug, Clone)]
pub struct TaskMessageOut {
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

impl TaskMessageOut {
    /// The encoded body (`delivery.v1` JSON).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A short, stable, non-reversible name of a target address.
pub fn target_fingerprint(address: &str) -> String {
    let digest = Sha256::digest(address.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Namespace of delivery ids (a fixed random UUID).
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x3a8e_51f0_2c7d_4b19_8f60_d4e2_91c5_7a03);

fn delivery_id(event_id: Uuid, policy_id: i64, fingerprint: &str, trigger: Trigger) -> Uuid {
    match trigger {
        // Fan-out of an event: the same inputs always give the same id.
        Trigger::Event => Uuid::new_v5(
            &DELIVERY_NAMESPACE,
            format!("{event_id}/{policy_id}/{fingerprint}").as_bytes(),
        ),
        // A test delivery is a new delivery each time.
        Trigger::Manual | Trigger::Retry => Uuid::new_v4(),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"a","event_data":{"resources":[{"digest":"sha256:1","tag":"v1"}],"repository":{"name":"app","namespace":"lib","repo_full_name":"lib/app"}},"extra":1}"#;

    #[test]
    fn round_trips_and_keeps_the_event_verbatim() {
        let event = RegistryEvent::from_json(EVENT).unwrap();
        let task = DeliveryTask::new(
            Uuid::new_v4(),
            "req",
            &event,
            7,
            3,
            1,
            "https://hooks.example.com/x",
            Trigger::Event,
        )
        .unwrap();
        let body = task.encode().unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("\"schema\":\"delivery.v1\""));
        assert!(
            !text.contains("hooks.example.com"),
            "no target address in the task"
        );
        let back = DeliveryTask::decode(&body).unwrap();
        assert_eq!(back.delivery_id, task.delivery_id);
        assert_eq!(back.registry_event().unwrap().raw_json(), EVENT);
    }

    #[test]
    fn event_fan_out_ids_are_deterministic() {
        let event = RegistryEvent::from_json(EVENT).unwrap();
        let id = Uuid::new_v4();
        let make = |policy, address: &str| {
            DeliveryTask::new(id, "r", &event, policy, 1, 0, address, Trigger::Event)
                .unwrap()
                .delivery_id
        };
        assert_eq!(make(1, "http://a"), make(1, "http://a"));
        assert_ne!(make(1, "http://a"), make(2, "http://a"));
        assert_ne!(make(1, "http://a"), make(1, "http://b"));
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(DeliveryTask::decode(br#"{"schema":"delivery.v9"}"#).is_err());
        assert!(DeliveryTask::decode(b"not json").is_err());
    }
}
