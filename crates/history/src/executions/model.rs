//! Harbor's vocabulary ([`TaskStatus`], [`ExecutionTrigger`], [`VendorType`]) and the records the
//! history module writes ([`DeliveryRecord`], [`AttemptLog`]) and reads ([`Execution`], [`Task`],
//! [`ExecutionQuery`], [`LastTrigger`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::StoreError;

/// A task's (and, rolled up, an execution's) status, with Harbor's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    Pending,
    Scheduled,
    Running,
    Stopped,
    Error,
    Success,
}

/// What started an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExecutionTrigger {
    /// A registry event matched the policy (Harbor's only trigger).
    Event,
    /// regrelay: a test delivery.
    Manual,
    /// regrelay: a replay from the dead-letter queue.
    Retry,
}

/// What kind of target an execution delivers to (Harbor's `vendor_type`: `WEBHOOK`, `SLACK`, and
/// regrelay's chat and template types by their upper-case names, `TELEGRAM`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VendorType {
    Webhook,
    Slack,
    Vendor(regrelay_targets::TargetKind),
}

impl Serialize for VendorType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VendorType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A stored name that is not one of the enum's (a bug or a foreign writer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
}

/// One step of one delivery's progress. Idempotent: recording the same record twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// One execution and one task per key; stable across retries and redeliveries.
    pub history_key: Uuid,
    pub policy_id: i64,
    pub vendor_type: VendorType,
    pub trigger: ExecutionTrigger,
    pub event_type: String,
    pub event_id: Uuid,
    pub status: TaskStatus,
    pub status_message: String,
    /// Attempts made so far.
    pub run_count: i32,
    /// The exact body sent; `None` before the first attempt (any stored value is kept).
    pub payload: Option<String>,
    /// The attempt this step records, if any.
    pub attempt: Option<AttemptLog>,
    pub at: DateTime<Utc>,
    /// The policy target the delivery goes to, when its attempts count for the target's health
    /// (`target_health`; test deliveries leave it out).
    pub target: Option<TargetRef>,
}

/// A policy target as history's health rows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// `producer::task::target_fingerprint` of the address.
    pub fingerprint: String,
    /// The address with its credentials redacted (`policy::redact_address`).
    pub address: String,
    /// The policy's `type` of the target (`http`, `slack`, `telegram`, ...).
    pub target_type: String,
}

/// One attempt: one line of the task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLog {
    /// 1 for the first attempt.
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// `None` when no response came.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    /// The start of the receiver's answer (credentials already blanked by the caller).
    pub response_snippet: Option<String>,
}

/// An execution as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: i64,
    pub vendor_type: VendorType,
    /// The policy id.
    pub vendor_id: i64,
    pub status: TaskStatus,
    pub status_message: String,
    pub metrics: TaskMetrics,
    pub trigger: ExecutionTrigger,
    pub event_type: String,
    /// `{"event_type": ..., "payload": "<the exact body sent>"}` (no payload before the first attempt).
    pub extra_attrs: serde_json::Value,
    pub start_time: DateTime<Utc>,
    /// `None` while unfinished.
    pub end_time: Option<DateTime<Utc>>,
}

/// An execution's tasks counted by status (Harbor's `metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskMetrics {
    pub task_count: i64,
    pub success_task_count: i64,
    pub error_task_count: i64,
    pub pending_task_count: i64,
    pub running_task_count: i64,
    pub scheduled_task_count: i64,
    pub stopped_task_count: i64,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: i64,
    pub execution_id: i64,
    pub status: TaskStatus,
    pub status_message: String,
    pub run_count: i32,
    pub extra_attrs: serde_json::Value,
    pub creation_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub start_time: DateTime<Utc>,
    /// `None` while unfinished.
    pub end_time: Option<DateTime<Utc>>,
}

/// One page of a policy's executions, and what selects them.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery {
    /// 1-based; 0 is read as 1.
    pub page: u64,
    /// 0: no paging, every matching execution.
    pub page_size: u64,
    pub status: Option<TaskStatus>,
    pub event_type: Option<String>,
    pub trigger: Option<ExecutionTrigger>,
}

/// The newest execution of a policy for one event type (Harbor's `lasttrigger`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTrigger {
    pub policy_id: i64,
    pub event_type: String,
    pub time: DateTime<Utc>,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Scheduled,
        TaskStatus::Running,
        TaskStatus::Stopped,
        TaskStatus::Error,
        TaskStatus::Success,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Pending => "Pending",
            TaskStatus::Scheduled => "Scheduled",
            TaskStatus::Running => "Running",
            TaskStatus::Stopped => "Stopped",
            TaskStatus::Error => "Error",
            TaskStatus::Success => "Success",
        }
    }

    /// Stopped, Error and Success: nothing more happens to the task.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TaskStatus::Stopped | TaskStatus::Error | TaskStatus::Success
        )
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "task status",
                value: s.to_owned(),
            })
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ExecutionTrigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutionTrigger::Event => "EVENT",
            ExecutionTrigger::Manual => "MANUAL",
            ExecutionTrigger::Retry => "RETRY",
        }
    }
}

impl FromStr for ExecutionTrigger {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ExecutionTrigger::Event,
            ExecutionTrigger::Manual,
            ExecutionTrigger::Retry,
        ]
        .into_iter()
        .find(|trigger| trigger.as_str() == s)
        .ok_or_else(|| UnknownName {
            kind: "execution trigger",
            value: s.to_owned(),
        })
    }
}

impl VendorType {
    pub fn as_str(&self) -> &'static str {
        match self {
            VendorType::Webhook => "WEBHOOK",
            VendorType::Slack => "SLACK",
            VendorType::Vendor(kind) => kind.vendor_type(),
        }
    }
}

impl FromStr for VendorType {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [VendorType::Webhook, VendorType::Slack]
            .into_iter()
            .chain(regrelay_targets::TargetKind::ALL.map(VendorType::Vendor))
            .find(|vendor| vendor.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "vendor type",
                value: s.to_owned(),
            })
    }
}

/// A text column holding one of the enums' names.
pub(super) fn parse_column<T>(
    row: &Row,
    column: impl tokio_postgres::row::RowIndex + fmt::Display,
) -> Result<T, StoreError>
where
    T: FromStr<Err = UnknownName>,
{
    let text: &str = row.try_get(column)?;
    text.parse()
        .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert_eq!("MANUAL".parse(), Ok(ExecutionTrigger::Manual));
        assert_eq!(
            serde_json::to_string(&ExecutionTrigger::Retry).unwrap(),
            "\"RETRY\""
        );
        assert_eq!("SLACK".parse(), Ok(VendorType::Slack));
        assert_eq!(
            serde_json::to_string(&VendorType::Webhook).unwrap(),
            "\"WEBHOOK\""
        );
        assert!("success".parse::<TaskStatus>().is_err());
        assert!(TaskStatus::Stopped.is_final() && !TaskStatus::Scheduled.is_final());
    }
}
