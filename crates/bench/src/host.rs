//! What the machine and PostgreSQL did in a window, beside regrelay's own figures: CPU busy,
//! iowait and steal shares, disk writes, and PostgreSQL's checkpoints and WAL (issue 16: the soak's
//! latency drifted in minutes 30–50 with regrelay's CPU unchanged, and nothing measured then could
//! say whether the disk or a checkpoint was behind it).
//!
//! Design constraints:
//! - Read from outside: `/proc/stat` and `/proc/diskstats` (whole disks only, as listed in
//!   `/sys/block`, so a partition is not counted twice), `pg_stat_bgwriter` and `pg_stat_wal`.
//! - A figure that cannot be read (no `/proc`, an older or newer PostgreSQL with other columns) is
//!   left out (`None`), it never fails the run.

use serde::Serialize;

/// Cumulative counters at one moment; a window is the difference of two.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSample {
    cpu: Option<CpuTicks>,
    sectors_written: Option<u64>,
    postgres: Option<PostgresCounters>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTicks {
    busy: u64,
    iowait: u64,
    steal: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PostgresCounters {
    checkpoints: i64,
    checkpoint_write_ms: f64,
    checkpoint_sync_ms: f64,
    buffers_checkpoint: i64,
    buffers_backend: i64,
    wal_bytes: f64,
}

/// One window's machine and PostgreSQL figures (the `host` object of a JSON line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HostFigures {
    /// Share of all CPUs busy (not idle, not iowait), percent.
    pub cpu_busy_percent: Option<f64>,
    pub iowait_percent: Option<f64>,
    /// Time the hypervisor gave this VM's CPUs to others, percent.
    pub steal_percent: Option<f64>,
    /// Bytes written to the machine's disks, MiB/s.
    pub disk_write_mib_per_sec: Option<f64>,
    /// Checkpoints that started in the window (timed and requested).
    pub checkpoints: Option<i64>,
    /// Time checkpoints spent writing and syncing files in the window, ms.
    pub checkpoint_write_ms: Option<f64>,
    pub checkpoint_sync_ms: Option<f64>,
    /// Buffers written by checkpoints, and by backends themselves (a backend writing its own
    /// buffers means the background writer falls behind).
    pub buffers_checkpoint: Option<i64>,
    pub buffers_backend: Option<i64>,
    /// WAL generated, MiB/s.
    pub wal_mib_per_sec: Option<f64>,
}

impl HostSample {
    /// Reads the counters now.
    pub async fn take(database: &tokio_postgres::Client) -> Self {
        Self {
            cpu: cpu_ticks(),
            sectors_written: sectors_written(),
            postgres: postgres_counters(database).await,
        }
    }

    /// The figures of the window from `before` to `self`, `seconds` long.
    pub fn since(&self, before: &Self, seconds: f64) -> HostFigures {
        let seconds = seconds.max(1e-3);
        let cpu = match (self.cpu, before.cpu) {
            (Some(now), Some(then)) if now.total > then.total => Some((now, then)),
            _ => None,
        };
        let share = |f: fn(&CpuTicks) -> u64| {
            cpu.map(|(now, then)| {
                let total = (now.total - then.total) as f64;
                round1(100.0 * f(&now).saturating_sub(f(&then)) as f64 / total)
            })
        };
        let postgres = self.postgres.zip(before.postgres);
        let delta_i = |f: fn(&PostgresCounters) -> i64| {
            postgres.map(|(now, then)| (f(&now) - f(&then)).max(0))
        };
        let delta_f = |f: fn(&PostgresCounters) -> f64| {
            postgres.map(|(now, then)| round1((f(&now) - f(&then)).max(0.0)))
        };
        HostFigures {
            cpu_busy_percent: share(|c| c.busy),
            iowait_percent: share(|c| c.iowait),
            steal_percent: share(|c| c.steal),
            disk_write_mib_per_sec: self
                .sectors_written
                .zip(before.sectors_written)
                .map(|(now, then)| round1(now.saturating_sub(then) as f64 * 512.0 / MIB / seconds)),
            checkpoints: delta_i(|p| p.checkpoints),
            checkpoint_write_ms: delta_f(|p| p.checkpoint_write_ms),
            checkpoint_sync_ms: delta_f(|p| p.checkpoint_sync_ms),
            buffers_checkpoint: delta_i(|p| p.buffers_checkpoint),
            buffers_backend: delta_i(|p| p.buffers_backend),
            wal_mib_per_sec: postgres.map(|(now, then)| {
                round1((now.wal_bytes - then.wal_bytes).max(0.0) / MIB / seconds)
            }),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn cpu_ticks() -> Option<CpuTicks> {
    use procfs::CurrentSI as _;
    let total = procfs::KernelStats::current().ok()?.total;
    let iowait = total.iowait.unwrap_or(0);
    let steal = total.steal.unwrap_or(0);
    let busy = total.user
        + total.nice
        + total.system
        + total.irq.unwrap_or(0)
        + total.softirq.unwrap_or(0);
    Some(CpuTicks {
        busy,
        iowait,
        steal,
        total: busy + total.idle + iowait + steal,
    })
}

/// Sectors (512 bytes, whatever the device's own sector size) written to whole disks.
fn sectors_written() -> Option<u64> {
    let disks = procfs::diskstats().ok()?;
    Some(
        disks
            .iter()
            .filter(|d| std::path::Path::new("/sys/block").join(&d.name).exists())
            .map(|d| d.sectors_written)
            .sum(),
    )
}

/// PostgreSQL 15 and 16 keep the checkpoint counters in `pg_stat_bgwriter`; 17 moved them, and
/// then this is `None`.
async fn postgres_counters(database: &tokio_postgres::Client) -> Option<PostgresCounters> {
    let row = database
        .query_one(
            "SELECT (b.checkpoints_timed + b.checkpoints_req)::int8,
                    b.checkpoint_write_time::float8, b.checkpoint_sync_time::float8,
                    b.buffers_checkpoint::int8, b.buffers_backend::int8, w.wal_bytes::float8
             FROM pg_stat_bgwriter b, pg_stat_wal w",
            &[],
        )
        .await
        .ok()?;
    Some(PostgresCounters {
        checkpoints: row.try_get(0).ok()?,
        checkpoint_write_ms: row.try_get(1).ok()?,
        checkpoint_sync_ms: row.try_get(2).ok()?,
        buffers_checkpoint: row.try_get(3).ok()?,
        buffers_backend: row.try_get(4).ok()?,
        wal_bytes: row.try_get(5).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_difference_of_two_samples() {
        let before = HostSample {
            cpu: Some(CpuTicks {
                busy: 100,
                iowait: 10,
                steal: 0,
                total: 1000,
            }),
            sectors_written: Some(2048),
            postgres: Some(PostgresCounters {
                checkpoints: 3,
                checkpoint_write_ms: 100.0,
                checkpoint_sync_ms: 5.0,
                buffers_checkpoint: 10,
                buffers_backend: 1,
                wal_bytes: 0.0,
            }),
        };
        let after = HostSample {
            cpu: Some(CpuTicks {
                busy: 150,
                iowait: 30,
                steal: 2,
                total: 1200,
            }),
            sectors_written: Some(2048 + 2 * 2048 * 10),
            postgres: Some(PostgresCounters {
                checkpoints: 4,
                checkpoint_write_ms: 2100.0,
                checkpoint_sync_ms: 25.0,
                buffers_checkpoint: 510,
                buffers_backend: 1,
                wal_bytes: 20.0 * MIB,
            }),
        };
        let window = after.since(&before, 10.0);
        assert_eq!(
            window,
            HostFigures {
                cpu_busy_percent: Some(25.0),
                iowait_percent: Some(10.0),
                steal_percent: Some(1.0),
                disk_write_mib_per_sec: Some(2.0),
                checkpoints: Some(1),
                checkpoint_write_ms: Some(2000.0),
                checkpoint_sync_ms: Some(20.0),
                buffers_checkpoint: Some(500),
                buffers_backend: Some(0),
                wal_mib_per_sec: Some(2.0),
            }
        );
    }

    #[test]
    fn what_could_not_be_read_is_left_out() {
        let read = HostSample {
            cpu: Some(CpuTicks::default()),
            sectors_written: Some(1),
            postgres: None,
        };
        let window = read.since(&HostSample::default(), 60.0);
        assert_eq!(window.cpu_busy_percent, None, "no earlier sample");
        assert_eq!(window.checkpoints, None);
        assert_eq!(window.disk_write_mib_per_sec, None);
    }

    #[test]
    fn this_machine_s_counters_can_be_read() {
        assert!(cpu_ticks().is_some_and(|c| c.total > 0));
        assert!(sectors_written().is_some());
    }
}
