//! The `target_health` table: each policy target's recent success rate, consecutive failures,
//! last success and last failure, and its circuit (issue 15: receiver health and the circuit
//! breaker).
//!
//! Design constraints:
//! - Written by the history batches themselves (`executions::record`, the log-line statement):
//!   an attempt costs no extra round trip, and an attempt recorded twice counts once.
//! - The circuit's transitions happen here, in single statements every consumer may run
//!   ([`Database::open_circuits_due`], [`Database::close_recovered_circuits`]): a row moves once,
//!   so only the consumer whose statement moved it logs the transition.
//! - One probe per open circuit and interval across all consumers: [`Database::claim_probe`]
//!   moves `next_probe_at` forward in the statement that checks it.
//! - Shared state, not per process: a circuit opened by one consumer holds for all of them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::store::{Database, StoreError};

/// One target's health as stored, with its policy's names.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetHealth {
    pub policy_id: i64,
    pub policy_name: String,
    /// `None`: a system-wide policy.
    pub project: Option<String>,
    pub target_fingerprint: String,
    pub target_type: String,
    /// Redacted as the policy API shows it.
    pub target_address: String,
    /// `open` (the circuit is open), `failing` (the last attempt failed) or `healthy`.
    pub state: HealthState,
    pub attempts: i64,
    pub successes: i64,
    /// Exponentially weighted over attempts (the newest weighs 0.1).
    pub success_rate: f64,
    pub consecutive_failures: i32,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// The last failed attempt's history message (the vendor's words scrubbed, no credential).
    pub last_failure: Option<String>,
    pub circuit_opened_at: Option<DateTime<Utc>>,
    pub next_probe_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// The health API's `state` filter and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Open,
    Failing,
    Healthy,
}

impl HealthState {
    pub const ALL: [HealthState; 3] = [
        HealthState::Open,
        HealthState::Failing,
        HealthState::Healthy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Open => "open",
            HealthState::Failing => "failing",
            HealthState::Healthy => "healthy",
        }
    }

    pub fn parse(text: &str) -> Option<HealthState> {
        HealthState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What the health list shows.
#[derive(Debug, Clone, Default)]
pub struct HealthQuery {
    pub state: Option<HealthState>,
    /// A project's name.
    pub project: Option<String>,
    pub policy_id: Option<i64>,
    /// 1-based.
    pub page: i64,
    pub page_size: i64,
}

/// An open circuit, as the consumers keep it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCircuit {
    pub policy_id: i64,
    pub target_fingerprint: String,
    pub opened_at: DateTime<Utc>,
    pub next_probe_at: DateTime<Utc>,
}

/// A circuit that just opened or closed.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitChange {
    pub policy_id: i64,
    pub target_fingerprint: String,
    pub target_type: String,
    pub target_address: String,
    pub consecutive_failures: i32,
    pub last_failure: Option<String>,
}

const STATE_SQL: &str = "CASE WHEN h.circuit_opened_at IS NOT NULL THEN 'open'
                              WHEN h.consecutive_failures > 0 THEN 'failing'
                              ELSE 'healthy' END";

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn change(row: &Row) -> Result<CircuitChange, StoreError> {
    Ok(CircuitChange {
        policy_id: row.try_get(0)?,
        target_fingerprint: row.try_get(1)?,
        target_type: row.try_get(2)?,
        target_address: row.try_get(3)?,
        consecutive_failures: row.try_get(4)?,
        last_failure: row.try_get(5)?,
    })
}

const CHANGE_COLUMNS: &str = "policy_id, target_fingerprint, target_type, target_address,
                              consecutive_failures, last_failure";

/// A circuit open long enough to disable its target, claimed by one consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct DisableDue {
    pub change: CircuitChange,
    pub circuit_opened_at: DateTime<Utc>,
}

impl Database {
    /// Claims every circuit open for longer than `after`: its health row is reset (circuit
    /// closed, failures cleared), so exactly one consumer gets each, which then disables the
    /// target ([`Database::disable_target`]).
    pub async fn claim_disable_due(&self, after: Duration) -> Result<Vec<DisableDue>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE target_health AS h
                     SET circuit_opened_at = NULL, next_probe_at = NULL, failed_probes = 0,
                         consecutive_failures = 0
                     FROM (SELECT policy_id, target_fingerprint, circuit_opened_at AS opened
                           FROM target_health
                           WHERE circuit_opened_at < clock_timestamp() - $1 * interval '1 millisecond'
                           FOR UPDATE) AS due
                     WHERE h.policy_id = due.policy_id
                       AND h.target_fingerprint = due.target_fingerprint
                     RETURNING h.policy_id, h.target_fingerprint, h.target_type, h.target_address,
                               h.last_failure, due.opened",
                &[&millis(after)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DisableDue {
                    change: CircuitChange {
                        policy_id: row.try_get(0)?,
                        target_fingerprint: row.try_get(1)?,
                        target_type: row.try_get(2)?,
                        target_address: row.try_get(3)?,
                        consecutive_failures: 0,
                        last_failure: row.try_get(4)?,
                    },
                    circuit_opened_at: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Marks target `index` of policy `policy_id` disabled (`"disabled": true`, shown by the
    /// policy API; a `PUT` without it enables it again), bumping the generation so every consumer
    /// sees it. `false` when the policy or the target is gone.
    pub async fn disable_target(&self, policy_id: i64, index: usize) -> Result<bool, StoreError> {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .execute(
                "UPDATE notification_policies
                 SET targets = jsonb_set(targets, ARRAY[$2::text, 'disabled'], 'true'::jsonb),
                     update_time = now()
                 WHERE id = $1 AND jsonb_array_length(targets) > $2",
                &[&policy_id, &index],
            )
            .await?;
        if changed > 0 {
            crate::settings::bump_generation(&tx).await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Opens the circuit of every closed target with at least `failures` consecutive failed
    /// attempts; its first probe is due `probe_interval` later. Returns those it opened.
    pub async fn open_circuits_due(
        &self,
        failures: u32,
        probe_interval: Duration,
    ) -> Result<Vec<CircuitChange>, StoreError> {
        let failures = i32::try_from(failures).unwrap_or(i32::MAX);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE target_health
                     SET circuit_opened_at = clock_timestamp(),
                         next_probe_at = clock_timestamp() + $2 * interval '1 millisecond',
                         failed_probes = 0
                     WHERE circuit_opened_at IS NULL AND consecutive_failures >= $1
                     RETURNING {CHANGE_COLUMNS}"
                ),
                &[&failures, &millis(probe_interval)],
            )
            .await?;
        rows.iter().map(change).collect()
    }

    /// Closes the circuit of every open target whose last attempt succeeded (a probe).
    pub async fn close_recovered_circuits(&self) -> Result<Vec<CircuitChange>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE target_health
                     SET circuit_opened_at = NULL, next_probe_at = NULL, failed_probes = 0
                     WHERE circuit_opened_at IS NOT NULL AND consecutive_failures = 0
                     RETURNING {CHANGE_COLUMNS}"
                ),
                &[],
            )
            .await?;
        rows.iter().map(change).collect()
    }

    /// Every open circuit.
    pub async fn open_circuits(&self) -> Result<Vec<OpenCircuit>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT policy_id, target_fingerprint, circuit_opened_at, next_probe_at
                 FROM target_health WHERE circuit_opened_at IS NOT NULL",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(OpenCircuit {
                    policy_id: row.try_get(0)?,
                    target_fingerprint: row.try_get(1)?,
                    opened_at: row.try_get(2)?,
                    next_probe_at: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Claims the next probe of an open circuit when it is due: `Some(when the one after is
    /// due)` for the one caller that gets it, `None` for everyone else (not due, claimed by
    /// another consumer, or the circuit closed). Each claim doubles the interval, up to `max`.
    pub async fn claim_probe(
        &self,
        policy_id: i64,
        fingerprint: &str,
        interval: Duration,
        max: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE target_health
                 SET next_probe_at = clock_timestamp()
                         + LEAST($3 * power(2, LEAST(failed_probes, 30)), $4)
                           * interval '1 millisecond',
                     failed_probes = failed_probes + 1
                 WHERE policy_id = $1 AND target_fingerprint = $2
                   AND circuit_opened_at IS NOT NULL AND next_probe_at <= clock_timestamp()
                 RETURNING next_probe_at",
                &[
                    &policy_id,
                    &fingerprint,
                    &millis(interval),
                    &millis(max.max(interval)),
                ],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// The health list: open circuits first, then the most consecutive failures, then the
    /// lowest success rate. Returns one page and the total.
    pub async fn target_health(
        &self,
        query: &HealthQuery,
    ) -> Result<(Vec<TargetHealth>, i64), StoreError> {
        let state = query.state.map(HealthState::as_str);
        let page_size = query.page_size.clamp(1, 100);
        let offset = (query.page.max(1) - 1).saturating_mul(page_size);
        let filter = format!(
            "FROM target_health h
             JOIN notification_policies p ON p.id = h.policy_id
             LEFT JOIN projects pr ON pr.id = p.project_id
             WHERE ($1::text IS NULL OR {STATE_SQL} = $1)
               AND ($2::text IS NULL OR pr.name = $2)
               AND ($3::bigint IS NULL OR h.policy_id = $3)"
        );
        let client = self.client().await?;
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) {filter}"),
                &[&state, &query.project, &query.policy_id],
            )
            .await?
            .try_get(0)?;
        let rows = client
            .query(
                &format!(
                    "SELECT h.policy_id, p.name, pr.name, h.target_fingerprint, h.target_type,
                            h.target_address, {STATE_SQL}, h.attempts, h.successes,
                            h.success_rate, h.consecutive_failures, h.last_success_at,
                            h.last_failure_at, h.last_failure, h.circuit_opened_at,
                            h.next_probe_at, h.updated_at
                     {filter}
                     ORDER BY (h.circuit_opened_at IS NULL), h.consecutive_failures DESC,
                              h.success_rate, h.policy_id, h.target_fingerprint
                     LIMIT $4 OFFSET $5"
                ),
                &[
                    &state,
                    &query.project,
                    &query.policy_id,
                    &page_size,
                    &offset,
                ],
            )
            .await?;
        let health = rows
            .iter()
            .map(|row| {
                let state: String = row.try_get(6)?;
                Ok(TargetHealth {
                    policy_id: row.try_get(0)?,
                    policy_name: row.try_get(1)?,
                    project: row.try_get(2)?,
                    target_fingerprint: row.try_get(3)?,
                    target_type: row.try_get(4)?,
                    target_address: row.try_get(5)?,
                    state: HealthState::parse(&state).unwrap_or(HealthState::Healthy),
                    attempts: row.try_get(7)?,
                    successes: row.try_get(8)?,
                    success_rate: row.try_get(9)?,
                    consecutive_failures: row.try_get(10)?,
                    last_success_at: row.try_get(11)?,
                    last_failure_at: row.try_get(12)?,
                    last_failure: row.try_get(13)?,
                    circuit_opened_at: row.try_get(14)?,
                    next_probe_at: row.try_get(15)?,
                    updated_at: row.try_get(16)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((health, total))
    }
}
