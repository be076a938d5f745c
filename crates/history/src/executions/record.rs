//! [`Database::record_deliveries`]: the consumer's batch write of delivery steps, one transaction
//! with a fixed number of statements (see the module's design constraints).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::model::{parse_column, AttemptLog, DeliveryRecord, TaskStatus};
use super::rollup::{rollup, supersedes};
use crate::store::{Database, StoreError};

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

/// One line per attempt; a line already there (a redelivered record) is kept as it is. The lines
/// that are new also update their target's health (`target_health`), in the same statement (no
/// extra round trip): counted once however often a step is recorded, because only a line that
/// was inserted counts.
const INSERT_LOGS: &str = "
    WITH l AS (
        SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::int4[], $5::text[],
                             $6::int8[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                             $11::text[], $12::bool[], $13::text[])
            AS l(history_key, attempt, time, status_code, error, duration_ms, response_snippet,
                 policy_id, fingerprint, target_type, target_address, ok, message)
    ),
    -- Each line with its task, looked up once (a CTE used twice is computed once).
    j AS (
        SELECT t.id AS task_id, l.*
        FROM l
        JOIN executions e ON e.history_key = l.history_key
        JOIN tasks t ON t.execution_id = e.id
    ),
    inserted AS (
        INSERT INTO task_logs (task_id, attempt, time, status_code, error, duration_ms,
                               response_snippet)
        SELECT task_id, attempt, time, status_code, error, duration_ms, response_snippet
        FROM j
        ORDER BY task_id, attempt
        ON CONFLICT (task_id, attempt) DO NOTHING
        RETURNING task_id, attempt
    ),
    fresh AS (
        SELECT j.* FROM inserted i
        JOIN j USING (task_id, attempt)
        WHERE j.fingerprint IS NOT NULL
    ),
    per_target AS (
        SELECT policy_id, fingerprint,
               max(target_type) AS target_type,
               max(target_address) AS target_address,
               count(*) AS attempts,
               count(*) FILTER (WHERE ok) AS successes,
               max(time) FILTER (WHERE ok) AS last_success_at,
               max(time) FILTER (WHERE NOT ok) AS last_failure_at,
               (array_agg(message ORDER BY time DESC) FILTER (WHERE NOT ok))[1] AS last_failure,
               count(*) FILTER (WHERE NOT ok) AS failures
        FROM fresh GROUP BY policy_id, fingerprint
    ),
    tail_failures AS (
        -- Failures after the batch's last success (all of them when there was none).
        SELECT p.policy_id, p.fingerprint,
               count(f.*) FILTER (WHERE NOT f.ok AND (p.last_success_at IS NULL
                                                     OR f.time > p.last_success_at)) AS n
        FROM per_target p JOIN fresh f USING (policy_id, fingerprint)
        GROUP BY p.policy_id, p.fingerprint
    )
    INSERT INTO target_health AS h (policy_id, target_fingerprint, target_type, target_address,
                                    attempts, successes, success_rate, consecutive_failures,
                                    last_success_at, last_failure_at, last_failure, updated_at)
    SELECT p.policy_id, p.fingerprint, p.target_type, p.target_address, p.attempts, p.successes,
           p.successes::float8 / p.attempts, t.n, p.last_success_at, p.last_failure_at,
           p.last_failure, clock_timestamp()
    FROM per_target p JOIN tail_failures t USING (policy_id, fingerprint)
    ORDER BY p.policy_id, p.fingerprint
    ON CONFLICT (policy_id, target_fingerprint) DO UPDATE SET
        target_type = EXCLUDED.target_type,
        target_address = EXCLUDED.target_address,
        attempts = h.attempts + EXCLUDED.attempts,
        successes = h.successes + EXCLUDED.successes,
        success_rate = h.success_rate * power(0.9, EXCLUDED.attempts)
            + (1 - power(0.9, EXCLUDED.attempts)) * EXCLUDED.success_rate,
        consecutive_failures = CASE WHEN EXCLUDED.last_success_at IS NOT NULL
            THEN EXCLUDED.consecutive_failures
            ELSE h.consecutive_failures + EXCLUDED.consecutive_failures END,
        last_success_at = GREATEST(h.last_success_at, EXCLUDED.last_success_at),
        last_failure_at = GREATEST(h.last_failure_at, EXCLUDED.last_failure_at),
        last_failure = COALESCE(EXCLUDED.last_failure, h.last_failure),
        updated_at = EXCLUDED.updated_at";

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
fn fold(records: &[DeliveryRecord]) -> (Vec<Folded<'_>>, Vec<(&DeliveryRecord, &AttemptLog)>) {
    let mut folded: Vec<Folded<'_>> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut logs = Vec::new();
    let mut seen_attempts = HashSet::new();
    for record in records {
        if let Some(attempt) = &record.attempt {
            if seen_attempts.insert((record.history_key, attempt.attempt)) {
                logs.push((record, attempt));
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
) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 'a {
    debug_assert_eq!(types.len(), params.len(), "one type per parameter");
    let typed: Vec<(&'a (dyn ToSql + Sync), Type)> =
        params.iter().copied().zip(types.iter().cloned()).collect();
    async move { tx.query_typed(sql, &typed).await }
}

/// Locks every key of a batch, in one order for all writers (see `BatchLocks::lock_keys`).
/// The sort is inside the subquery so the locks are taken while reading its sorted output (a
/// function in the select list of a sorting query may run before the sort).
const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(lock_key)
     FROM (SELECT DISTINCT hashtextextended(key::text, 7481) AS lock_key
           FROM unnest($1::uuid[]) AS key
           ORDER BY lock_key) AS sorted_keys";

/// Keeps the batch's policies from being deleted until it commits (see
/// `BatchLocks::lock_policies`).
const LOCK_POLICIES: &str = "SELECT id FROM notification_policies
     WHERE id = ANY($1::bigint[]) ORDER BY id FOR KEY SHARE";

impl Database {
    /// Writes a batch of delivery steps in one transaction, with a fixed number of statements
    /// (array parameters through `UNNEST`), not one per record. Idempotent, and a stale step never
    /// moves a task back; see the module's design constraints.
    ///
    /// The steps: the batch is folded per key (`fold`); 0. its keys and policies are locked
    /// (`BatchLocks`); 1. new keys get their execution and task (`NewRows`); 3. every attempt
    /// gets its log line (`LogRows`); 2. the keys that were not new move forward (`KnownRows`).
    pub async fn record_deliveries(&self, records: &[DeliveryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (folded, logs) = fold(records);

        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        let locks = BatchLocks::of(&folded);
        let new_rows = NewRows::of(&folded);
        let log_rows = LogRows::of(&logs);
        // Steps 0, 1 and 3 go out together, pipelined on the connection in this order (each is
        // sent when first polled, and `try_join4` polls in order): one round trip instead of four.
        // Only step 2 needs step 1's answer. A failing statement aborts the transaction, so the
        // ones after it fail too and the batch fails whole.
        let (_, _, rows, _) = futures::future::try_join4(
            locks.lock_keys(&tx),
            locks.lock_policies(&tx),
            new_rows.insert(&tx),
            log_rows.insert(&tx),
        )
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
            let known_rows = KnownRows::of(&known);
            let moved = known_rows.move_tasks(&tx).await?;
            known_rows.roll_up(&tx, &moved).await?;
        }

        tx.commit().await?;
        Ok(())
    }
}

/// Step 0's parameters: the batch's keys and policies, to lock before writing.
struct BatchLocks {
    keys: Vec<Uuid>,
    /// Sorted, without duplicates.
    policy_ids: Vec<i64>,
}

impl BatchLocks {
    fn of(folded: &[Folded<'_>]) -> Self {
        let keys = folded.iter().map(|f| f.winner.history_key).collect();
        let mut policy_ids: Vec<i64> = folded.iter().map(|f| f.winner.policy_id).collect();
        policy_ids.sort_unstable();
        policy_ids.dedup();
        Self { keys, policy_ids }
    }

    /// Several batches may touch one key at once (the matching stage's Pending and the delivery
    /// stage's outcome, two writers in flight), and their statements lock rows in whatever order
    /// the planner picks: measured, that deadlocked a few batches per thousand. Taking a
    /// transaction-scoped advisory lock per key first, all in one global order, makes writers of
    /// the same keys queue instead of deadlocking.
    fn lock_keys<'t>(
        &'t self,
        tx: &'t deadpool_postgres::Transaction<'t>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 't {
        query_typed(tx, LOCK_KEYS, &[Type::UUID_ARRAY], &[&self.keys])
    }

    /// A policy deleted while this batch runs would fail the whole batch on the foreign key (its
    /// records passed the existence check a moment earlier). Holding a key-share lock on the
    /// policies makes such a delete wait for this commit, or, if it committed first, the later
    /// statements see the policy gone and skip its records.
    fn lock_policies<'t>(
        &'t self,
        tx: &'t deadpool_postgres::Transaction<'t>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 't {
        query_typed(tx, LOCK_POLICIES, &[Type::INT8_ARRAY], &[&self.policy_ids])
    }
}

/// Step 1's parameters, one row per folded key: a new key's execution and its one task, inserted
/// in one statement ([`INSERT_NEW`]).
struct NewRows<'a> {
    keys: Vec<Uuid>,
    policy_ids: Vec<i64>,
    vendor_types: Vec<&'a str>,
    triggers: Vec<&'a str>,
    event_types: Vec<String>,
    event_ids: Vec<Uuid>,
    statuses: Vec<&'a str>,
    messages: Vec<String>,
    run_counts: Vec<i32>,
    payloads: Vec<Option<String>>,
    first_ats: Vec<DateTime<Utc>>,
    ats: Vec<DateTime<Utc>>,
    end_times: Vec<Option<DateTime<Utc>>>,
    execution_statuses: Vec<&'a str>,
    execution_end_times: Vec<Option<DateTime<Utc>>>,
}

impl<'a> NewRows<'a> {
    fn of(folded: &[Folded<'a>]) -> Self {
        // One task per execution, so the execution's status is the roll-up of that one.
        let execution_statuses: Vec<TaskStatus> =
            folded.iter().map(|f| rollup(&[f.winner.status])).collect();
        Self {
            keys: folded.iter().map(|f| f.winner.history_key).collect(),
            policy_ids: folded.iter().map(|f| f.winner.policy_id).collect(),
            vendor_types: folded
                .iter()
                .map(|f| f.winner.vendor_type.as_str())
                .collect(),
            triggers: folded.iter().map(|f| f.winner.trigger.as_str()).collect(),
            event_types: folded
                .iter()
                .map(|f| storable(&f.winner.event_type))
                .collect(),
            event_ids: folded.iter().map(|f| f.winner.event_id).collect(),
            statuses: folded.iter().map(|f| f.winner.status.as_str()).collect(),
            messages: folded
                .iter()
                .map(|f| storable(&f.winner.status_message))
                .collect(),
            run_counts: folded.iter().map(|f| f.winner.run_count).collect(),
            payloads: folded.iter().map(|f| f.payload.map(storable)).collect(),
            first_ats: folded.iter().map(|f| f.first_at).collect(),
            ats: folded.iter().map(|f| f.winner.at).collect(),
            end_times: folded
                .iter()
                .map(|f| end_time_of(f.winner.status, f.winner.at))
                .collect(),
            execution_statuses: execution_statuses.iter().map(|s| s.as_str()).collect(),
            execution_end_times: folded
                .iter()
                .zip(&execution_statuses)
                .map(|(f, status)| end_time_of(*status, f.winner.at))
                .collect(),
        }
    }

    /// Inserts the new keys; the statement returns the keys it inserted.
    fn insert<'t>(
        &'t self,
        tx: &'t deadpool_postgres::Transaction<'t>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 't {
        query_typed(
            tx,
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
                &self.keys,
                &self.policy_ids,
                &self.vendor_types,
                &self.triggers,
                &self.event_types,
                &self.event_ids,
                &self.statuses,
                &self.messages,
                &self.run_counts,
                &self.payloads,
                &self.first_ats,
                &self.ats,
                &self.end_times,
                &self.execution_statuses,
                &self.execution_end_times,
            ],
        )
    }
}

/// Step 3's parameters: every attempt's log line, once ([`INSERT_LOGS`]; a line already there is
/// kept).
struct LogRows {
    keys: Vec<Uuid>,
    attempts: Vec<i32>,
    times: Vec<DateTime<Utc>>,
    codes: Vec<Option<i32>>,
    errors: Vec<Option<String>>,
    durations: Vec<i64>,
    snippets: Vec<Option<String>>,
    // The target's health: whose attempt it was, and how it went.
    policy_ids: Vec<i64>,
    fingerprints: Vec<Option<String>>,
    target_types: Vec<Option<String>>,
    target_addresses: Vec<Option<String>>,
    oks: Vec<bool>,
    messages: Vec<String>,
}

/// The longest failure message kept in `target_health`.
const MAX_HEALTH_MESSAGE_CHARS: usize = 512;

impl LogRows {
    fn of(logs: &[(&DeliveryRecord, &AttemptLog)]) -> Self {
        Self {
            policy_ids: logs.iter().map(|(r, _)| r.policy_id).collect(),
            fingerprints: logs
                .iter()
                .map(|(r, _)| r.target.as_ref().map(|t| t.fingerprint.clone()))
                .collect(),
            target_types: logs
                .iter()
                .map(|(r, _)| r.target.as_ref().map(|t| t.target_type.clone()))
                .collect(),
            target_addresses: logs
                .iter()
                .map(|(r, _)| r.target.as_ref().map(|t| storable(&t.address)))
                .collect(),
            oks: logs
                .iter()
                .map(|(r, _)| r.status == TaskStatus::Success)
                .collect(),
            messages: logs
                .iter()
                .map(|(r, _)| {
                    storable(&crate::policy::clip(
                        &r.status_message,
                        MAX_HEALTH_MESSAGE_CHARS,
                    ))
                })
                .collect(),
            keys: logs.iter().map(|(r, _)| r.history_key).collect(),
            attempts: logs.iter().map(|(_, log)| log.attempt).collect(),
            times: logs.iter().map(|(_, log)| log.at).collect(),
            codes: logs
                .iter()
                .map(|(_, log)| log.status_code.map(i32::from))
                .collect(),
            errors: logs
                .iter()
                .map(|(_, log)| log.error.as_deref().map(storable))
                .collect(),
            durations: logs
                .iter()
                .map(|(_, log)| i64::try_from(log.duration.as_millis()).unwrap_or(i64::MAX))
                .collect(),
            snippets: logs
                .iter()
                .map(|(_, log)| log.response_snippet.as_deref().map(storable))
                .collect(),
        }
    }

    /// Inserts the log lines; no statement when the batch made no attempt.
    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        if self.keys.is_empty() {
            return Ok(Vec::new());
        }
        query_typed(
            tx,
            INSERT_LOGS,
            &[
                Type::UUID_ARRAY,
                Type::INT4_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::BOOL_ARRAY,
                Type::TEXT_ARRAY,
            ],
            &[
                &self.keys,
                &self.attempts,
                &self.times,
                &self.codes,
                &self.errors,
                &self.durations,
                &self.snippets,
                &self.policy_ids,
                &self.fingerprints,
                &self.target_types,
                &self.target_addresses,
                &self.oks,
                &self.messages,
            ],
        )
        .await
    }
}

/// Step 2's parameters, one row per key that was already stored: its task moved forward
/// ([`update_tasks_sql`]), then rolled up into its execution ([`UPDATE_EXECUTIONS`]).
struct KnownRows<'a> {
    known: &'a [&'a Folded<'a>],
    keys: Vec<Uuid>,
    statuses: Vec<&'a str>,
    messages: Vec<String>,
    run_counts: Vec<i32>,
    ats: Vec<DateTime<Utc>>,
    end_times: Vec<Option<DateTime<Utc>>>,
    finals: Vec<bool>,
    payloads: Vec<Option<String>>,
}

impl<'a> KnownRows<'a> {
    fn of(known: &'a [&'a Folded<'a>]) -> Self {
        Self {
            known,
            keys: known.iter().map(|f| f.winner.history_key).collect(),
            statuses: known.iter().map(|f| f.winner.status.as_str()).collect(),
            messages: known
                .iter()
                .map(|f| storable(&f.winner.status_message))
                .collect(),
            run_counts: known.iter().map(|f| f.winner.run_count).collect(),
            ats: known.iter().map(|f| f.winner.at).collect(),
            end_times: known
                .iter()
                .map(|f| end_time_of(f.winner.status, f.winner.at))
                .collect(),
            finals: known.iter().map(|f| f.winner.status.is_final()).collect(),
            payloads: known.iter().map(|f| f.payload.map(storable)).collect(),
        }
    }

    /// Moves the tasks that this step is as far along as ([`FRESHER_THAN_STORED`]); returns the
    /// moved ones with their new status.
    async fn move_tasks(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<HashMap<Uuid, TaskStatus>, StoreError> {
        let moved_rows = query_typed(
            tx,
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
                &self.keys,
                &self.statuses,
                &self.messages,
                &self.run_counts,
                &self.ats,
                &self.end_times,
                &self.finals,
            ],
        )
        .await?;
        let mut moved: HashMap<Uuid, TaskStatus> = HashMap::new();
        for row in &moved_rows {
            let key: Uuid = row.try_get(0)?;
            moved.insert(key, parse_column(row, 1)?);
        }
        Ok(moved)
    }

    /// Rolls the moved tasks up into their executions, and fills in a payload an execution lacks.
    async fn roll_up(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        moved: &HashMap<Uuid, TaskStatus>,
    ) -> Result<(), StoreError> {
        let mut moved_flags = Vec::with_capacity(self.known.len());
        let mut execution_statuses = Vec::with_capacity(self.known.len());
        let mut execution_end_times = Vec::with_capacity(self.known.len());
        for f in self.known {
            let task_status = moved.get(&f.winner.history_key);
            // One task per execution: its status is the roll-up of that one.
            let status = task_status.map(|s| rollup(&[*s]));
            moved_flags.push(status.is_some());
            execution_statuses.push(status.map(|s| s.as_str()));
            execution_end_times.push(status.and_then(|s| end_time_of(s, f.winner.at)));
        }
        query_typed(
            tx,
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
                &self.keys,
                &moved_flags,
                &execution_statuses,
                &self.messages,
                &execution_end_times,
                &self.payloads,
            ],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::model::{ExecutionTrigger, VendorType};
    use super::*;
    use TaskStatus::*;

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
            target: None,
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
        let attempts: Vec<(Uuid, i32)> = logs
            .iter()
            .map(|(k, l)| (k.history_key, l.attempt))
            .collect();
        assert_eq!(attempts, vec![(b, 1), (a, 2), (a, 1)]);
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
    }
}
