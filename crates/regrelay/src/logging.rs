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

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Registry};
use tokio::runtime::Handle;
use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};
use crate::traces::{TraceError, TraceExport, TraceSettings};

/// Lines the writer thread may have queued before new ones are dropped.
const QUEUED_LINES: usize = 64 * 1024;

/// The process's dropped-line counter, set once by [`init`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread (and the trace exporter, when on) alive; dropping it exports the queued
/// spans, then flushes the queued lines.
pub struct LogGuard {
    traces: Option<TraceExport>,
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Installs the global subscriber: log lines to stdout and, when `otlp_endpoint` is set, spans to
/// the collector (see [`crate::traces`]), whose export requests run on `runtime`. Call once.
pub fn init(config: &Config, runtime: Handle) -> Result<LogGuard, TraceError> {
    let traces = match &config.otlp_endpoint {
        Some(endpoint) => Some(TraceExport::start(
            &TraceSettings {
                endpoint: endpoint.clone(),
                sample_ratio: config.trace_sample_ratio,
                timeout: config.otlp_timeout,
            },
            runtime,
        )?),
        None => None,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},lapin=warn", config.log_level)));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("regrelay-log-writer")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(use_colour(
            config.log_format,
            std::io::stdout().is_terminal(),
        ));
    let lines = match config.log_format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.boxed(),
    };
    // Traces have their own filter, so that quieter logs (`log_level = "warn"`) do not silence
    // them: regrelay's spans, and its log lines at info and above as span events. The spans are at
    // debug level, so that at the default log level nothing builds them while traces are off;
    // `RUST_LOG=regrelay=debug` shows them as log context too.
    // Source locations and thread names would be attributes on every span: left out.
    let spans = traces.as_ref().map(|traces| {
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer())
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(|metadata| {
                let wanted = if metadata.is_span() {
                    Level::DEBUG
                } else {
                    Level::INFO
                };
                metadata.target().starts_with("regrelay") && *metadata.level() <= wanted
            }))
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .init();
    Ok(LogGuard {
        traces,
        _writer: guard,
    })
}

/// Colour codes only for text lines on a terminal: in a file, a pipe or a log collector they are
/// bytes nobody reads, and JSON never has them.
fn use_colour(format: LogFormat, stdout_is_terminal: bool) -> bool {
    matches!(format, LogFormat::Text) && stdout_is_terminal
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal() {
        assert!(use_colour(LogFormat::Text, true));
        assert!(!use_colour(LogFormat::Text, false));
        assert!(!use_colour(LogFormat::Json, true));
        assert!(!use_colour(LogFormat::Json, false));
    }
}
