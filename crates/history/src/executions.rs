//! The delivery history (SPEC §5) in Harbor's shape: the `executions`, `tasks` and `task_logs` tables.
//!
//! - [`TaskStatus`], [`ExecutionTrigger`], [`VendorType`]: Harbor's vocabulary, with Harbor's names.
//! - [`rollup`]: an execution's status from its tasks' (pure).
//! - [`DeliveryRecord`], [`AttemptLog`] and `Database::record_deliveries`: the consumer's writes, one
//!   batch per transaction.
//! - [`Execution`], [`Task`], [`ExecutionQuery`], [`LastTrigger`] and the reads behind the API:
//!   `list_executions`, `get_execution`, `list_tasks`, `get_task`, `task_log`, `last_triggers`.
//!
//! Design constraints:
//! - One delivery (event × policy × target) is one execution with one task, found again by its
//!   `history_key`; each attempt adds one log line, unique per (task, attempt).
//! - Writes are idempotent and monotonic: RabbitMQ redelivers, so the same record, or an older one,
//!   may arrive again (also in the same batch). A record moves a task only when it is at least as far
//!   along: more attempts, or as many and not going from a final status back to an unfinished one
//!   ([`supersedes`], mirrored by the SQL). Log lines are inserted `ON CONFLICT DO NOTHING`.
//! - A batch is one transaction with a fixed number of statements (arrays through `UNNEST`),
//!   whatever its size, so the recorder's batching really saves round trips.
//! - A record whose policy was deleted meanwhile is skipped, not an error: the policy's history is
//!   gone with it (`ON DELETE CASCADE`), and failing the batch would fail every other record in it.
//! - Text goes to PostgreSQL `TEXT`, which cannot hold NUL: NULs (a receiver's answer may have any
//!   bytes) are replaced, so one bad snippet cannot fail a batch forever.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::{Database, PageWindow, StoreError};

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

/// What kind of target an execution delivers to (Harbor's `vendor_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VendorType {
    Webhook,
    Slack,
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
        }
    }
}

impl FromStr for VendorType {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [VendorType::Webhook, VendorType::Slack]
            .into_iter()
            .find(|vendor| vendor.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "vendor type",
                value: s.to_owned(),
            })
    }
}

/// Harbor's roll-up of an execution's status from its tasks': Running while any task is Pending,
/// Scheduled or Running; else Error if any erred; else Stopped if any stopped; else Success (also for
/// no tasks at all, as Harbor does).
pub fn rollup(tasks: &[TaskStatus]) -> TaskStatus {
    let any = |wanted: &[TaskStatus]| tasks.iter().any(|s| wanted.contains(s));
    if any(&[
        TaskStatus::Pending,
        TaskStatus::Scheduled,
        TaskStatus::Running,
    ]) {
        TaskStatus::Running
    } else if any(&[TaskStatus::Error]) {
        TaskStatus::Error
    } else if any(&[TaskStatus::Stopped]) {
        TaskStatus::Stopped
    } else {
        TaskStatus::Success
    }
}

/// Whether a step `(run_count, status)` may replace the stored one: it has more attempts, or as many
/// and does not move a finished task back to unfinished. The SQL of `record_deliveries` says the
/// same (`FRESHER_THAN_STORED`); the two must agree.
pub fn supersedes(new: (i32, TaskStatus), stored: (i32, TaskStatus)) -> bool {
    new.0 > stored.0 || (new.0 == stored.0 && (new.1.is_final() || !stored.1.is_final()))
}

/// One line of a task's log: `2026-11-24T20:00:00.000Z attempt 1: HTTP 503 in 12 ms: <snippet>`.
/// Line breaks in the error or the snippet are escaped, so one attempt is always one line.
pub fn format_log_line(
    attempt: i32,
    time: DateTime<Utc>,
    status_code: Option<i32>,
    error: Option<&str>,
    duration_ms: i64,
    response_snippet: Option<&str>,
) -> String {
    let mut line = format!(
        "{} attempt {attempt}: ",
        time.to_rfc3339_opts(SecondsFormat::Millis, true)
    );
    match status_code {
        Some(code) => line.push_str(&format!("HTTP {code}")),
        None => line.push_str("no response"),
    }
    line.push_str(&format!(" in {duration_ms} ms"));
    if let Some(error) = error.filter(|e| !e.is_empty()) {
        line.push_str(": ");
        line.push_str(&one_line(error));
    }
    if let Some(snippet) = response_snippet.filter(|s| !s.is_empty()) {
        line.push_str(if error.is_some_and(|e| !e.is_empty()) {
            "; response: "
        } else {
            ": "
        });
        line.push_str(&one_line(snippet));
    }
    line
}

/// `\n`, `\r` and `\t` written as escapes; other control characters dropped.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// PostgreSQL `TEXT` cannot hold NUL; a NUL becomes U+FFFD.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The SQL twin of [`supersedes`]: `i` is the incoming step, `t` the stored task.
const FRESHER_THAN_STORED: &str = "(i.run_count > t.run_count
     OR (i.run_count = t.run_count
         AND (i.final OR t.status NOT IN ('Stopped', 'Error', 'Success'))))";

/// Inserts the executions (and their one task each) whose key is new. Returns the keys inserted;
/// keys already stored, and keys whose policy is gone, are left out.
const INSERT_NEW: &str = "
    WITH input AS (
        SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                             $6::uuid[], $7::text[], $8::text[], $9::int4[], $10::text[],
                             $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
                             $14::text[], $15::timestamptz[])
            WITH ORDINALITY
            AS i(history_key, policy_id, vendor_type, trigger, event_type,
                 event_id, status, status_message, run_count, payload,
                 first_at, at, end_time,
                 execution_status, execution_end_time, ord)
    ),
    new_executions AS (
        INSERT INTO executions (vendor_type, vendor_id, status, status_message, trigger,
                                event_type, extra_attrs, history_key, event_id, start_time,
                                end_time)
        SELECT i.vendor_type, i.policy_id, i.execution_status, i.status_message, i.trigger,
               i.event_type,
               jsonb_strip_nulls(jsonb_build_object('event_type', i.event_type,
                                                    'payload', i.payload)),
               i.history_key, i.event_id, i.first_at, i.execution_end_time
        FROM input i
        -- The policy was deleted after the delivery was matched: its history went with it, so
        -- the record is skipped rather than failing the batch on the foreign key. (A delete that
        -- commits between this check and the insert's key check still fails the batch; the
        -- caller retries it, and the retry skips the record.)
        WHERE EXISTS (SELECT 1 FROM notification_policies p WHERE p.id = i.policy_id)
        ORDER BY i.ord
        ON CONFLICT (history_key) DO NOTHING
        RETURNING id, history_key
    ),
    new_tasks AS (
        INSERT INTO tasks (execution_id, status, status_message, run_count, creation_time,
                           update_time, start_time, end_time)
        SELECT e.id, i.status, i.status_message, i.run_count, i.first_at, i.at, i.first_at,
               i.end_time
        FROM new_executions e
        JOIN input i ON i.history_key = e.history_key
        ORDER BY e.id
    )
    SELECT history_key FROM new_executions";

/// Moves the stored tasks of known keys forward (never back); returns the moved ones.
fn update_tasks_sql() -> String {
    format!(
        "UPDATE tasks t
         SET status = i.status, status_message = i.status_message, run_count = i.run_count,
             update_time = i.at, end_time = i.end_time
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[],
                     $6::timestamptz[], $7::bool[])
                  AS i(history_key, status, status_message, run_count, at, end_time, final)
         JOIN executions e ON e.history_key = i.history_key
         WHERE t.execution_id = e.id AND {FRESHER_THAN_STORED}
         RETURNING e.history_key, t.status"
    )
}

/// Rolls the moved tasks up into their executions, and fills in a payload the execution lacks (a
/// stale record may still carry the body sent when the stored one does not).
const UPDATE_EXECUTIONS: &str = "
    UPDATE executions e
    SET status = CASE WHEN i.moved THEN i.status ELSE e.status END,
        status_message = CASE WHEN i.moved THEN i.status_message ELSE e.status_message END,
        end_time = CASE WHEN i.moved THEN i.end_time ELSE e.end_time END,
        extra_attrs = CASE
            WHEN i.payload IS NOT NULL AND (i.moved OR NOT e.extra_attrs ? 'payload')
                THEN e.extra_attrs || jsonb_build_object('payload', i.payload)
            ELSE e.extra_attrs
        END
    FROM UNNEST($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
             AS i(history_key, moved, status, status_message, end_time, payload)
    WHERE e.history_key = i.history_key
      AND (i.moved OR (i.payload IS NOT NULL AND NOT e.extra_attrs ? 'payload'))";

/// One line per attempt; a line already there (a redelivered record) is kept as it is.
const INSERT_LOGS: &str = "
    INSERT INTO task_logs (task_id, attempt, time, status_code, error, duration_ms,
                           response_snippet)
    SELECT t.id, l.attempt, l.time, l.status_code, l.error, l.duration_ms, l.response_snippet
    FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::int4[], $5::text[], $6::int8[],
                $7::text[])
             AS l(history_key, attempt, time, status_code, error, duration_ms, response_snippet)
    JOIN executions e ON e.history_key = l.history_key
    JOIN tasks t ON t.execution_id = e.id
    ORDER BY t.id, l.attempt
    ON CONFLICT (task_id, attempt) DO NOTHING";

/// A batch's records for one key, folded into the one step that wins (applying them in order with
/// [`supersedes`] gives the same result as applying the winner alone).
struct Folded<'a> {
    winner: &'a DeliveryRecord,
    /// The earliest step's time: the task's creation and start time if the key is new.
    first_at: DateTime<Utc>,
    /// The winner's payload, else the newest one given before it.
    payload: Option<&'a str>,
}

/// Folds a batch per key, in the order keys first appear, and collects every attempt once.
fn fold(records: &[DeliveryRecord]) -> (Vec<Folded<'_>>, Vec<(Uuid, &AttemptLog)>) {
    let mut folded: Vec<Folded<'_>> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut logs = Vec::new();
    let mut seen_attempts = HashSet::new();
    for record in records {
        if let Some(attempt) = &record.attempt {
            if seen_attempts.insert((record.history_key, attempt.attempt)) {
                logs.push((record.history_key, attempt));
            }
        }
        match index.get(&record.history_key) {
            None => {
                index.insert(record.history_key, folded.len());
                folded.push(Folded {
                    winner: record,
                    first_at: record.at,
                    payload: record.payload.as_deref(),
                });
            }
            Some(&i) => {
                let entry = &mut folded[i];
                entry.first_at = entry.first_at.min(record.at);
                let current = (entry.winner.run_count, entry.winner.status);
                if supersedes((record.run_count, record.status), current) {
                    entry.winner = record;
                    entry.payload = record.payload.as_deref().or(entry.payload);
                } else if entry.payload.is_none() {
                    entry.payload = record.payload.as_deref();
                }
            }
        }
    }
    (folded, logs)
}

/// The end time a step gives: its time when the status is final.
fn end_time_of(status: TaskStatus, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    status.is_final().then_some(at)
}

/// The `q` filters shared by the count and the page.
struct Filter<'a> {
    sql: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

const SELECT_EXECUTION: &str = "
    SELECT e.id, e.vendor_type, e.vendor_id, e.status, e.status_message, e.trigger, e.event_type,
           e.extra_attrs, e.start_time, e.end_time,
           m.task_count, m.success_task_count, m.error_task_count, m.pending_task_count,
           m.running_task_count, m.scheduled_task_count, m.stopped_task_count
    FROM executions e
    CROSS JOIN LATERAL (
        SELECT count(*) AS task_count,
               count(*) FILTER (WHERE t.status = 'Success') AS success_task_count,
               count(*) FILTER (WHERE t.status = 'Error') AS error_task_count,
               count(*) FILTER (WHERE t.status = 'Pending') AS pending_task_count,
               count(*) FILTER (WHERE t.status = 'Running') AS running_task_count,
               count(*) FILTER (WHERE t.status = 'Scheduled') AS scheduled_task_count,
               count(*) FILTER (WHERE t.status = 'Stopped') AS stopped_task_count
        FROM tasks t WHERE t.execution_id = e.id
    ) m";

const SELECT_TASK: &str = "
    SELECT id, execution_id, status, status_message, run_count, extra_attrs, creation_time,
           update_time, start_time, end_time
    FROM tasks";

/// Runs one statement of a history batch in a single round trip: the parameter types are given
/// (`types`, matching the casts in `sql`), so no separate prepare step asks the server for them.
/// Deliberately not a prepared statement: PostgreSQL plans it for the arrays at hand (a cached
/// generic plan assumes 100 rows per `UNNEST`, and one made while the tables were small
/// hash-joined whole-table scans once they grew, measured), and the foreign-key checks keep
/// their own cached plans.
///
/// The parameters are paired with their types here, before the returned future first runs, so
/// a caller can start several statements and await them together (see `record_deliveries`).
fn query_typed<'a>(
    tx: &'a deadpool_postgres::Transaction<'a>,
    sql: &'a str,
    types: &[Type],
    params: &[&'a (dyn ToSql + Sync)],
) -> impl std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 'a {
    debug_assert_eq!(types.len(), params.len(), "one type per parameter");
    let typed: Vec<(&'a (dyn ToSql + Sync), Type)> =
        params.iter().copied().zip(types.iter().cloned()).collect();
    async move { tx.query_typed(sql, &typed).await }
}

/// Locks every key of a batch, in one order for all writers (see `record_deliveries`).
/// The sort is inside the subquery so the locks are taken while reading its sorted output (a
/// function in the select list of a sorting query may run before the sort).
const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(lock_key)
     FROM (SELECT DISTINCT hashtextextended(key::text, 7481) AS lock_key
           FROM unnest($1::uuid[]) AS key
           ORDER BY lock_key) AS sorted_keys";

/// Keeps the batch's policies from being deleted until it commits (see `record_deliveries`).
const LOCK_POLICIES: &str = "SELECT id FROM notification_policies
     WHERE id = ANY($1::bigint[]) ORDER BY id FOR KEY SHARE";

impl Database {
    /// Writes a batch of delivery steps in one transaction, with a fixed number of statements
    /// (array parameters through `UNNEST`), not one per record. Idempotent, and a stale step never
    /// moves a task back; see the module's design constraints.
    pub async fn record_deliveries(&self, records: &[DeliveryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (folded, logs) = fold(records);

        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        // 0. Several batches may touch one key at once (the matching stage's Pending and the
        // delivery stage's outcome, two writers in flight), and their statements lock rows in
        // whatever order the planner picks: measured, that deadlocked a few batches per thousand.
        // Taking a transaction-scoped advisory lock per key first, all in one global order,
        // makes writers of the same keys queue instead of deadlocking.
        let lock_keys: Vec<Uuid> = folded.iter().map(|f| f.winner.history_key).collect();
        // A policy deleted while this batch runs would fail the whole batch on the foreign
        // key (its records passed the existence check a moment earlier). Holding a key-share
        // lock on the policies makes such a delete wait for this commit, or, if it committed
        // first, the later statements see the policy gone and skip its records.
        let mut lock_policy_ids: Vec<i64> = folded.iter().map(|f| f.winner.policy_id).collect();
        lock_policy_ids.sort_unstable();
        lock_policy_ids.dedup();

        // 1. New keys: the execution and its one task, in one statement.
        let keys: Vec<Uuid> = folded.iter().map(|f| f.winner.history_key).collect();
        let policy_ids: Vec<i64> = folded.iter().map(|f| f.winner.policy_id).collect();
        let vendor_types: Vec<&str> = folded
            .iter()
            .map(|f| f.winner.vendor_type.as_str())
            .collect();
        let triggers: Vec<&str> = folded.iter().map(|f| f.winner.trigger.as_str()).collect();
        let event_types: Vec<String> = folded
            .iter()
            .map(|f| storable(&f.winner.event_type))
            .collect();
        let event_ids: Vec<Uuid> = folded.iter().map(|f| f.winner.event_id).collect();
        let statuses: Vec<&str> = folded.iter().map(|f| f.winner.status.as_str()).collect();
        let messages: Vec<String> = folded
            .iter()
            .map(|f| storable(&f.winner.status_message))
            .collect();
        let run_counts: Vec<i32> = folded.iter().map(|f| f.winner.run_count).collect();
        let payloads: Vec<Option<String>> =
            folded.iter().map(|f| f.payload.map(storable)).collect();
        let first_ats: Vec<DateTime<Utc>> = folded.iter().map(|f| f.first_at).collect();
        let ats: Vec<DateTime<Utc>> = folded.iter().map(|f| f.winner.at).collect();
        let end_times: Vec<Option<DateTime<Utc>>> = folded
            .iter()
            .map(|f| end_time_of(f.winner.status, f.winner.at))
            .collect();
        // One task per execution, so the execution's status is the roll-up of that one.
        let execution_statuses: Vec<TaskStatus> =
            folded.iter().map(|f| rollup(&[f.winner.status])).collect();
        let execution_status_names: Vec<&str> =
            execution_statuses.iter().map(|s| s.as_str()).collect();
        let execution_end_times: Vec<Option<DateTime<Utc>>> = folded
            .iter()
            .zip(&execution_statuses)
            .map(|(f, status)| end_time_of(*status, f.winner.at))
            .collect();
        let insert_new = query_typed(
            &tx,
            INSERT_NEW,
            &[
                Type::UUID_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::UUID_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
                Type::TEXT_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
            ],
            &[
                &keys,
                &policy_ids,
                &vendor_types,
                &triggers,
                &event_types,
                &event_ids,
                &statuses,
                &messages,
                &run_counts,
                &payloads,
                &first_ats,
                &ats,
                &end_times,
                &execution_status_names,
                &execution_end_times,
            ],
        );

        // 3. Every attempt's log line, once (a line already there is kept).
        let log_keys: Vec<Uuid> = logs.iter().map(|(key, _)| *key).collect();
        let attempts: Vec<i32> = logs.iter().map(|(_, log)| log.attempt).collect();
        let times: Vec<DateTime<Utc>> = logs.iter().map(|(_, log)| log.at).collect();
        let codes: Vec<Option<i32>> = logs
            .iter()
            .map(|(_, log)| log.status_code.map(i32::from))
            .collect();
        let errors: Vec<Option<String>> = logs
            .iter()
            .map(|(_, log)| log.error.as_deref().map(storable))
            .collect();
        let durations: Vec<i64> = logs
            .iter()
            .map(|(_, log)| i64::try_from(log.duration.as_millis()).unwrap_or(i64::MAX))
            .collect();
        let snippets: Vec<Option<String>> = logs
            .iter()
            .map(|(_, log)| log.response_snippet.as_deref().map(storable))
            .collect();
        let insert_logs = async {
            if logs.is_empty() {
                return Ok(Vec::new());
            }
            query_typed(
                &tx,
                INSERT_LOGS,
                &[
                    Type::UUID_ARRAY,
                    Type::INT4_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::INT4_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                ],
                &[
                    &log_keys, &attempts, &times, &codes, &errors, &durations, &snippets,
                ],
            )
            .await
        };

        // Steps 0, 1 and 3 go out together, pipelined on the connection in this order (each is
        // sent when first polled, and `try_join4` polls in order): one round trip instead of four.
        // Only step 2 needs step 1's answer. A failing statement aborts the transaction, so the
        // ones after it fail too and the batch fails whole.
        let lock_keys_done = query_typed(&tx, LOCK_KEYS, &[Type::UUID_ARRAY], &[&lock_keys]);
        let lock_policies_done =
            query_typed(&tx, LOCK_POLICIES, &[Type::INT8_ARRAY], &[&lock_policy_ids]);
        let (_, _, rows, _) =
            futures::future::try_join4(lock_keys_done, lock_policies_done, insert_new, insert_logs)
                .await?;
        let inserted: HashSet<Uuid> = rows
            .iter()
            .map(|row| row.try_get::<_, Uuid>(0))
            .collect::<Result<_, _>>()?;

        // 2. Known keys (a separate statement, so it sees rows a concurrent batch committed while
        // the insert waited on them): move the task forward, then roll it up into the execution.
        let known: Vec<&Folded<'_>> = folded
            .iter()
            .filter(|f| !inserted.contains(&f.winner.history_key))
            .collect();
        if !known.is_empty() {
            let keys: Vec<Uuid> = known.iter().map(|f| f.winner.history_key).collect();
            let statuses: Vec<&str> = known.iter().map(|f| f.winner.status.as_str()).collect();
            let messages: Vec<String> = known
                .iter()
                .map(|f| storable(&f.winner.status_message))
                .collect();
            let run_counts: Vec<i32> = known.iter().map(|f| f.winner.run_count).collect();
            let ats: Vec<DateTime<Utc>> = known.iter().map(|f| f.winner.at).collect();
            let end_times: Vec<Option<DateTime<Utc>>> = known
                .iter()
                .map(|f| end_time_of(f.winner.status, f.winner.at))
                .collect();
            let finals: Vec<bool> = known.iter().map(|f| f.winner.status.is_final()).collect();
            let moved_rows = query_typed(
                &tx,
                &update_tasks_sql(),
                &[
                    Type::UUID_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT4_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::BOOL_ARRAY,
                ],
                &[
                    &keys,
                    &statuses,
                    &messages,
                    &run_counts,
                    &ats,
                    &end_times,
                    &finals,
                ],
            )
            .await?;
            let mut moved: HashMap<Uuid, TaskStatus> = HashMap::new();
            for row in &moved_rows {
                let key: Uuid = row.try_get(0)?;
                moved.insert(key, parse_column(row, 1)?);
            }

            let mut moved_flags = Vec::with_capacity(known.len());
            let mut execution_statuses = Vec::with_capacity(known.len());
            let mut execution_end_times = Vec::with_capacity(known.len());
            for f in &known {
                let task_status = moved.get(&f.winner.history_key);
                // One task per execution: its status is the roll-up of that one.
                let status = task_status.map(|s| rollup(&[*s]));
                moved_flags.push(status.is_some());
                execution_statuses.push(status.map(|s| s.as_str()));
                execution_end_times.push(status.and_then(|s| end_time_of(s, f.winner.at)));
            }
            let payloads: Vec<Option<String>> =
                known.iter().map(|f| f.payload.map(storable)).collect();
            query_typed(
                &tx,
                UPDATE_EXECUTIONS,
                &[
                    Type::UUID_ARRAY,
                    Type::BOOL_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::TEXT_ARRAY,
                ],
                &[
                    &keys,
                    &moved_flags,
                    &execution_statuses,
                    &messages,
                    &execution_end_times,
                    &payloads,
                ],
            )
            .await?;
        }

        tx.commit().await?;
        Ok(())
    }

    /// One page of a policy's executions, newest first, and how many match in all.
    pub async fn list_executions(
        &self,
        policy_id: i64,
        query: &ExecutionQuery,
    ) -> Result<(Vec<Execution>, i64), StoreError> {
        let status = query.status.map(|s| s.as_str());
        let trigger = query.trigger.map(|t| t.as_str());
        let mut filter = Filter {
            sql: "e.vendor_id = $1".to_owned(),
            params: vec![&policy_id],
        };
        if let Some(status) = &status {
            filter.push("e.status", status);
        }
        if let Some(event_type) = &query.event_type {
            filter.push("e.event_type", event_type);
        }
        if let Some(trigger) = &trigger {
            filter.push("e.trigger", trigger);
        }

        let window = PageWindow::new(query.page, query.page_size);
        let mut sql = format!("{SELECT_EXECUTION} WHERE {} ORDER BY e.id DESC", filter.sql);
        let mut page_params = filter.params.clone();
        window.apply(&mut sql, &mut page_params);
        let (total, rows) = self
            .count_and_page(
                &format!("SELECT count(*) FROM executions e WHERE {}", filter.sql),
                &filter.params,
                &sql,
                &page_params,
            )
            .await?;
        let executions = rows
            .iter()
            .map(execution_from_row)
            .collect::<Result<_, _>>()?;
        Ok((executions, total))
    }

    /// The execution `id` if it is one of the policy's.
    pub async fn get_execution(
        &self,
        policy_id: i64,
        id: i64,
    ) -> Result<Option<Execution>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{SELECT_EXECUTION} WHERE e.id = $1 AND e.vendor_id = $2"),
                &[&id, &policy_id],
            )
            .await?
            .as_ref()
            .map(execution_from_row)
            .transpose()
    }

    /// One page of an execution's tasks, newest first, and how many it has. `page_size` 0: all.
    pub async fn list_tasks(
        &self,
        execution_id: i64,
        page: u64,
        page_size: u64,
    ) -> Result<(Vec<Task>, i64), StoreError> {
        let window = PageWindow::new(page, page_size);
        let mut sql = format!("{SELECT_TASK} WHERE execution_id = $1 ORDER BY id DESC");
        let mut page_params: Vec<&(dyn ToSql + Sync)> = vec![&execution_id];
        window.apply(&mut sql, &mut page_params);
        let (total, rows) = self
            .count_and_page(
                "SELECT count(*) FROM tasks WHERE execution_id = $1",
                &[&execution_id],
                &sql,
                &page_params,
            )
            .await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((tasks, total))
    }

    /// The task `task_id` if it is one of the execution's.
    pub async fn get_task(
        &self,
        execution_id: i64,
        task_id: i64,
    ) -> Result<Option<Task>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{SELECT_TASK} WHERE id = $1 AND execution_id = $2"),
                &[&task_id, &execution_id],
            )
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    /// A task's log as text: one line per attempt, oldest first, each ending in a newline (see
    /// [`format_log_line`]). Empty before the first attempt (or for an unknown task).
    pub async fn task_log(&self, task_id: i64) -> Result<String, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT attempt, time, status_code, error, duration_ms, response_snippet
                 FROM task_logs WHERE task_id = $1 ORDER BY attempt",
                &[&task_id],
            )
            .await?;
        let mut log = String::new();
        for row in &rows {
            let error: Option<String> = row.try_get("error")?;
            let snippet: Option<String> = row.try_get("response_snippet")?;
            log.push_str(&format_log_line(
                row.try_get("attempt")?,
                row.try_get("time")?,
                row.try_get("status_code")?,
                error.as_deref(),
                row.try_get("duration_ms")?,
                snippet.as_deref(),
            ));
            log.push('\n');
        }
        Ok(log)
    }

    /// The newest execution's start time per (policy, event type), for the given policies.
    /// Pairs never triggered are absent.
    pub async fn last_triggers(&self, policy_ids: &[i64]) -> Result<Vec<LastTrigger>, StoreError> {
        if policy_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // DISTINCT ON walks executions_vendor_event_type_idx: one row per pair, no sort of all.
        // Only registry events trigger: a test delivery (MANUAL) or a replay (RETRY) is not a new
        // event of that type.
        let rows = client
            .query(
                "SELECT DISTINCT ON (vendor_id, event_type) vendor_id, event_type, start_time
                 FROM executions
                 WHERE vendor_id = ANY($1) AND trigger = 'EVENT'
                 ORDER BY vendor_id, event_type, id DESC",
                &[&policy_ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LastTrigger {
                    policy_id: row.try_get(0)?,
                    event_type: row.try_get(1)?,
                    time: row.try_get(2)?,
                })
            })
            .collect()
    }
}

impl<'a> Filter<'a> {
    fn push(&mut self, column: &str, value: &'a (dyn ToSql + Sync)) {
        self.params.push(value);
        self.sql
            .push_str(&format!(" AND {column} = ${}", self.params.len()));
    }
}

/// A text column holding one of the enums' names.
fn parse_column<T>(
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

fn execution_from_row(row: &Row) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: row.try_get("id")?,
        vendor_type: parse_column(row, "vendor_type")?,
        vendor_id: row.try_get("vendor_id")?,
        status: parse_column(row, "status")?,
        status_message: row.try_get("status_message")?,
        metrics: TaskMetrics {
            task_count: row.try_get("task_count")?,
            success_task_count: row.try_get("success_task_count")?,
            error_task_count: row.try_get("error_task_count")?,
            pending_task_count: row.try_get("pending_task_count")?,
            running_task_count: row.try_get("running_task_count")?,
            scheduled_task_count: row.try_get("scheduled_task_count")?,
            stopped_task_count: row.try_get("stopped_task_count")?,
        },
        trigger: parse_column(row, "trigger")?,
        event_type: row.try_get("event_type")?,
        extra_attrs: row.try_get("extra_attrs")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
    })
}

fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    Ok(Task {
        id: row.try_get("id")?,
        execution_id: row.try_get("execution_id")?,
        status: parse_column(row, "status")?,
        status_message: row.try_get("status_message")?,
        run_count: row.try_get("run_count")?,
        extra_attrs: row.try_get("extra_attrs")?,
        creation_time: row.try_get("creation_time")?,
        update_time: row.try_get("update_time")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn rollup_is_harbors() {
        let check = |tasks: &[TaskStatus], expected: TaskStatus| {
            assert_eq!(rollup(tasks), expected, "{tasks:?}");
        };
        check(&[], Success);
        check(&[Success], Success);
        check(&[Pending], Running);
        check(&[Scheduled], Running);
        check(&[Running], Running);
        check(&[Error], Error);
        check(&[Stopped], Stopped);
        check(&[Success, Error, Scheduled], Running);
        check(&[Success, Error, Stopped], Error);
        check(&[Success, Stopped], Stopped);
        check(&[Success, Success], Success);
        check(&[Error, Pending], Running);
    }

    #[test]
    fn a_step_supersedes_only_when_as_far_along() {
        let check = |new: (i32, TaskStatus), stored: (i32, TaskStatus), expected: bool| {
            assert_eq!(supersedes(new, stored), expected, "{new:?} over {stored:?}");
        };
        check((2, Success), (1, Scheduled), true);
        check((1, Scheduled), (2, Success), false);
        check((1, Scheduled), (2, Scheduled), false);
        // The same step again: a no-op update.
        check((1, Success), (1, Success), true);
        // Equal counts: forward to final, never back from final.
        check((1, Error), (1, Running), true);
        check((1, Running), (1, Error), false);
        check((0, Running), (0, Pending), true);
        // A replay of a dead-lettered delivery goes on from Error.
        check((4, Running), (3, Error), true);
    }

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

    #[test]
    fn log_lines_read_well_and_stay_one_line() {
        let at: DateTime<Utc> = "2026-11-24T20:00:00Z".parse().unwrap();
        let check = |line: String, expected: &str| assert_eq!(line, expected);
        check(
            format_log_line(1, at, Some(503), None, 12, Some("busy")),
            "2026-11-24T20:00:00.000Z attempt 1: HTTP 503 in 12 ms: busy",
        );
        check(
            format_log_line(2, at, None, Some("connection refused"), 3, None),
            "2026-11-24T20:00:00.000Z attempt 2: no response in 3 ms: connection refused",
        );
        check(
            format_log_line(3, at, Some(200), None, 40, None),
            "2026-11-24T20:00:00.000Z attempt 3: HTTP 200 in 40 ms",
        );
        check(
            format_log_line(4, at, Some(500), Some("boom"), 5, Some("a\nb\r\u{7}c")),
            "2026-11-24T20:00:00.000Z attempt 4: HTTP 500 in 5 ms: boom; response: a\\nb\\rc",
        );
    }

    fn record(
        key: Uuid,
        run_count: i32,
        status: TaskStatus,
        payload: Option<&str>,
    ) -> DeliveryRecord {
        DeliveryRecord {
            history_key: key,
            policy_id: 1,
            vendor_type: VendorType::Webhook,
            trigger: ExecutionTrigger::Event,
            event_type: "PUSH_ARTIFACT".into(),
            event_id: Uuid::nil(),
            status,
            status_message: String::new(),
            run_count,
            payload: payload.map(str::to_owned),
            attempt: (run_count > 0).then(|| AttemptLog {
                attempt: run_count,
                at: DateTime::<Utc>::UNIX_EPOCH,
                status_code: Some(500),
                error: None,
                duration: Duration::from_millis(1),
                response_snippet: None,
            }),
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(i64::from(run_count)),
        }
    }

    #[test]
    fn folding_keeps_the_furthest_step_and_every_attempt() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let records = [
            record(a, 0, Pending, None),
            record(b, 1, Scheduled, Some("b1")),
            record(a, 2, Success, Some("a2")),
            record(a, 1, Scheduled, Some("a1")),
            record(a, 2, Success, Some("a2")),
        ];
        let (folded, logs) = fold(&records);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].winner.history_key, a);
        assert_eq!(folded[0].winner.status, Success);
        assert_eq!(folded[0].payload, Some("a2"));
        assert_eq!(folded[0].first_at, DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(folded[1].winner.history_key, b);
        let attempts: Vec<(Uuid, i32)> = logs.iter().map(|(k, l)| (*k, l.attempt)).collect();
        assert_eq!(attempts, vec![(b, 1), (a, 2), (a, 1)]);
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
    }
}
