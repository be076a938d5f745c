//! Metrics fed by the consumer, registered once per process on the caller's registry.
//!
//! Label values come from fixed sets: outcomes, target types, and the `as_str()` of the retry and
//! dead-letter reasons in [`crate::classify`]; never URLs or error texts.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use regrelay_history::policy::TargetKind;

/// Handles on the consumer's metrics. Cloning shares the series.
#[derive(Clone)]
pub struct ConsumerMetrics {
    /// `regrelay_deliveries_total{outcome,target_type}`: attempts by what came of them
    /// (`delivered`, `retried`, `dead_lettered`).
    pub deliveries: IntCounterVec,
    /// `regrelay_delivery_attempt_duration_seconds{target_type}`: one HTTP attempt.
    pub attempt_seconds: HistogramVec,
    /// `regrelay_delivery_retries_scheduled_total{reason}`.
    pub retries_scheduled: IntCounterVec,
    /// `regrelay_dead_letters_total{reason}`.
    pub dead_letters: IntCounterVec,
    /// `regrelay_deliveries_in_flight`: tasks taken from the broker and not yet settled.
    pub in_flight: IntGauge,
    /// `regrelay_delivery_deferrals_total`: tasks put back because their target was saturated.
    pub deferrals: IntCounter,
    /// `regrelay_targets_open`: targets whose circuit is open (all consumers', as this one last
    /// read them).
    pub targets_open: IntGauge,
    /// `regrelay_breaker_deferrals_total{target_type}`: tasks put back because their target's
    /// circuit is open (not attempts).
    pub breaker_deferrals: IntCounterVec,
    /// `regrelay_breaker_checks_total{result}`: the breaker's periodic checks of the store.
    pub breaker_checks: IntCounterVec,
    /// `regrelay_rate_limited_total{target_type}`: tasks put back to wait for their slot under
    /// their target's rate limit (not attempts).
    pub rate_limited: IntCounterVec,
    /// `regrelay_matching_duration_seconds`: matching one event against the policy cache.
    pub matching_seconds: Histogram,
    /// `regrelay_events_matched_total{result}`: events that matched a policy (`matched`) or none (`unmatched`).
    pub events_matched: IntCounterVec,
    /// `regrelay_delivery_tasks_created_total{path}`: tasks fanned out by the matching stage, by how
    /// their first attempt was made: `direct` (by the matching stage itself) or `queued` (published
    /// to the deliveries queue for the delivery stage).
    pub tasks_created: IntCounterVec,
    /// `regrelay_policy_reloads_total{outcome}`: policy cache reloads (`success`, `failure`).
    pub policy_reloads: IntCounterVec,
    /// `regrelay_policy_catch_ups_total`: reloads made because an event or task carried a newer
    /// policy generation than the cache had (a policy write just before the event).
    pub policy_catch_ups: IntCounter,
    /// `regrelay_notifications_enabled`: the global switch as this consumer last read it.
    pub notifications_enabled: IntGauge,
    /// `regrelay_consumer_errors_total{stage,error_type}`: messages a stage could not settle
    /// (`error_type`: `database`, `broker`, `shutdown`); each was parked or put back.
    pub stage_errors: IntCounterVec,
    /// `regrelay_consumer_prefetch_changes_total{stage}`: resubscriptions with another prefetch
    /// because message sizes changed what fits `max_in_flight_bytes`.
    pub prefetch_changes: IntCounterVec,
    /// `regrelay_messages_redelivered_total{stage}`: messages taken with the broker's
    /// `redelivered` flag: put back by a nack, a closed channel or a consumer that died. A steady
    /// rate without restarts means channels are being lost (each may repeat a delivery).
    pub redelivered: IntCounterVec,
    /// `regrelay_ack_frames_total{stage}`: ack frames sent (one `multiple` ack may carry many
    /// messages; see `ack_window`).
    pub ack_frames: IntCounterVec,
    /// `regrelay_messages_acked_total{stage}`: messages those frames acked.
    pub messages_acked: IntCounterVec,
    /// `regrelay_ack_failures_total{stage}`: messages whose ack could not be sent (the channel
    /// was gone); the broker redelivers them.
    pub ack_failures: IntCounterVec,
    /// `regrelay_messages_parked_total{stage}`: messages parked in a delay queue after an outage
    /// outlasted `outage_hold`.
    pub messages_parked: IntCounterVec,
    /// `regrelay_outage_retries_total{call}`: retries of a call that failed because the database
    /// or the broker was unavailable (the message waits meanwhile).
    pub outage_retries: IntCounterVec,
    /// `regrelay_history_swept_total{rule}`: executions deleted by the retention sweep, by the rule
    /// that removed them (`count`, `age`).
    pub history_swept: IntCounterVec,
    /// `regrelay_history_sweeps_total{outcome}`: sweep runs (`success`, `failure`).
    pub history_sweeps: IntCounterVec,
    /// `regrelay_history_sweep_duration_seconds`: how long each sweep run took (whatever its
    /// outcome), to see that a sweep finishes well within `history_sweep_interval`.
    pub history_sweep_seconds: Histogram,
    /// `regrelay_history_record_retries_total`: history writes retried because the database failed;
    /// the delivery waits (unacked) meanwhile.
    pub history_record_retries: IntCounter,
    /// `regrelay_history_pending_dropped_total`: Pending records not queued because the history
    /// writer was full (the execution appears with its outcome instead).
    pub history_pending_dropped: IntCounter,
    /// `regrelay_history_records_abandoned_total`: outcome records the database refused for
    /// [`crate::history::RECORD_PATIENCE`]; their deliveries were settled without history.
    pub history_records_abandoned: IntCounter,
    /// Messages in each regrelay queue by role and state (only `ready`: see `queue_depth`).
    pub queue_messages: IntGaugeVec,
    /// Consumers attached to each regrelay queue, by role.
    pub queue_consumers: IntGaugeVec,
}

/// The calls `DeliveryContext::patiently` names (`what`): a fixed set, so the label is bounded.
pub(crate) const OUTAGE_CALLS: &[&str] = &[
    "policy_catch_up",
    "project_id",
    "publish_tasks",
    "publish_retry",
    "publish_dead_letter",
    "rate_limit",
];
pub(crate) const OUTCOMES: [&str; 3] = ["delivered", "retried", "dead_lettered"];

impl ConsumerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "regrelay_deliveries_total",
                "Delivery attempts by outcome (delivered, retried, dead_lettered) and target type.",
            ),
            &["outcome", "target_type"],
        )?;
        let attempt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "regrelay_delivery_attempt_duration_seconds",
                "Duration of one HTTP delivery attempt.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["target_type"],
        )?;
        let targets_open = IntGauge::new(
            "regrelay_targets_open",
            "Targets whose circuit is open (their deliveries wait for probes), across all consumers.",
        )?;
        let breaker_deferrals = IntCounterVec::new(
            Opts::new(
                "regrelay_breaker_deferrals_total",
                "Deliveries put back because their target's circuit is open, by target type (not attempts).",
            ),
            &["target_type"],
        )?;
        let breaker_checks = IntCounterVec::new(
            Opts::new(
                "regrelay_breaker_checks_total",
                "The circuit breaker's periodic checks of the shared target health, by result.",
            ),
            &["result"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "regrelay_rate_limited_total",
                "Deliveries put back to wait for a slot under their target's rate limit, by target type (not attempts).",
            ),
            &["target_type"],
        )?;
        let retries_scheduled = IntCounterVec::new(
            Opts::new(
                "regrelay_delivery_retries_scheduled_total",
                "Retries scheduled in the broker's delay queues, by reason.",
            ),
            &["reason"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "regrelay_dead_letters_total",
                "Messages published to the dead-letter queue, by reason.",
            ),
            &["reason"],
        )?;
        let in_flight = IntGauge::new(
            "regrelay_deliveries_in_flight",
            "Delivery tasks taken from the broker and not yet settled.",
        )?;
        let deferrals = IntCounter::new(
            "regrelay_delivery_deferrals_total",
            "Delivery tasks put back because their target already had its maximum in flight.",
        )?;
        let matching_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "regrelay_matching_duration_seconds",
                "Time to match one event against the policy cache.",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
            ]),
        )?;
        let events_matched = IntCounterVec::new(
            Opts::new(
                "regrelay_events_matched_total",
                "Events taken by the matching stage, by whether any policy matched.",
            ),
            &["result"],
        )?;
        let tasks_created = IntCounterVec::new(
            Opts::new(
                "regrelay_delivery_tasks_created_total",
                "Delivery tasks fanned out by the matching stage (one per event, policy and target), by first-attempt path (direct, queued).",
            ),
            &["path"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "regrelay_policy_reloads_total",
                "Reloads of the consumer's policy cache, by outcome.",
            ),
            &["outcome"],
        )?;
        let policy_catch_ups = IntCounter::new(
            "regrelay_policy_catch_ups_total",
            "Policy cache reloads made because a message carried a newer policy generation than the cache.",
        )?;
        let notifications_enabled = IntGauge::new(
            "regrelay_notifications_enabled",
            "1 while webhook notifications are globally enabled (notification_enable).",
        )?;
        let stage_errors = IntCounterVec::new(
            Opts::new(
                "regrelay_consumer_errors_total",
                "Messages a consumer stage could not settle for now (parked or put back), by stage and error type.",
            ),
            &["stage", "error_type"],
        )?;
        let redelivered = IntCounterVec::new(
            Opts::new(
                "regrelay_messages_redelivered_total",
                "Messages a consumer stage took that the broker marked redelivered (put back by a nack, a closed channel or a dead consumer), by stage.",
            ),
            &["stage"],
        )?;
        let ack_frames = IntCounterVec::new(
            Opts::new(
                "regrelay_ack_frames_total",
                "Ack frames a consumer stage sent (a multiple ack carries several messages), by stage.",
            ),
            &["stage"],
        )?;
        let messages_acked = IntCounterVec::new(
            Opts::new(
                "regrelay_messages_acked_total",
                "Messages a consumer stage acked, by stage.",
            ),
            &["stage"],
        )?;
        let ack_failures = IntCounterVec::new(
            Opts::new(
                "regrelay_ack_failures_total",
                "Messages whose ack could not be sent because the channel was gone (they are redelivered), by stage.",
            ),
            &["stage"],
        )?;
        let prefetch_changes = IntCounterVec::new(
            Opts::new(
                "regrelay_consumer_prefetch_changes_total",
                "Resubscriptions of a consumer stage with another prefetch because message sizes changed what fits max_in_flight_bytes, by stage.",
            ),
            &["stage"],
        )?;
        let messages_parked = IntCounterVec::new(
            Opts::new(
                "regrelay_messages_parked_total",
                "Messages parked in a delay queue because an outage outlasted outage_hold, by stage.",
            ),
            &["stage"],
        )?;
        let outage_retries = IntCounterVec::new(
            Opts::new(
                "regrelay_outage_retries_total",
                "Retries of a call that failed because the database or the broker was unavailable, by call.",
            ),
            &["call"],
        )?;
        let history_swept = IntCounterVec::new(
            Opts::new(
                "regrelay_history_swept_total",
                "Finished executions deleted by the history retention sweep, by rule (count, age).",
            ),
            &["rule"],
        )?;
        let history_sweeps = IntCounterVec::new(
            Opts::new(
                "regrelay_history_sweeps_total",
                "History retention sweep runs, by outcome (success, failure).",
            ),
            &["outcome"],
        )?;
        let history_record_retries = IntCounter::new(
            "regrelay_history_record_retries_total",
            "History writes retried after a database error (the delivery stays unacked meanwhile).",
        )?;
        let history_sweep_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "regrelay_history_sweep_duration_seconds",
                "Duration of one history retention sweep run.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
        )?;
        registry.register(Box::new(history_swept.clone()))?;
        registry.register(Box::new(history_sweeps.clone()))?;
        registry.register(Box::new(history_sweep_seconds.clone()))?;
        let history_pending_dropped = IntCounter::new(
            "regrelay_history_pending_dropped_total",
            "Pending history records dropped because the history writer's queue was full.",
        )?;
        registry.register(Box::new(history_record_retries.clone()))?;
        registry.register(Box::new(history_pending_dropped.clone()))?;
        let history_records_abandoned = IntCounter::new(
            "regrelay_history_records_abandoned_total",
            "Delivery outcome records the database kept refusing; their deliveries were settled without history.",
        )?;
        registry.register(Box::new(history_records_abandoned.clone()))?;
        for rule in ["count", "age"] {
            history_swept.with_label_values(&[rule]);
        }
        for outcome in ["success", "failure"] {
            history_sweeps.with_label_values(&[outcome]);
        }
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "regrelay_queue_messages",
                "Messages in each regrelay queue, by queue role and state (ready), read with passive declares.",
            ),
            &["queue", "state"],
        )?;
        let queue_consumers = IntGaugeVec::new(
            Opts::new(
                "regrelay_queue_consumers",
                "Consumers attached to each regrelay queue, by queue role.",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(queue_messages.clone()))?;
        registry.register(Box::new(queue_consumers.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(retries_scheduled.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(deferrals.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(targets_open.clone()))?;
        registry.register(Box::new(breaker_deferrals.clone()))?;
        registry.register(Box::new(breaker_checks.clone()))?;
        for result in ["success", "failure"] {
            breaker_checks.with_label_values(&[result]);
        }
        for target_type in TargetKind::all() {
            rate_limited.with_label_values(&[target_type.as_str()]);
            breaker_deferrals.with_label_values(&[target_type.as_str()]);
            attempt_seconds.with_label_values(&[target_type.as_str()]);
        }
        registry.register(Box::new(matching_seconds.clone()))?;
        registry.register(Box::new(events_matched.clone()))?;
        registry.register(Box::new(tasks_created.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_catch_ups.clone()))?;
        registry.register(Box::new(notifications_enabled.clone()))?;
        registry.register(Box::new(stage_errors.clone()))?;
        registry.register(Box::new(messages_parked.clone()))?;
        registry.register(Box::new(prefetch_changes.clone()))?;
        registry.register(Box::new(redelivered.clone()))?;
        registry.register(Box::new(ack_frames.clone()))?;
        registry.register(Box::new(messages_acked.clone()))?;
        registry.register(Box::new(ack_failures.clone()))?;
        registry.register(Box::new(outage_retries.clone()))?;
        for call in OUTAGE_CALLS {
            outage_retries.with_label_values(&[call]);
        }
        for outcome in OUTCOMES {
            for target_type in TargetKind::all() {
                deliveries.with_label_values(&[outcome, target_type.as_str()]);
            }
        }
        for path in ["direct", "queued"] {
            tasks_created.with_label_values(&[path]);
        }
        for result in ["matched", "unmatched"] {
            events_matched.with_label_values(&[result]);
        }
        for reason in crate::classify::RetryReason::ALL {
            retries_scheduled.with_label_values(&[reason.as_str()]);
        }
        for reason in regrelay_dead_letters::DeadLetterReason::ALL
            .into_iter()
            .filter(|reason| reason.is_written_by_regrelay())
        {
            dead_letters.with_label_values(&[reason.as_str()]);
        }
        for stage in crate::settlement::Stage::ALL {
            messages_parked.with_label_values(&[stage.as_str()]);
            prefetch_changes.with_label_values(&[stage.as_str()]);
            redelivered.with_label_values(&[stage.as_str()]);
            ack_frames.with_label_values(&[stage.as_str()]);
            messages_acked.with_label_values(&[stage.as_str()]);
            ack_failures.with_label_values(&[stage.as_str()]);
            for error_type in crate::settlement::StageError::TYPES {
                stage_errors.with_label_values(&[stage.as_str(), error_type]);
            }
        }
        Ok(Self {
            deliveries,
            attempt_seconds,
            retries_scheduled,
            dead_letters,
            in_flight,
            deferrals,
            rate_limited,
            targets_open,
            breaker_deferrals,
            breaker_checks,
            matching_seconds,
            events_matched,
            tasks_created,
            policy_reloads,
            policy_catch_ups,
            notifications_enabled,
            stage_errors,
            messages_parked,
            prefetch_changes,
            redelivered,
            ack_frames,
            messages_acked,
            ack_failures,
            outage_retries,
            history_swept,
            history_sweeps,
            history_sweep_seconds,
            history_record_retries,
            history_pending_dropped,
            history_records_abandoned,
            queue_messages,
            queue_consumers,
        })
    }
}
