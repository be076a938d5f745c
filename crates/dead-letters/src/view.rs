//! What the tooling shows of a dead letter ([`DeadLetterSummary`], [`DeadLetter`]) and what a
//! replay did ([`ReplayReport`]): the shapes `regrelay dlq` prints and `/api/v1/dead-letters` answers.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::letter::{PolicySummary, TargetSummary};
use crate::reason::DeadLetterReason;

/// One dead letter in a listing: what an operator needs to decide what to do with it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    /// The dead letter's id: the delivery id (`webhook-id`) for deliveries; what `show` and
    /// `replay` take.
    pub id: Uuid,
    pub reason: DeadLetterReason,
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
    pub policy: Option<PolicySummary>,
    pub target: Option<TargetSummary>,
    /// Whether it carries a delivery task, so `replay` can resume it (poison messages do not).
    pub replayable: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
