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
//! - At most one read in flight, shared: a read covers every request that arrived before it
//!   started, so requests that arrive while one is running share the next (two round trips of
//!   latency at most, and a read per round trip however many requests arrive). Requests are
//!   numbered as they arrive; a read records how many had arrived when it started.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Requests numbered in order of arrival.
    arrivals: AtomicU64,
    /// The last successful read: (the number of requests that had arrived when it started, the
    /// generation it read). It serves every request numbered below the first.
    covered: Mutex<(u64, i64)>,
    /// Held while reading, so one read runs at a time.
    reading: tokio::sync::Mutex<()>,
    /// `regrelay_policy_generation_reads_total{result}`: `ok`, `failed` (the last one seen was
    /// used), `skipped` (within the back-off after a failure), `shared` (served by a read another
    /// request made after this one arrived).
    reads: IntCounterVec,
}

impl PolicyGenerationStamp {
    pub fn new(db: Database, registry: &Registry) -> Result<Self, prometheus::Error> {
        let reads = IntCounterVec::new(
            Opts::new(
                "regrelay_policy_generation_reads_total",
                "Reads of the policy generation stamped on ingested events, by result (ok, failed, skipped, shared).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reads.clone()))?;
        for result in ["ok", "failed", "skipped", "shared"] {
            reads.with_label_values(&[result]);
        }
        Ok(Self {
            db,
            last_seen: AtomicI64::new(-1),
            skip_until: Mutex::new(None),
            arrivals: AtomicU64::new(0),
            covered: Mutex::new((0, -1)),
            reading: tokio::sync::Mutex::new(()),
            reads,
        })
    }

    /// The generation to stamp on events that arrived before this call; `None` when the store has
    /// never been read by this process.
    pub async fn current(&self) -> Option<i64> {
        let arrival = self.arrivals.fetch_add(1, Ordering::SeqCst);
        if let Some(generation) = self.covering(arrival) {
            self.reads.with_label_values(&["shared"]).inc();
            return Some(generation);
        }
        let _reading = self.reading.lock().await;
        if let Some(generation) = self.covering(arrival) {
            self.reads.with_label_values(&["shared"]).inc();
            return Some(generation);
        }
        // Every request numbered below this had arrived before the read starts.
        let covers = self.arrivals.load(Ordering::SeqCst);
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
                let mut covered = self.covered.lock().unwrap_or_else(PoisonError::into_inner);
                if covers > covered.0 {
                    *covered = (covers, generation);
                }
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

    /// The generation of a read that started after request `arrival` arrived, if there was one.
    fn covering(&self, arrival: u64) -> Option<i64> {
        let (covers, generation) = *self.covered.lock().unwrap_or_else(PoisonError::into_inner);
        (arrival < covers).then_some(generation)
    }

    fn last_seen(&self) -> Option<i64> {
        let seen = self.last_seen.load(Ordering::Relaxed);
        (seen >= 0).then_some(seen)
    }
}
