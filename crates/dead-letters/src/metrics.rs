//! [`DeadLetterMetrics`]: operator actions on the dead-letter queue.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Metrics of operator actions on the dead-letter queue, registered once per process.
#[derive(Clone)]
pub struct DeadLetterMetrics {
    /// `regrelay_dead_letter_replays_total{outcome}`: dead letters replayed (`replayed`) or not
    /// (`failed`).
    pub replays: IntCounterVec,
    /// `regrelay_dead_letters_purged_total`.
    pub purged: IntCounter,
    /// `regrelay_dead_letter_queue_depth`: messages ready on the dead-letter queue, as last read.
    pub depth: IntGauge,
}

impl DeadLetterMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let replays = IntCounterVec::new(
            Opts::new(
                "regrelay_dead_letter_replays_total",
                "Dead letters an operator replayed, by outcome (replayed, failed).",
            ),
            &["outcome"],
        )?;
        let purged = IntCounter::new(
            "regrelay_dead_letters_purged_total",
            "Dead letters an operator purged.",
        )?;
        let depth = IntGauge::new(
            "regrelay_dead_letter_queue_depth",
            "Messages ready on the dead-letter queue, as last read.",
        )?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(purged.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        for outcome in ["replayed", "failed"] {
            replays.with_label_values(&[outcome]);
        }
        Ok(Self {
            replays,
            purged,
            depth,
        })
    }
}
