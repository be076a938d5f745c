//! Dead letters: what cannot be delivered, published to `<prefix>.dead-letter` with everything an
//! operator needs to see why, and to replay it.
//!
//! Design constraints:
//! - The body says why (`reason`, `detail`), how far it got (`attempts`, `last_status`,
//!   `last_error`), what and where (`event_type`, `project`, `policy`, `target` with secrets
//!   redacted) and when; the headers repeat the key facts, so the management UI shows them.
//! - The delivery task itself travels along (it holds no secrets), so a replay can resume it.
//! - A message that is not a task or event at all (poison) keeps its original body as text.

use chrono::{SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use regrelay_history::policy::{Policy, Target, TargetKind};
use regrelay_producer::OutgoingMessage;
use serde::Serialize;
use uuid::Uuid;

use crate::context::DeliveryContext;
use crate::outage::GaveUp;
use crate::stage::{Settlement, StageError};
use crate::task::{text, DeliveryTask};

/// Version tag of the dead-letter body.
pub const SCHEMA: &str = "dead-letter.v1";

#[derive(Debug, Serialize)]
pub struct DeadLetterBody<'a> {
    pub schema: &'static str,
    /// The dead letter's id: the delivery id, or a fresh UUID for poison messages.
    pub id: Uuid,
    /// A fixed reason (`attempts_exhausted`, `client_error`, `poison`, `unstorable`, ...), also a
    /// metrics label.
    pub reason: &'static str,
    /// What happened, in words.
    pub detail: String,
    pub dead_lettered_at: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub event_type: Option<String>,
    pub project: Option<String>,
    pub policy: Option<PolicySummary>,
    pub target: Option<TargetSummary>,
    /// The delivery task, for replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<&'a DeliveryTask>,
    /// For poison messages: where the message was taken from and its body as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
}

impl DeadLetterBody<'static> {
    /// A message that cannot be read at all, taken from `queue`: kept as text with the reason, so it
    /// can be inspected, and never requeued in a loop.
    pub fn poison(queue: String, body: &[u8], detail: String) -> Self {
        Self::unprocessable("poison", queue, body, detail)
    }

    /// A message taken from `queue` that can never be processed, for `reason` (`poison`: it cannot
    /// be read; `unstorable`: the database refuses a value of it; `unencodable`: its delivery task
    /// cannot be encoded). Kept as text, dead-lettered once.
    pub fn unprocessable(reason: &'static str, queue: String, body: &[u8], detail: String) -> Self {
        Self {
            schema: SCHEMA,
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

#[derive(Debug, Serialize)]
pub struct PolicySummary {
    pub id: i64,
    pub name: String,
    /// `None` for a system-wide policy.
    pub project: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetSummary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The address with credentials, query values and (for Slack) the secret path removed.
    pub address: String,
    pub payload_format: &'static str,
}

#[derive(Debug, Serialize)]
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
            kind: kind_str(target.kind),
            address: redact_address(target.kind, &target.address),
            payload_format: match target.kind {
                TargetKind::Slack => "",
                TargetKind::Http => target.payload_format.as_str(),
            },
        }
    }
}

pub fn kind_str(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Http => "http",
        TargetKind::Slack => "slack",
    }
}

/// An address safe to show: user info, query values, a fragment and (for Slack) the path, which is
/// the secret, replaced by `********` ([`regrelay_history::policy::redact_address`], the same form
/// the policy API returns).
pub fn redact_address(kind: TargetKind, address: &str) -> String {
    regrelay_history::policy::redact_address(kind, address)
}

impl DeadLetterBody<'_> {
    /// Publishes the dead letter and waits for the broker's confirm, waiting out an outage for
    /// `outage_hold` (a deleted dead-letter queue is declared again).
    pub(crate) async fn publish(&self, ctx: &DeliveryContext) -> Result<(), StageError> {
        let body = serde_json::to_vec(self)
            .map_err(|error| StageError::Bug("cannot encode a dead letter", error))?;
        let mut headers = FieldTable::default();
        headers.insert("x-regrelay-reason".into(), text(self.reason));
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
        let queue = ctx.topology.dead_letter_queue();
        ctx.publish_patiently("publish_dead_letter", || {
            vec![OutgoingMessage {
                exchange: "",
                routing_key: &queue,
                body: &body,
                properties: properties.clone(),
            }]
        })
        .await
        .map_err(|gave_up| match gave_up {
            GaveUp::Refused(error) | GaveUp::Outlasted(error) => StageError::Broker(error),
        })?;
        ctx.metrics
            .dead_letters
            .with_label_values(&[self.reason])
            .inc();
        tracing::warn!(
            message = "Delivery dead-lettered.",
            dead_letter_id = %self.id,
            reason = self.reason,
            detail = %self.detail,
            attempts = self.attempts,
            policy_id = self.policy.as_ref().map(|p| p.id),
            target = self.target.as_ref().map(|t| t.address.as_str()),
        );
        Ok(())
    }

    /// Publishes the dead letter; the message it replaces is then acked, or parked when the
    /// broker could not take it.
    pub(crate) async fn publish_and_settle(&self, ctx: &DeliveryContext) -> Settlement {
        match self.publish(ctx).await {
            Ok(()) => Settlement::Ack,
            Err(error) => Settlement::Requeue(error),
        }
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_redacted() {
        assert_eq!(
            redact_address(
                TargetKind::Http,
                "https://user:pw@example.com/hook?token=abc"
            ),
            "https://********@example.com/hook?token=********"
        );
        assert_eq!(
            redact_address(
                TargetKind::Slack,
                "https://hooks.slack.com/services/T0/B0/XYZ"
            ),
            "https://hooks.slack.com/services/********"
        );
        assert_eq!(
            redact_address(TargetKind::Http, "http://127.0.0.1:9/x"),
            "http://127.0.0.1:9/x"
        );
    }
}
