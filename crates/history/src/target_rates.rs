//! The `target_rate_limits` table: per-target rate limits shared by every consumer process, kept
//! as GCRA state (one theoretical arrival time per target key and limit).
//!
//! Design constraints:
//! - One row per (target key, limit), read and written under `FOR UPDATE` in one short
//!   transaction: two consumers never both take the last slot of a window. The clock is
//!   PostgreSQL's (`clock_timestamp()`), so consumer clocks do not matter.
//! - A slot is *reserved*, not just tested: a task over the limit is given the time of its own
//!   slot (the state moves past it), waits in the broker until then and is sent without asking
//!   again. A backlog of N tasks costs N transactions, not N per window.
//! - The decision is pure ([`reserve`]) and table-tested; this module's SQL only loads and stores.
//! - Bounded: any sliding window of a limit's period holds at most its count of requests, when
//!   each is sent within [`LATENESS`] of its slot (the consumer re-reserves a slot it reached
//!   later than that). With burst `b = max(1, count / 4)` and spacing
//!   `T = (period + LATENESS) / (count - b + 1)`, the slots in any window of `period + LATENESS`,
//!   at most `b + (period + LATENESS) / T - 1`, are at most the count.
//! - A `pause` row holds a wait the vendor asked for (Discord's rate-limit headers): no slot
//!   before it, whatever the limits say.

use std::time::Duration;

use chrono::{DateTime, Utc};
use regrelay_targets::RateLimit;

use crate::store::{Database, StoreError};

/// How late after its slot a request may still be sent (see the module's constraints).
pub const LATENESS: Duration = Duration::from_millis(250);

/// The row name of a vendor-requested pause.
const PAUSE: &str = "pause";

/// A limit as GCRA parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The row name: the limit as written (`20/min`), or `pause`.
    pub name: String,
    /// The spacing between two slots.
    pub interval: Duration,
    /// How far ahead of its spacing a slot may be taken (the burst).
    pub tolerance: Duration,
}

impl Cell {
    pub fn of(limit: &RateLimit) -> Cell {
        let count = limit.max.max(1);
        let burst = (count / 4).max(1);
        let interval = (limit.per + LATENESS) / (count - burst + 1);
        Cell {
            name: limit.to_string(),
            interval,
            tolerance: interval * (burst - 1),
        }
    }
}

/// The slot a request was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When it may be sent (the database's clock).
    pub at: DateTime<Utc>,
    /// How long from now that is (zero: at once).
    pub wait: Duration,
}

/// The earliest slot at or after `now` that every limit allows, and each limit's state after
/// taking it. `state[i]` is limit `i`'s theoretical arrival time (`None`: never used); `pause`
/// is a time before which nothing is sent.
pub fn reserve(
    now: DateTime<Utc>,
    cells: &[Cell],
    state: &[Option<DateTime<Utc>>],
    pause: Option<DateTime<Utc>>,
) -> (Slot, Vec<DateTime<Utc>>) {
    let delta = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let mut at = now;
    if let Some(pause) = pause {
        at = at.max(pause);
    }
    for (cell, tat) in cells.iter().zip(state) {
        if let Some(tat) = tat {
            at = at.max(*tat - delta(cell.tolerance));
        }
    }
    let next = cells
        .iter()
        .zip(state)
        .map(|(cell, tat)| tat.map_or(at, |t| t.max(at)) + delta(cell.interval))
        .collect();
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    (Slot { at, wait }, next)
}

impl Database {
    /// Reserves the next slot of `key` under `limits` (all of which apply) and any pause.
    pub async fn reserve_rate_slot(
        &self,
        key: &str,
        limits: &[RateLimit],
    ) -> Result<Slot, StoreError> {
        let cells: Vec<Cell> = limits.iter().map(Cell::of).collect();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Rows first, so both consumers lock the same rows (no gap to race in).
        tx.execute(
            "INSERT INTO target_rate_limits (target_key, rate_limit, tat)
             SELECT $1, name, '-infinity' FROM unnest($2::text[]) AS name
             ON CONFLICT DO NOTHING",
            &[&key, &names],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT rate_limit, tat, clock_timestamp() FROM target_rate_limits
                 WHERE target_key = $1 AND (rate_limit = ANY($2) OR rate_limit = $3)
                 ORDER BY rate_limit FOR UPDATE",
                &[&key, &names, &PAUSE],
            )
            .await?;
        let mut now = Utc::now();
        let mut pause = None;
        let mut state = vec![None; cells.len()];
        for row in &rows {
            let name: String = row.try_get(0)?;
            let tat: chrono::DateTime<Utc> = match row.try_get(1) {
                Ok(tat) => tat,
                // '-infinity' does not fit a DateTime: never used.
                Err(_) => {
                    now = row.try_get(2)?;
                    continue;
                }
            };
            now = row.try_get(2)?;
            if name == PAUSE {
                pause = Some(tat);
            } else if let Some(i) = names.iter().position(|n| *n == name) {
                state[i] = Some(tat);
            }
        }
        let (slot, next) = reserve(now, &cells, &state, pause);
        if !cells.is_empty() {
            tx.execute(
                "UPDATE target_rate_limits AS t SET tat = x.tat
                 FROM unnest($2::text[], $3::timestamptz[]) AS x(name, tat)
                 WHERE t.target_key = $1 AND t.rate_limit = x.name",
                &[&key, &names, &next],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(slot)
    }

    /// Holds every slot of `key` until `for_` from now (a vendor asked for it), unless a longer
    /// pause is already set.
    pub async fn pause_rate_slots(&self, key: &str, for_: Duration) -> Result<(), StoreError> {
        let millis = i64::try_from(for_.as_millis()).unwrap_or(i64::MAX / 2);
        self.client()
            .await?
            .execute(
                "INSERT INTO target_rate_limits (target_key, rate_limit, tat)
                 VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (target_key, rate_limit)
                 DO UPDATE SET tat = GREATEST(target_rate_limits.tat, EXCLUDED.tat)",
                &[&key, &PAUSE, &(millis as f64)],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    /// Sends `n` requests as fast as the limits allow, each at its slot; returns the slot times
    /// in ms from the start.
    fn run(limits: &[RateLimit], n: usize) -> Vec<i64> {
        let cells: Vec<Cell> = limits.iter().map(Cell::of).collect();
        let mut state = vec![None; cells.len()];
        let mut times = Vec::new();
        for _ in 0..n {
            let (slot, next) = reserve(at(0), &cells, &state, None);
            state = next.into_iter().map(Some).collect();
            times.push((slot.at - at(0)).num_milliseconds());
        }
        times
    }

    fn most_in_any_window(times: &[i64], window_ms: i64) -> usize {
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && **t < start + window_ms)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_holds_more_than_the_count() {
        let table = [
            (vec![RateLimit::per_second(1)], 1_000, 1),
            (vec![RateLimit::per_minute(20)], 60_000, 20),
            (vec![RateLimit::per_second(5)], 1_000, 5),
            (vec![RateLimit::per_minute(100)], 60_000, 100),
            ("7/h".parse().map(|l| vec![l]).unwrap(), 3_600_000, 7),
        ];
        for (limits, window, count) in table {
            let times = run(&limits, count * 3);
            let most = most_in_any_window(&times, window);
            // At most the count, and not far below it.
            assert!(
                most <= count && most * 100 >= count * 80,
                "{limits:?}: {most}"
            );
            // Even sent up to LATENESS after their slots, no window goes over.
            let late: Vec<i64> = times
                .iter()
                .enumerate()
                .map(|(i, t)| t + if i % 2 == 0 { 0 } else { 250 })
                .collect();
            assert!(most_in_any_window(&late, window) <= count, "{limits:?}");
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_slots_are_spaced() {
        let times = run(&[RateLimit::per_minute(20)], 7);
        assert_eq!(&times[..5], [0, 0, 0, 0, 0]);
        assert_eq!(times[5], 3765);
        assert_eq!(times[6], 7531);
        // Telegram's two limits together: 1/s spaces the burst.
        let both = run(&[RateLimit::per_second(1), RateLimit::per_minute(20)], 3);
        assert_eq!(both, [0, 1250, 2500]);
    }

    #[test]
    fn a_pause_holds_every_slot() {
        let cells = [Cell::of(&RateLimit::per_second(5))];
        let (slot, _) = reserve(at(0), &cells, &[None], Some(at(2500)));
        assert_eq!(slot.at, at(2500));
        assert_eq!(slot.wait, Duration::from_millis(2500));
        // A pause alone (Discord: no limits of its own) still holds.
        let (slot, next) = reserve(at(0), &[], &[], Some(at(300)));
        assert_eq!(slot.wait, Duration::from_millis(300));
        assert!(next.is_empty());
        // A past pause is nothing.
        let (slot, _) = reserve(at(0), &cells, &[None], Some(at(-10)));
        assert_eq!(slot.wait, Duration::ZERO);
    }
}
