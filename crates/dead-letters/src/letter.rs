//! [`DeadLetterBody`]: the one `dead-letter.v1` contract, written by the consumer and read back by
//! the tooling, the API and `regrelay dlq`.
//!
//! Design constraints:
//! - One type for writing and reading: the writer borrows the task (`DeadLetterBody<&DeliveryTask>`),
//!   the reader keeps it as raw JSON (`DeadLetterBody<Box<RawValue>>`) so that a body whose task
//!   this version cannot read still lists, with the reason.
//! - The body says why (`reason`, `detail`), how far it got (`attempts`, `last_status`,
//!   `last_error`), what and where (`event_type`, `project`, `policy`, `target` with its kind and a
//!   redacted address) and when; the headers repeat the key facts, so the management UI shows them.
//! - The delivery task travels along (it holds no secrets), so a replay can resume it. A message
//!   that is not a task or event at all keeps its original body as text (`original`).
//! - Dead letters already waiting on a queue keep reading: fields added later are optional, and
//!   `tests/fixtures/` holds bodies written by earlier versions.

use chrono::{SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use regrelay_history::policy::{redact_address, Policy, Target, TargetKind};
use regrelay_producer::{DeadLetterMessage, DeliveryTask};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::reason::DeadLetterReason;

/// Version tag of the dead-letter body.
pub const SCHEMA: &str = "dead-letter.v1";

/// The `schema` field: always [`SCHEMA`]; another value does not deserialize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schema;

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(SCHEMA)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tag = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        if tag == SCHEMA {
            Ok(Schema)
        } else {
            Err(serde::de::Error::custom(format!(
                "unknown dead-letter schema {tag:?}"
            )))
        }
    }
}

/// A dead letter's body. `T` is the delivery task: borrowed when written, raw JSON when read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterBody<T> {
    pub schema: Schema,
    /// The dead letter's id: the delivery id, or a fresh UUID for poison messages.
    pub id: Uuid,
    pub reason: DeadLetterReason,
    /// What happened, in words (a vendor's or receiver's message included, credentials blanked).
    #[serde(default)]
    pub detail: String,
    /// RFC 3339, milliseconds, UTC.
    #[serde(default)]
    pub dead_lettered_at: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub policy: Option<PolicySummary>,
    #[serde(default)]
    pub target: Option<TargetSummary>,
    /// The delivery task, for replay.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub task: Option<T>,
    /// For poison messages: where the message was taken from and its body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
}

fn none<T>() -> Option<T> {
    None
}

/// The policy a dead letter was meant for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    /// `None` for a system-wide policy.
    #[serde(default)]
    pub project: Option<String>,
}

/// The target a dead letter was meant for, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSummary {
    #[serde(rename = "type")]
    pub kind: TargetKind,
    /// The address with credentials, query values and (for Slack) the secret path replaced by
    /// `********` ([`redact_address`], the form the policy API returns).
    pub address: String,
    /// `Default` or `CloudEvents` for an HTTP target; empty where the kind fixes the format.
    #[serde(default)]
    pub payload_format: String,
}

/// A message that could not be read or processed, kept as it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub queue: String,
    pub body: String,
}

impl PolicySummary {
    pub fn of(policy: &Policy) -> Self {
        Self {
            id: policy.id,
            name: policy.name.clone(),
            project: policy.project.as_ref().map(|p| p.name.clone()),
        }
    }
}

impl TargetSummary {
    pub fn of(target: &Target) -> Self {
        Self {
            kind: target.kind,
            address: redact_address(target.kind, &target.address),
            payload_format: match target.kind {
                TargetKind::Http => target.payload_format.as_str().to_owned(),
                TargetKind::Slack | TargetKind::Vendor(_) => String::new(),
            },
        }
    }

    /// The address redacted once more (idempotent), for a summary read back from a queue.
    pub fn redacted(mut self) -> Self {
        self.address = redact_address(self.kind, &self.address);
        self
    }
}

impl<'a> DeadLetterBody<&'a DeliveryTask> {
    /// The dead letter of a delivery task, for `reason`; the rest (`policy`, `target`, the last
    /// attempt) is filled in by the caller where known.
    pub fn of_task(task: &'a DeliveryTask, reason: DeadLetterReason, detail: String) -> Self {
        Self {
            schema: Schema,
            id: task.delivery_id,
            reason,
            detail,
            dead_lettered_at: now_rfc3339(),
            attempts: task.attempts,
            last_status: task.last_status,
            last_error: task.last_error.clone(),
            event_type: None,
            project: None,
            policy: None,
            target: None,
            task: Some(task),
            original: None,
        }
    }
}

impl<T> DeadLetterBody<T> {
    /// A message taken from `queue` that can never be processed, for `reason` (`poison`: it cannot
    /// be read; `unstorable`: the database refuses a value of it; `unencodable`: its delivery task
    /// cannot be encoded). Kept as text, dead-lettered once.
    pub fn unprocessable(
        reason: DeadLetterReason,
        queue: String,
        body: &[u8],
        detail: String,
    ) -> Self {
        Self {
            schema: Schema,
            id: Uuid::new_v4(),
            reason,
            detail,
            dead_lettered_at: now_rfc3339(),
            attempts: 0,
            last_status: None,
            last_error: None,
            event_type: None,
            project: None,
            policy: None,
            target: None,
            task: None,
            original: Some(Original {
                queue,
                body: String::from_utf8_lossy(body).into_owned(),
            }),
        }
    }
}

impl<T: Serialize> DeadLetterBody<T> {
    /// The AMQP message for `<prefix>.dead-letter`: the JSON body, persistent, and headers that
    /// repeat the reason, attempts, last status, policy, target (type and redacted address), event
    /// type, project and time.
    pub fn to_message(&self) -> Result<DeadLetterMessage, serde_json::Error> {
        let body = serde_json::to_vec(self)?;
        let mut headers = FieldTable::default();
        headers.insert("x-regrelay-reason".into(), text(self.reason.as_str()));
        headers.insert(
            "x-regrelay-attempts".into(),
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        if let Some(status) = self.last_status {
            headers.insert(
                "x-regrelay-last-status".into(),
                AMQPValue::LongLongInt(i64::from(status)),
            );
        }
        if let Some(policy) = &self.policy {
            headers.insert(
                "x-regrelay-policy-id".into(),
                AMQPValue::LongLongInt(policy.id),
            );
        }
        if let Some(target) = &self.target {
            headers.insert("x-regrelay-target".into(), text(&target.address));
            headers.insert("x-regrelay-target-type".into(), text(target.kind.as_str()));
        }
        if let Some(event_type) = &self.event_type {
            headers.insert("x-regrelay-event-type".into(), text(event_type));
        }
        if let Some(project) = &self.project {
            headers.insert("x-regrelay-project".into(), text(project));
        }
        headers.insert(
            "x-regrelay-dead-lettered-at".into(),
            text(&self.dead_lettered_at),
        );
        let properties = BasicProperties::default()
            .with_message_id(self.id.to_string().into())
            .with_content_type("application/json".into())
            .with_app_id("regrelay".into())
            .with_delivery_mode(2)
            .with_timestamp(Utc::now().timestamp().max(0) as u64)
            .with_headers(headers);
        Ok(DeadLetterMessage { body, properties })
    }
}

/// Now, as a dead letter's `dead_lettered_at`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn addresses_are_redacted() {
        let target = |kind, address: &str| Target {
            kind,
            address: address.into(),
            auth_header: Some("Bearer secret".into()),
            skip_cert_verify: false,
            payload_format: Default::default(),
            secret: Some("whsec".into()),
            headers: Default::default(),
            options: Default::default(),
        };
        let http = TargetSummary::of(&target(
            TargetKind::Http,
            "https://user:pw@example.com/hook?token=abc",
        ));
        assert_eq!(
            http.address,
            "https://********@example.com/hook?token=********"
        );
        assert_eq!(http.payload_format, "Default");
        let slack = TargetSummary::of(&target(
            TargetKind::Slack,
            "https://hooks.slack.com/services/T0/B0/XYZ",
        ));
        assert_eq!(slack.address, "https://hooks.slack.com/services/********");
        assert_eq!(slack.clone().redacted(), slack, "idempotent");
        let plain = TargetSummary::of(&target(TargetKind::Http, "http://127.0.0.1:9/x"));
        assert_eq!(plain.address, "http://127.0.0.1:9/x");
    }

    #[test]
    fn poison_keeps_the_original_as_text() {
        let body = DeadLetterBody::<&DeliveryTask>::unprocessable(
            DeadLetterReason::Poison,
            "p.deliveries".into(),
            b"raw",
            "bad".into(),
        );
        let json: serde_json::Value = serde_json::to_value(&body).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["reason"], "poison");
        assert_eq!(json["original"]["body"], "raw");
        assert!(json.get("task").is_none());
        let back: DeadLetterBody<Box<RawValue>> =
            serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(back.original.unwrap().queue, "p.deliveries");
    }

    #[test]
    fn another_schema_is_refused() {
        let error = serde_json::from_str::<DeadLetterBody<Box<RawValue>>>(
            r#"{"schema":"dead-letter.v9","id":"6f1c1a52-5f43-4bd4-8d1c-31bd5c5d2f7e","reason":"poison"}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("dead-letter.v9"), "{error}");
    }

    /// Bodies written by the writer of an earlier version (before this type existed; see
    /// `tests/fixtures/`) read with everything they carry.
    #[test]
    fn dead_letters_written_by_the_earlier_writer_still_read() {
        for (name, kind, address) in [
            (
                "http",
                TargetKind::Http,
                "https://********@hooks.example.com/x?token=********",
            ),
            (
                "slack",
                TargetKind::Slack,
                "https://hooks.slack.com/services/********",
            ),
        ] {
            let text = std::fs::read(format!(
                "{}/tests/fixtures/dead-letter-v1-{name}.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let body: DeadLetterBody<Box<RawValue>> = serde_json::from_slice(&text).unwrap();
            assert_eq!(body.reason, DeadLetterReason::AttemptsExhausted);
            assert_eq!(body.attempts, 3);
            assert_eq!(body.last_status, Some(500));
            assert_eq!(body.policy.as_ref().unwrap().name, "ci");
            let target = body.target.unwrap();
            assert_eq!(target.kind, kind);
            assert_eq!(target.address, address);
            let task: DeliveryTask = serde_json::from_str(body.task.unwrap().get()).unwrap();
            assert_eq!(task.delivery_id, body.id);
            assert_eq!(task.registry_event().unwrap().project(), "library");
        }
        let text = std::fs::read(format!(
            "{}/tests/fixtures/dead-letter-v1-poison.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let body: DeadLetterBody<Box<RawValue>> = serde_json::from_slice(&text).unwrap();
        assert_eq!(body.reason, DeadLetterReason::Poison);
        assert!(body.task.is_none());
        assert_eq!(body.original.unwrap().body, "{not a task");
    }
}
