//! [`PolicyGenerationStamp`]: which policy generation an accepted event must be matched against.
//!
//! Design constraints:
//! - Every policy or settings write bumps the store's generation in its own transaction, before the
//!   API answers `2xx`. Ingest reads the generation *after* the event arrived and stamps it on the
//!   event message; the consumer that matches the event first brings its policy copy up to that
//!   generation. So an event accepted after a write's `2xx` is matched against that write or a later
//!   state, whichever processes took the write, the event and the match (docs/delivery.md).
//! - Ingest must keep working while PostgreSQL is down (the broker is what makes an event durable):
//!   a read that fails or takes longer than [`READ_TIMEOUT`] falls back to the highest generation
//!   this process has seen, and further reads are skipped for [`BACKOFF`], so an outage costs each
//!   request nothing. No write can succeed while the store is down, so the fallback misses only a
//!   write made through another process between this process's last read and the outage.
//! - One indexed single-row read per ingest request (not per event).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use regrelay_history::Database;
use tokio::time::Instant;

/// Longest an ingest request waits for the generation before it uses the last one seen.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// After a failed read, how long requests use the last generation seen without trying again.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Reads and remembers the store's policy generation for ingest.
pub struct PolicyGenerationStamp {
    db: Database,
    /// The highest generation read so far (`-1`: none yet).
    last_seen: AtomicI64,
    /// Until when reads are skipped after a failure.
    skip_until: Mutex<Option<Instant>>,
    /// `regrelay_policy_generation_reads_total{result}`: `ok`, `failed` (the last one seen was
    /// used), `skipped` (within the back-off after a failure).
    reads: IntCounterVec,
}

impl PolicyGenerationStamp {
    pub fn new(db: Database, registry: &Registry) -> Result<Self, prometheus::Error> {
        let reads = IntCounterVec::new(
            Opts::new(
                "regrelay_policy_generation_reads_total",
                "Reads of the policy generation stamped on ingested events, by result (ok, failed, skipped).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reads.clone()))?;
        for result in ["ok", "failed", "skipped"] {
            reads.with_label_values(&[result]);
        }
        Ok(Self {
            db,
            last_seen: AtomicI64::new(-1),
            skip_until: Mutex::new(None),
            reads,
        })
    }

    /// The generation to stamp on events that arrived before this call; `None` when the store has
    /// never been read by this process.
    pub async fn current(&self) -> Option<i64> {
        let skipping = self
            .skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until);
        if skipping {
            self.reads.with_label_values(&["skipped"]).inc();
            return self.last_seen();
        }
        match tokio::time::timeout(READ_TIMEOUT, self.db.generation()).await {
            Ok(Ok(generation)) => {
                self.reads.with_label_values(&["ok"]).inc();
                self.last_seen.fetch_max(generation, Ordering::Relaxed);
                Some(generation)
            }
            outcome => {
                self.reads.with_label_values(&["failed"]).inc();
                let error = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {READ_TIMEOUT:?}"),
                };
                tracing::warn!(
                    message = "Cannot read the policy generation; stamping events with the last one seen.",
                    error = %error,
                    last_seen = self.last_seen(),
                );
                *self
                    .skip_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + BACKOFF);
                self.last_seen()
            }
        }
    }

    fn last_seen(&self) -> Option<i64> {
        let seen = self.last_seen.load(Ordering::Relaxed);
        (seen >= 0).then_some(seen)
    }
}
