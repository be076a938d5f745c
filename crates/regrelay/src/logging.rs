//! Structured logs to stdout, written by a background thread so that a log sink that stops reading
//! never stalls delivery.
//!
//! Design constraints:
//! - Writing to stdout is a blocking `write(2)`. If whatever reads the process's stdout stops (a
//!   wedged log collector, a pipe nobody drains), the pipe buffer fills and every thread that logs
//!   blocks, including the runtime's workers: deliveries stop while `/healthz` may still answer.
//!   Found the hard way: the kill -9 end-to-end test stalled with ~30 tasks unacked because its
//!   harness never read the child's stdout.
//! - So log lines go through a bounded in-memory queue to a dedicated writer thread
//!   (`tracing-appender`'s non-blocking writer). When the queue is full, lines are *dropped*, not
//!   waited for: losing log lines is preferable to losing delivery throughput. Every dropped line is
//!   counted in `regrelay_log_lines_dropped_total`, so the loss is visible.
//! - The writer is flushed at exit by dropping [`LogGuard`].

use std::sync::{Mutex, OnceLock, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Registry};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Lines the writer thread may have queued before new ones are dropped.
const QUEUED_LINES: usize = 64 * 1024;

/// The process's dropped-line counter, set once by [`init`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread alive; dropping it flushes the queued lines.
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber. Call once, before the runtime starts.
pub fn init(config: &Config) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},lapin=warn", config.log_level)));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("regrelay-log-writer")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    LogGuard { _writer: guard }
}

/// Registers `regrelay_log_lines_dropped_total` (always 0 if logging was never initialised).
pub fn register_metrics(registry: &Registry) -> prometheus::Result<()> {
    let counter = IntCounter::new(
        "regrelay_log_lines_dropped_total",
        "Log lines dropped because the log output was not being read fast enough.",
    )?;
    registry.register(Box::new(DroppedLines {
        counter,
        sync: Mutex::new(()),
    }))
}

/// Mirrors the writer's own counter into a Prometheus counter at scrape time.
struct DroppedLines {
    counter: IntCounter,
    /// Serialises the read-then-increment in `collect`, so two scrapes cannot both add the delta.
    sync: Mutex<()>,
}

impl Collector for DroppedLines {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _sync = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = DROPPED
            .get()
            .map_or(0, |errors| errors.dropped_lines() as u64);
        let seen = self.counter.get();
        if dropped > seen {
            self.counter.inc_by(dropped - seen);
        }
        self.counter.collect()
    }
}
