//! [`HistoryRecorder`]: many deliveries' history steps written together, one transaction per batch.
//!
//! Design constraints:
//! - A caller learns its record is durable: [`HistoryRecorder::record`] resolves only after the
//!   batch holding it committed, so the consumer can ack its delivery after (SPEC: a delivery is
//!   acked only after its task row is written).
//! - Batching trades a little latency for far fewer transactions: the writer takes the first queued
//!   record, then gathers more until `max_batch` or `linger` has passed, whichever comes first.
//!   Under light load a record waits at most `linger`; under heavy load batches fill up at once.
//! - No retry inside: a failed batch fails every record in it (with a shared cause), and each caller
//!   retries in its own way (the consumer requeues its delivery). Records are idempotent, so a
//!   retried record that had in fact been written changes nothing.
//! - The queue is bounded (`4 × max_batch`), so a slow database pushes back on callers instead of
//!   growing memory.
//! - The writer stops when every handle is dropped, after writing what is queued. A stopped writer
//!   answers [`StoreError::RecorderClosed`]; nothing here panics.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::executions::DeliveryRecord;
use crate::store::{Database, StoreError};

/// How the writer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderSettings {
    /// Most records per transaction (0 is read as 1).
    pub max_batch: usize,
    /// How long the writer waits for more records after the first of a batch.
    pub linger: Duration,
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
        let (queue, receiver) = mpsc::channel(max_batch.saturating_mul(4));
        tokio::spawn(write_loop(
            db,
            receiver,
            max_batch,
            settings.linger,
            metrics,
        ));
        Self { queue }
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

async fn write_loop(
    db: Database,
    mut receiver: mpsc::Receiver<Pending>,
    max_batch: usize,
    linger: Duration,
    metrics: RecorderMetrics,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        let deadline = Instant::now() + linger;
        while batch.len() < max_batch {
            // `timeout_at` polls first, so records already queued are taken even after the deadline.
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(pending)) => batch.push(pending),
                // Every handle is gone: write what we have, and the outer loop ends.
                Ok(None) | Err(_) => break,
            }
        }
        write(&db, &mut batch, &metrics).await;
    }
    tracing::debug!(message = "History recorder stopped.");
}

/// Writes one batch and answers every caller in it.
async fn write(db: &Database, batch: &mut Vec<Pending>, metrics: &RecorderMetrics) {
    let (records, answers): (Vec<DeliveryRecord>, Vec<_>) = batch
        .drain(..)
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
