//! Bounded history: `Database::sweep_history` deletes finished executions beyond a per-policy count
//! and older than a maximum age (SPEC §5; Harbor keeps the newest 50 per policy).
//!
//! Design constraints:
//! - Only finished executions (Stopped, Error, Success) are deleted: an unfinished one is a delivery
//!   still in flight, and its next step would otherwise recreate it with its history cut short.
//! - Deletes go in batches of at most `batch` executions per statement, each its own transaction,
//!   so the recorder's writes never wait long on the sweeper's row locks. Tasks and log lines go
//!   with their executions (`ON DELETE CASCADE`).
//! - Every consumer process may run a sweeper: they serialise on a session advisory lock taken with
//!   `pg_try_advisory_lock`, and a sweeper that finds it held does nothing (an empty report).
//! - A session lock outlives a transaction, so the connection holding it must never go back to the
//!   pool still holding it: it is unlocked explicitly, and if the sweep fails or is cancelled
//!   midway the connection is taken out of the pool and closed, which releases the lock.
//! - Deleted rows are only dead tuples until a VACUUM marks their space reusable. A sweep deletes a
//!   whole interval's rows at once, and autovacuum may be off (as on the CI machine), slow to start
//!   (a 20 % scale factor, a one-minute naptime) or throttled by its cost delay: measured without
//!   it, the tables grew by the full insert rate and each sweep took longer than the last (issue
//!   16). So a sweep that deleted anything ends with `VACUUM (SKIP_LOCKED, ANALYZE)` of the three
//!   tables, under the same lock (one vacuum at a time; a table autovacuum is already on is
//!   skipped, not waited for). `vacuum = false` leaves it to autovacuum.
//! - The sweep shares PostgreSQL with the recorder, and a delete batch or a vacuum is CPU and I/O
//!   the recorder's commits wait behind (measured in a backlog drain: windows with a sweep running
//!   delivered 14 % less, issue 16). So a sweep paces itself: after each delete batch it pauses
//!   `pause_ratio` times as long as the batch took (1.0: it deletes at most half the time), and its
//!   vacuum runs with `vacuum_cost_delay` set to autovacuum's throttle ([`PACED_VACUUM_COST_DELAY`]).
//!   A paced sweep takes longer; at `pause_ratio` r it needs about (1 + r) times its unpaced time,
//!   which must stay well within the sweep interval (docs/deployment.md). 0 does not pace.
//! - A ratio paces each batch, not the sweep: when the recorder keeps PostgreSQL busy every batch
//!   is slow and so is every pause, and a sweep of a backlog's rows never finished (issue 16).
//!   `spread` paces to a deadline instead: the count rule's deletions are counted first (the same
//!   `GROUP BY`), and each batch waits until the share of `spread` its rows stand for has passed.
//!   The sweep then deletes at a steady rate (rows / spread) rather than in a burst; a batch that
//!   is behind the deadline does not wait. The age rule's rows, not counted up front, go at the
//!   same rate. Both paces may be set; each batch waits for the longer of the two. Measured, a
//!   spread sweep did not make a drain flatter and its throttled vacuum left the tables larger,
//!   so it is off by default (issue 16).
//! - Deleting costs per deleted row (the cascade, the index entries, then the vacuum), and on a
//!   busy machine that is CPU the recorder does not get: a backlog drain dipped in every window a
//!   sweep ran in, paced or not (issue 16). When the rows a sweep keeps (each policy's newest
//!   `keep_per_policy` finished executions not past the age limit, every unfinished one, and their
//!   tasks and log lines) are at most `compact_share` of the executions, the sweep *compacts*
//!   instead: in one transaction it locks the three tables (ACCESS EXCLUSIVE), copies the kept
//!   rows into temporary tables, `TRUNCATE`s the three and puts the kept rows back with their ids
//!   (`OVERRIDING SYSTEM VALUE`; the identity sequences are not reset). Its cost follows what is
//!   kept, it leaves no dead tuples (no vacuum follows), and the recorder's commits wait for the
//!   transaction (about a second for 250 000 executions, measured in docs/benchmarks.md). It does
//!   not `ANALYZE` the compacted tables: statistics taken of a near-empty table, with autovacuum
//!   off to refresh them, made the recorder's statements slower and slower as the table refilled
//!   (a drain fell from 4000 to 700 deliveries/s until the next sweep); without, a truncated
//!   table's statistics are unknown and the planner estimates from its current size. The locks
//!   are taken with a `lock_timeout` ([`COMPACT_LOCK_TIMEOUT`]) far below PostgreSQL's `deadlock_timeout` (1 s): a sweep that
//!   cannot have them at once gives up and retries, then falls back to deleting, so a recorder
//!   transaction is never chosen as a deadlock's victim.
//! - One `GROUP BY` per sweep counts each policy's finished and unfinished executions
//!   (`PolicyCounts`); both the choice to compact (`worth_compacting`, pure) and the count
//!   rule's deletions start from it.
//! - Deletes go per policy, along `executions_vendor_id_idx` and `executions_vendor_end_time_idx`,
//!   in batches. Finding the policies over their count limit does read every execution's policy
//!   id and status once per sweep (the `GROUP BY` of `PolicyCounts`); at millions of rows that
//!   is a deleting sweep's main cost, and a per-policy counter would be the next step.

use std::time::Duration;

use chrono::Utc;

use crate::store::{Database, StoreError};

/// The sweepers' advisory lock key: "rrsweep!" in ASCII.
const SWEEP_LOCK: i64 = 0x7272_7377_6565_7021;

/// The statuses a sweep may delete, as SQL.
const FINISHED: &str = "status IN ('Stopped', 'Error', 'Success')";

/// How long a compacting sweep waits for each table lock before it gives up and tries again
/// (`COMPACT_LOCK_TRIES` times, then deletes instead): below `deadlock_timeout` (1 s by default).
pub const COMPACT_LOCK_TIMEOUT: &str = "200ms";
const COMPACT_LOCK_TRIES: u32 = 5;

/// `vacuum_cost_delay` of a paced sweep's vacuum: autovacuum's default throttle since
/// PostgreSQL 12 (a manual VACUUM has none).
pub const PACED_VACUUM_COST_DELAY: &str = "2ms";

/// What a sweep deletes, and how gently (the `history_sweep_*` and retention configuration keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepRules {
    /// Finished executions kept per policy (Harbor keeps 50).
    pub keep_per_policy: usize,
    /// Finished executions that ended longer ago than this are deleted whatever their count.
    /// `Duration::MAX` (or any age too large for a date) turns the age rule off.
    pub max_age: Duration,
    /// Executions deleted per statement (at least 1).
    pub batch: usize,
    /// Vacuum the history tables after a sweep that deleted rows.
    pub vacuum: bool,
    /// After each delete batch, pause this many times as long as the batch took; 0 does not pause.
    /// Above 0 the vacuum is throttled too (see the module's design constraints).
    pub pause_ratio: f64,
    /// Spread the count rule's deletions evenly over this long (a steady rate instead of a
    /// burst); zero deletes as fast as it can. Non-zero throttles the vacuum too.
    pub spread: Duration,
    /// Compact instead of deleting when what the rules keep is at most this share of the
    /// executions (0 never compacts): the kept rows are copied aside, the three tables truncated
    /// and the kept rows put back, in one transaction (see the module's design constraints).
    pub compact_share: f64,
}

impl SweepRules {
    /// The given limits, unpaced and without a vacuum.
    pub fn new(keep_per_policy: usize, max_age: Duration, batch: usize) -> Self {
        Self {
            keep_per_policy,
            max_age,
            batch,
            vacuum: false,
            pause_ratio: 0.0,
            spread: Duration::ZERO,
            compact_share: 0.0,
        }
    }

    /// Whether the sweep pauses between batches and throttles its vacuum.
    fn paced(&self) -> bool {
        self.ratio_paced() || !self.spread.is_zero()
    }

    fn ratio_paced(&self) -> bool {
        self.pause_ratio > 0.0 && self.pause_ratio.is_finite()
    }

    /// How long to pause after a delete batch that took `took` (the ratio's pace alone).
    fn pause_after(&self, took: Duration) -> Duration {
        if self.ratio_paced() {
            took.mul_f64(self.pause_ratio.min(100.0))
        } else {
            Duration::ZERO
        }
    }
}

/// The deadline a spread sweep keeps: `total` rows evenly over `spread` from `started`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    started: std::time::Instant,
    spread: Duration,
    /// The count rule's rows to delete; 0 when there is nothing to spread.
    total: u64,
    /// Rows deleted so far (by either rule).
    deleted: u64,
}

impl Pace {
    fn new(spread: Duration, total: u64) -> Self {
        Self {
            started: std::time::Instant::now(),
            spread,
            total,
            deleted: 0,
        }
    }

    /// How long to wait, `elapsed` into the sweep, before deleting past the rows already deleted:
    /// until the share of the spread those rows stand for has passed (never more than the spread
    /// itself per wait, so a miscount cannot stall the sweep).
    fn wait(&self, elapsed: Duration) -> Duration {
        if self.spread.is_zero() || self.total == 0 {
            return Duration::ZERO;
        }
        let due = self.spread.mul_f64(self.deleted as f64 / self.total as f64);
        due.saturating_sub(elapsed).min(self.spread)
    }
}

/// What one sweep deleted (executions; their tasks and log lines went with them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Finished executions beyond the newest `keep_per_policy` of their policy.
    pub deleted_by_count: u64,
    /// Finished executions that ended before `now - max_age` (among those the count left).
    pub deleted_by_age: u64,
    /// Whether the sweep vacuumed the history tables afterwards.
    pub vacuumed: bool,
    /// Whether the sweep compacted the tables (kept rows copied aside, tables truncated) instead
    /// of deleting.
    pub compacted: bool,
}

/// The pooled connection holding the sweep lock. Dropped without [`SweepLock::release`] (an error or
/// a cancelled future), it closes the connection instead of returning it to the pool, so the lock
/// cannot leak into another caller's session.
struct SweepLock {
    client: Option<deadpool_postgres::Object>,
}

impl SweepLock {
    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("the sweep lock was already released".into()))
    }

    async fn release(mut self) -> Result<(), StoreError> {
        if let Some(client) = self.client.take() {
            match client
                .execute("SELECT pg_advisory_unlock($1)", &[&SWEEP_LOCK])
                .await
            {
                // Back to the pool, lock released.
                Ok(_) => drop(client),
                Err(error) => {
                    drop(deadpool_postgres::Object::take(client));
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }
}

impl Drop for SweepLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool and dropped: the connection closes and the lock goes with it.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Database {
    /// Deletes finished executions beyond the newest `keep_per_policy` per policy, then finished
    /// ones that ended more than `max_age` ago, `batch` at a time, pausing between batches as
    /// `rules` say. Returns an empty report when another sweeper holds the lock. With `vacuum`, a
    /// sweep that deleted anything vacuums the history tables.
    pub async fn sweep_history(&self, rules: &SweepRules) -> Result<SweepReport, StoreError> {
        let client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            tracing::debug!(message = "History sweep skipped: another sweeper holds the lock.");
            return Ok(SweepReport::default());
        }
        let lock = SweepLock {
            client: Some(client),
        };
        let counts = policy_counts(lock.client()?).await?;
        let compacted = if worth_compacting(&counts, rules) {
            compact(lock.client()?, rules).await?
        } else {
            None
        };
        let mut report = match compacted {
            Some(report) => report,
            None => sweep(lock.client()?, rules, &counts).await?,
        };
        if !report.compacted && rules.vacuum && report.deleted_by_count + report.deleted_by_age > 0
        {
            let throttle = if rules.paced() {
                PACED_VACUUM_COST_DELAY
            } else {
                "0"
            };
            // Children first: their rows went with the executions (ON DELETE CASCADE). The cost
            // delay is set for this session's vacuum only, and reset before the connection goes
            // back to the pool (a failure closes the connection instead, see `SweepLock`). Three
            // statements, not one string: several statements in one simple query run as one
            // transaction, which VACUUM refuses.
            let client = lock.client()?;
            client
                .batch_execute(&format!("SET vacuum_cost_delay = '{throttle}'"))
                .await?;
            client
                .batch_execute("VACUUM (SKIP_LOCKED, ANALYZE) task_logs, tasks, executions")
                .await?;
            client.batch_execute("RESET vacuum_cost_delay").await?;
            report.vacuumed = true;
        }
        lock.release().await?;
        Ok(report)
    }
}

async fn sweep(
    client: &deadpool_postgres::Object,
    rules: &SweepRules,
    counts: &[PolicyCounts],
) -> Result<SweepReport, StoreError> {
    let keep = i64::try_from(rules.keep_per_policy).unwrap_or(i64::MAX);
    let mut report = SweepReport::default();

    // By count: only policies with more finished executions than they keep, and how many more
    // (what a spread sweep paces).
    let total = counts.iter().map(|c| c.beyond(rules.keep_per_policy)).sum();
    let mut pace = Pace::new(rules.spread, total);
    let over = counts
        .iter()
        .filter(|c| c.beyond(rules.keep_per_policy) > 0)
        .map(|c| c.policy_id);
    for policy_id in over {
        // The newest finished execution beyond the kept ones; it and every older finished one go.
        // Executions that finish meanwhile are newer, so they can only make the sweep keep more.
        let cutoff: Option<i64> = client
            .query_opt(
                &format!(
                    "SELECT id FROM executions WHERE vendor_id = $1 AND {FINISHED}
                     ORDER BY id DESC OFFSET $2 LIMIT 1"
                ),
                &[&policy_id, &keep],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let Some(cutoff) = cutoff else { continue };
        report.deleted_by_count += delete_in_batches(
            client,
            &format!(
                "DELETE FROM executions WHERE id IN (
                     SELECT id FROM executions
                     WHERE vendor_id = $1 AND id <= $2 AND {FINISHED}
                     ORDER BY id LIMIT $3)"
            ),
            policy_id,
            &cutoff,
            rules,
            &mut pace,
        )
        .await?;
    }

    // By age. An age that does not fit a date means "no age limit".
    if let Some(cutoff) = age_cutoff(rules) {
        let policies: Vec<i64> = client
            .query("SELECT id FROM notification_policies ORDER BY id", &[])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for policy_id in policies {
            report.deleted_by_age += delete_in_batches(
                client,
                &format!(
                    "DELETE FROM executions WHERE id IN (
                         SELECT id FROM executions
                         WHERE vendor_id = $1 AND end_time IS NOT NULL AND end_time < $2
                           AND {FINISHED}
                         ORDER BY end_time LIMIT $3)"
                ),
                policy_id,
                &cutoff,
                rules,
                &mut pace,
            )
            .await?;
        }
    }
    Ok(report)
}

/// The age limit's cutoff; `None` when `max_age` does not fit a date ("no age limit").
fn age_cutoff(rules: &SweepRules) -> Option<chrono::DateTime<Utc>> {
    chrono::Duration::from_std(rules.max_age)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
}

/// One policy's executions, as a sweep finds them before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PolicyCounts {
    policy_id: i64,
    finished: u64,
    unfinished: u64,
}

impl PolicyCounts {
    /// Finished executions beyond the newest `keep` (what the count rule deletes).
    fn beyond(&self, keep: usize) -> u64 {
        self.finished
            .saturating_sub(u64::try_from(keep).unwrap_or(u64::MAX))
    }
}

/// Every policy's finished and unfinished executions: one `GROUP BY` over `executions`.
async fn policy_counts(
    client: &deadpool_postgres::Object,
) -> Result<Vec<PolicyCounts>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT vendor_id, count(*) FILTER (WHERE {FINISHED}),
                        count(*) FILTER (WHERE NOT ({FINISHED}))
                 FROM executions GROUP BY vendor_id"
            ),
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let count = |i| {
                row.try_get::<_, i64>(i)
                    .map(|n| u64::try_from(n).unwrap_or(0))
            };
            Ok(PolicyCounts {
                policy_id: row.try_get(0)?,
                finished: count(1)?,
                unfinished: count(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}

/// Whether a sweep should compact: the count rule deletes something, and what it keeps (each
/// policy's newest `keep_per_policy` finished executions and every unfinished one) is at most
/// `compact_share` of the executions. An estimate taken before the transaction (rows change
/// meanwhile); the age rule can only make the kept share smaller.
fn worth_compacting(counts: &[PolicyCounts], rules: &SweepRules) -> bool {
    if rules.compact_share <= 0.0 {
        return false;
    }
    let rows: u64 = counts.iter().map(|c| c.finished + c.unfinished).sum();
    let beyond: u64 = counts.iter().map(|c| c.beyond(rules.keep_per_policy)).sum();
    let kept = rows - beyond;
    beyond > 0 && kept as f64 <= rules.compact_share * rows as f64
}

/// Compacts the history tables; `None` when the table locks could not be had (the caller then
/// deletes). See the module's design constraints.
async fn compact(
    client: &deadpool_postgres::Object,
    rules: &SweepRules,
) -> Result<Option<SweepReport>, StoreError> {
    let keep = i64::try_from(rules.keep_per_policy).unwrap_or(i64::MAX);
    let cutoff = age_cutoff(rules);
    for attempt in 1..=COMPACT_LOCK_TRIES {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{COMPACT_LOCK_TIMEOUT}'"
            ))
            .await?;
        // The recorder's order: executions, then tasks, then their log lines.
        match client
            .batch_execute("LOCK TABLE executions, tasks, task_logs IN ACCESS EXCLUSIVE MODE")
            .await
        {
            Ok(()) => {}
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                client.batch_execute("ROLLBACK").await?;
                tracing::debug!(
                    message = "History compaction could not lock the tables; trying again.",
                    attempt
                );
                tokio::time::sleep(Duration::from_millis(50) * attempt).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        let report = compact_locked(client, keep, cutoff).await?;
        client.batch_execute("COMMIT").await?;
        return Ok(Some(report));
    }
    tracing::info!(message = "History compaction could not lock the tables; deleting instead.");
    Ok(None)
}

/// The compaction proper, inside the transaction holding the three table locks.
async fn compact_locked(
    client: &deadpool_postgres::Object,
    keep: i64,
    cutoff: Option<chrono::DateTime<Utc>>,
) -> Result<SweepReport, StoreError> {
    // Each kept or age-expired execution among the newest per policy, and every unfinished one.
    client
        .execute(
            &format!(
                "CREATE TEMPORARY TABLE sweep_newest ON COMMIT DROP AS
                 SELECT id, false AS aged FROM executions WHERE NOT ({FINISHED})
                 UNION ALL
                 SELECT newest.id,
                        coalesce($2::timestamptz IS NOT NULL AND newest.end_time < $2, false)
                 FROM notification_policies p CROSS JOIN LATERAL (
                     SELECT id, end_time FROM executions
                     WHERE vendor_id = p.id AND {FINISHED}
                     ORDER BY id DESC LIMIT $1
                 ) newest"
            ),
            &[&keep, &cutoff],
        )
        .await?;
    let counts = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM executions WHERE {FINISHED}),
                        count(*) FILTER (WHERE e.{FINISHED}), count(*) FILTER (WHERE n.aged)
                 FROM sweep_newest n JOIN executions e ON e.id = n.id"
            ),
            &[],
        )
        .await?;
    let (finished, newest_finished, aged): (i64, i64, i64) =
        (counts.try_get(0)?, counts.try_get(1)?, counts.try_get(2)?);
    client
        .batch_execute(
            "CREATE TEMPORARY TABLE sweep_executions ON COMMIT DROP AS
                 SELECT e.* FROM executions e JOIN sweep_newest n ON n.id = e.id WHERE NOT n.aged;
             CREATE TEMPORARY TABLE sweep_tasks ON COMMIT DROP AS
                 SELECT t.* FROM tasks t JOIN sweep_executions e ON e.id = t.execution_id;
             CREATE TEMPORARY TABLE sweep_task_logs ON COMMIT DROP AS
                 SELECT l.* FROM task_logs l JOIN sweep_tasks t ON t.id = l.task_id;
             TRUNCATE task_logs, tasks, executions;
             INSERT INTO executions OVERRIDING SYSTEM VALUE SELECT * FROM sweep_executions;
             INSERT INTO tasks OVERRIDING SYSTEM VALUE SELECT * FROM sweep_tasks;
             INSERT INTO task_logs OVERRIDING SYSTEM VALUE SELECT * FROM sweep_task_logs",
        )
        .await?;
    Ok(SweepReport {
        deleted_by_count: u64::try_from(finished - newest_finished).unwrap_or(0),
        deleted_by_age: u64::try_from(aged).unwrap_or(0),
        vacuumed: false,
        compacted: true,
    })
}

/// Runs a `DELETE ... LIMIT $3` for one policy (`$1`) until it deletes fewer than a batch; each
/// run is its own transaction (autocommit), followed by the rules' pause or the spread's wait,
/// whichever is longer.
async fn delete_in_batches(
    client: &deadpool_postgres::Object,
    sql: &str,
    policy_id: i64,
    bound: &(dyn tokio_postgres::types::ToSql + Sync),
    rules: &SweepRules,
    pace: &mut Pace,
) -> Result<u64, StoreError> {
    let batch = i64::try_from(rules.batch.max(1)).unwrap_or(i64::MAX);
    let statement = client.prepare(sql).await?;
    let mut deleted = 0;
    loop {
        let started = std::time::Instant::now();
        let n = client
            .execute(&statement, &[&policy_id, bound, &batch])
            .await?;
        deleted += n;
        pace.deleted += n;
        if n < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(deleted);
        }
        let pause = rules
            .pause_after(started.elapsed())
            .max(pace.wait(pace.started.elapsed()));
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_sweep_pauses_in_proportion_to_each_batch() {
        let rules = |pause_ratio| SweepRules {
            pause_ratio,
            ..SweepRules::new(50, Duration::MAX, 1000)
        };
        let took = Duration::from_millis(40);
        for (ratio, expected) in [
            (0.0, Duration::ZERO),
            (-1.0, Duration::ZERO),
            (f64::NAN, Duration::ZERO),
            (f64::INFINITY, Duration::ZERO),
            (0.5, Duration::from_millis(20)),
            (1.0, Duration::from_millis(40)),
            (3.0, Duration::from_millis(120)),
            // Capped, so a typo cannot stall the sweep for hours.
            (1e9, Duration::from_millis(4000)),
        ] {
            assert_eq!(rules(ratio).pause_after(took), expected, "ratio {ratio}");
        }
    }

    #[test]
    fn a_sweep_compacts_only_when_what_it_keeps_is_a_small_share() {
        let policy = |finished, unfinished| PolicyCounts {
            policy_id: 1,
            finished,
            unfinished,
        };
        let rules = |keep, share| SweepRules {
            compact_share: share,
            ..SweepRules::new(keep, Duration::MAX, 100)
        };
        for (counts, keep, share, expected) in [
            // Off, or nothing to delete: no.
            (vec![policy(1000, 0)], 50, 0.0, false),
            (vec![], 50, 0.1, false),
            (vec![policy(50, 10)], 50, 1.0, false),
            // A drain's history: 50 + 20 kept of 1020 (6.9 %).
            (vec![policy(1000, 20)], 50, 0.1, true),
            // The same with 200 in flight: 250 of 1200 (20.8 %).
            (vec![policy(1000, 200)], 50, 0.1, false),
            // Many quiet policies keep most of their rows: 10 × 40 + 50 kept of 1400.
            (
                [vec![policy(1000, 0)], vec![policy(40, 0); 10]].concat(),
                50,
                0.1,
                false,
            ),
            // At the threshold: 100 kept of 1000 is 10 %.
            (vec![policy(1000, 0)], 100, 0.1, true),
        ] {
            assert_eq!(
                worth_compacting(&counts, &rules(keep, share)),
                expected,
                "{counts:?} keep {keep} share {share}"
            );
        }
    }

    #[test]
    fn a_spread_sweep_waits_until_its_rows_share_of_the_spread_has_passed() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        for (spread, total, deleted, elapsed, expected) in [
            // Not spread, or nothing counted: no wait.
            (s(0), 10_000, 1000, ms(10), Duration::ZERO),
            (s(60), 0, 1000, ms(10), Duration::ZERO),
            // A tenth deleted is due a tenth into the spread.
            (s(60), 10_000, 1000, ms(10), ms(5990)),
            (s(60), 10_000, 5000, s(20), s(10)),
            // Behind the deadline (a slow database): no wait, the sweep catches up unpaced.
            (s(60), 10_000, 1000, s(7), Duration::ZERO),
            (s(60), 10_000, 10_000, s(80), Duration::ZERO),
            // The age rule's rows, beyond the count, go on at the same rate ...
            (s(60), 10_000, 11_000, s(60), s(6)),
            // ... but a miscount never makes one wait longer than the spread.
            (s(60), 1, 1000, s(0), s(60)),
        ] {
            let pace = Pace {
                deleted,
                ..Pace::new(spread, total)
            };
            assert_eq!(
                pace.wait(elapsed),
                expected,
                "{spread:?} {total} {deleted} {elapsed:?}"
            );
        }
    }
}
