//! [`HistoryRecorder`]: many deliveries' history steps written together, one transaction per batch.
//!
//! Design constraints:
//! - A caller learns its record is durable: [`HistoryRecorder::record`] resolves only after the
//!   batch holding it committed, so the consumer can ack its delivery after (SPEC: a delivery is
//!   acked only after its task row is written).
//! - Batching without waiting: with no batch being written, a record is written at once, with
//!   whatever is queued (up to `max_batch`). While transactions are in flight, records pile up
//!   and the next batch takes them all. So under light load a record is written at once (no
//!   linger), and under heavy load batches grow by themselves: the batch size follows the load.
//!   `linger` (0 by default) can still hold a batch open for more records, trading latency for
//!   fewer transactions.
//! - A few transactions in flight at once (`concurrency`), not one: a single writer puts every
//!   delivery behind the previous batch's round trips, which is what limited throughput when history
//!   was first measured (docs/benchmarks.md). But a further writer only for a batch worth it
//!   (`starts_now`: a quarter of `max_batch`): while a batch is being written, the next one keeps
//!   gathering until it is that large or the writer is done. Two small transactions at once cost
//!   PostgreSQL more per record than one twice their size (each has its parse, plan, locks and
//!   commit), and on a saturated machine that is what bounds the rate: at fan-out 1 the two
//!   writers wrote batches of 34 records, and waiting for a quarter batch delivered 5–9 % more at
//!   fan-out 1, 10 and 100 (docs/benchmarks.md, "History batches"). One writer alone did better at
//!   fan-out 1 but 13 % worse at fan-out 100, where the delivery stage's records need two.
//! - No retry inside: a failed batch fails every record in it (with a shared cause), and each caller
//!   retries in its own way (the consumer requeues its delivery). Records are idempotent, so a
//!   retried record that had in fact been written changes nothing.
//! - The queue is bounded (`max_batch × (concurrency + 1)`, at least [`QUEUED_RECORDS`]), so a
//!   slow database pushes back on callers instead of growing memory.
//! - The writer stops when every handle is dropped, after writing what is queued. A stopped writer
//!   answers [`StoreError::RecorderClosed`]; nothing here panics.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::executions::DeliveryRecord;
use crate::store::{Database, StoreError};

/// The least number of records the writer's queue holds before callers wait (or offers drop).
pub const QUEUED_RECORDS: usize = 2048;

/// How the writer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderSettings {
    /// Most records per transaction (0 is read as 1).
    pub max_batch: usize,
    /// How long the writer waits for more records after the first of a batch (0: not at all).
    pub linger: Duration,
    /// Most batches written at once, each in its own transaction (0 is read as 1); a further one
    /// starts only for a quarter-full batch (`starts_now`).
    pub concurrency: usize,
}

/// The recorder's metrics, registered once per process.
#[derive(Clone)]
pub struct RecorderMetrics {
    /// How long each batch's transaction took (`regrelay_history_write_duration_seconds`).
    pub write_seconds: Histogram,
    /// Records per batch (`regrelay_history_batch_size`): how well batching works.
    pub batch_size: Histogram,
    /// Batches that failed (`regrelay_history_write_failures_total`); their records' callers retry.
    pub write_failures: IntCounter,
}

/// A handle to the batching writer. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct HistoryRecorder {
    /// The writer's queue: each record with the channel its answer goes back on.
    queue: mpsc::Sender<Pending>,
}

/// A queued record and its caller's answer channel.
struct Pending {
    record: DeliveryRecord,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

impl RecorderMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let write_seconds = Histogram::with_opts(HistogramOpts::new(
            "regrelay_history_write_duration_seconds",
            "Time to write one batch of delivery history in one transaction.",
        ))?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "regrelay_history_batch_size",
                "Delivery history records written per batch.",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
            ]),
        )?;
        let write_failures = IntCounter::new(
            "regrelay_history_write_failures_total",
            "Delivery history batches that failed to write (their records are retried by callers).",
        )?;
        registry.register(Box::new(write_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(write_failures.clone()))?;
        Ok(Self {
            write_seconds,
            batch_size,
            write_failures,
        })
    }
}

impl HistoryRecorder {
    /// Starts the writer on the current tokio runtime (panics outside one, like `tokio::spawn`).
    pub fn spawn(db: Database, settings: RecorderSettings, metrics: RecorderMetrics) -> Self {
        let max_batch = settings.max_batch.max(1);
        let concurrency = settings.concurrency.max(1);
        // Room for every writer's next batch, and at least QUEUED_RECORDS: a fan-out-100 event
        // offers 100 Pending records at once.
        let (queue, receiver) = mpsc::channel(
            max_batch
                .saturating_mul(concurrency.saturating_add(1))
                .max(QUEUED_RECORDS),
        );
        tokio::spawn(write_loop(
            db,
            receiver,
            max_batch,
            settings.linger,
            concurrency,
            metrics,
        ));
        Self { queue }
    }

    /// Queues a record without waiting for room or for the write: for records that are worth
    /// having but not worth holding anything up for. `false` when the queue is full or the writer
    /// is gone (the record is dropped; the caller counts it).
    pub fn offer(&self, record: DeliveryRecord) -> bool {
        let (answer, _unheard) = oneshot::channel();
        self.queue.try_send(Pending { record, answer }).is_ok()
    }

    /// Resolves once the record is durable (its batch committed), or with the batch's error.
    pub async fn record(&self, record: DeliveryRecord) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { record, answer })
            .await
            .map_err(|_| StoreError::RecorderClosed)?;
        // A dropped answer means the writer went away mid-batch (its runtime shut down).
        answered.await.map_err(|_| StoreError::RecorderClosed)?
    }
}

/// Whether a batch of `batch_len` records goes to a writer now, with `busy` of `concurrency`
/// writers in flight: at once when none is writing (light load keeps its latency), and beside
/// the writing ones only when a writer is free and the batch holds a quarter of `max_batch`.
fn starts_now(batch_len: usize, max_batch: usize, busy: usize, concurrency: usize) -> bool {
    busy == 0 || (busy < concurrency && batch_len >= (max_batch / 4).max(1))
}

async fn write_loop(
    db: Database,
    mut receiver: mpsc::Receiver<Pending>,
    max_batch: usize,
    linger: Duration,
    concurrency: usize,
    metrics: RecorderMetrics,
) {
    let mut writers: JoinSet<()> = JoinSet::new();
    while let Some(first) = receiver.recv().await {
        let mut batch = Vec::with_capacity(max_batch);
        batch.push(first);
        if !linger.is_zero() {
            let deadline = Instant::now() + linger;
            while batch.len() < max_batch {
                // `timeout_at` polls first, so queued records are taken even after the deadline.
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(pending)) => batch.push(pending),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // Wait until the batch may start (see `starts_now`), gathering what arrives meanwhile:
        // this is where batches grow under load.
        let mut closed = false;
        loop {
            while writers.try_join_next().is_some() {}
            let ready = if closed {
                writers.len() < concurrency
            } else {
                starts_now(batch.len(), max_batch, writers.len(), concurrency)
            };
            if ready {
                break;
            }
            tokio::select! {
                biased;
                // A writer finished (a panicked one has dropped its callers' answers already).
                _ = writers.join_next(), if !writers.is_empty() => {}
                more = receiver.recv(), if !closed && batch.len() < max_batch => match more {
                    Some(pending) => batch.push(pending),
                    // Every handle is gone: write what we have once a writer is free.
                    None => closed = true,
                },
            }
        }
        // Whatever else is already queued goes along.
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let db = db.clone();
        let metrics = metrics.clone();
        writers.spawn(async move { write(&db, batch, &metrics).await });
    }
    while writers.join_next().await.is_some() {}
    tracing::debug!(message = "History recorder stopped.");
}

/// Writes one batch and answers every caller in it.
async fn write(db: &Database, batch: Vec<Pending>, metrics: &RecorderMetrics) {
    let (records, answers): (Vec<DeliveryRecord>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.record, pending.answer))
        .unzip();
    metrics.batch_size.observe(records.len() as f64);
    let timer = metrics.write_seconds.start_timer();
    let result = db.record_deliveries(&records).await;
    timer.observe_duration();
    match result {
        Ok(()) => {
            for answer in answers {
                // A caller that stopped waiting (cancelled) needs no answer.
                let _ = answer.send(Ok(()));
            }
        }
        Err(error) => {
            metrics.write_failures.inc();
            tracing::warn!(
                message = "History batch write failed.",
                records = records.len(),
                error = %error
            );
            let cause = Arc::new(error);
            for answer in answers {
                let _ = answer.send(Err(StoreError::BatchFailed(cause.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::starts_now;

    #[test]
    fn a_further_writer_starts_only_for_a_quarter_full_batch() {
        // (records gathered, max_batch, writers busy, concurrency) -> starts now
        let cases = [
            ((1, 256, 0, 2), true),   // idle: a lone record is written at once
            ((255, 256, 0, 2), true), // idle: whatever is gathered
            ((1, 256, 1, 2), false),  // one writing: keep gathering
            ((63, 256, 1, 2), false),
            ((64, 256, 1, 2), true), // a quarter batch: the second writer joins in
            ((256, 256, 2, 2), false), // full, but no writer free
            ((64, 256, 2, 3), true),
            ((1, 3, 1, 2), true), // a quarter of less than 4 is one record
            ((1, 256, 0, 1), true),
            ((256, 256, 1, 1), false), // one writer: wait for it
        ];
        for ((len, max, busy, concurrency), expected) in cases {
            assert_eq!(
                starts_now(len, max, busy, concurrency),
                expected,
                "{len} records, max {max}, {busy} of {concurrency} busy"
            );
        }
    }
}
