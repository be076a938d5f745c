//! Recording each delivery's progress in the history tables (SPEC §5), and the retention sweep.
//!
//! Design constraints:
//! - Record, then settle: a stage writes a delivery's history and waits until it is durable
//!   (its batch committed) *before* it acks, retries or dead-letters the message. A process killed
//!   in between leaves the message unacked; RabbitMQ redelivers it, the attempt is made again and
//!   recorded again. Records are idempotent (keyed by the task's history key, log lines by attempt
//!   number), so a redelivery never duplicates history, and a delivered event never lacks its record.
//! - History must not become the bottleneck: writes go through the batching
//!   [`HistoryRecorder`], so many concurrent deliveries share one transaction.
//! - A database outage holds deliveries, it does not lose their history: while the database is
//!   unreachable (or a write takes longer than [`RECORD_ATTEMPT_TIMEOUT`]) the write is retried with
//!   capped backoff for up to `history_outage_hold`, and the message stays unacked. The attempt is
//!   not made again (putting the message back would re-send the webhook on every cycle, and on
//!   brokers with a quorum-queue delivery limit eventually drop it). Meanwhile the prefetch fills
//!   and the consumer takes no more work: the backpressure we want. If the process stops
//!   meanwhile, the message is redelivered and attempted again (at-least-once, same `webhook-id`).
//! - The hold is bounded (default 10 min) well below RabbitMQ's `consumer_timeout` (30 min), past
//!   which the broker would close the channel and re-send everything in flight: an outage that
//!   outlasts it settles the delivery without its record, loudly
//!   (`regrelay_history_records_abandoned_total`, an error log line). The delivery itself is never
//!   lost for it: delivered stays delivered, a retry or dead letter is still published.
//! - A write the database refuses for another reason is retried for [`RECORD_PATIENCE`]; then the
//!   delivery is settled without its record, loudly (`regrelay_history_records_abandoned_total`,
//!   an error log line): a record that can never be written must not hold a delivery forever.
//! - Nothing secret is recorded: the payload is the body sent (no headers), and a receiver's
//!   answer has the target's credentials blanked before it is stored, since some receivers echo
//!   requests back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionTrigger, TaskStatus, VendorType,
};
use regrelay_history::policy::{Target, TargetKind, REDACTED};
use regrelay_history::{Database, HistoryRecorder};
use tokio_util::sync::CancellationToken;

use crate::attempt::AttemptReport;
use crate::classify::AttemptResult;
use crate::context::DeliveryContext;
use crate::task::{DeliveryTask, Trigger};
use crate::telemetry::ConsumerMetrics;

/// How long a write that fails for a reason other than an unreachable database (a constraint, a
/// value PostgreSQL refuses) is retried before the delivery is settled without its record.
pub const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// Longest one write may take before it is treated as an unreachable database and retried.
pub const RECORD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the retention sweep runs (the `history_*` configuration keys).
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Finished executions kept per policy (Harbor keeps 50).
    pub keep_per_policy: usize,
    /// Finished executions older than this are deleted whatever their count.
    pub max_age: Duration,
    /// Time between sweeps.
    pub interval: Duration,
    /// Rows deleted per statement, so a sweep never holds locks writers wait on for long.
    pub batch: usize,
}

/// One step of a delivery, before it is turned into a [`DeliveryRecord`].
pub(crate) struct Step<'a> {
    pub task: &'a DeliveryTask,
    pub event_type: &'a str,
    pub kind: TargetKind,
    pub status: TaskStatus,
    pub status_message: String,
    /// The body sent, once there was an attempt.
    pub payload: Option<&'a [u8]>,
    /// The attempt this step records (`task.attempts` is already its number).
    pub attempt: Option<(&'a AttemptReport, Option<String>)>,
}

impl Step<'_> {
    fn into_record(self) -> DeliveryRecord {
        let now = Utc::now();
        let attempt = self
            .attempt
            .map(|(report, snippet)| attempt_log(report, snippet, self.task.attempts, now));
        DeliveryRecord {
            history_key: self.task.history_key(),
            policy_id: self.task.policy_id,
            vendor_type: vendor_type(self.kind),
            trigger: trigger(self.task.trigger),
            event_type: self.event_type.to_owned(),
            event_id: self.task.event_id,
            status: self.status,
            status_message: self.status_message,
            run_count: i32::try_from(self.task.attempts).unwrap_or(i32::MAX),
            payload: self
                .payload
                .map(|body| String::from_utf8_lossy(body).into_owned()),
            attempt,
            at: now,
        }
    }
}

/// The task-log line of one attempt.
pub(crate) fn attempt_log(
    report: &AttemptReport,
    snippet: Option<String>,
    attempt: u32,
    at: DateTime<Utc>,
) -> AttemptLog {
    let (status_code, error) = match &report.result {
        AttemptResult::Response { status, .. } => (Some(*status), None),
        other => (None, Some(crate::delivery::describe(other))),
    };
    AttemptLog {
        attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        at,
        status_code,
        error,
        duration: report.elapsed,
        response_snippet: snippet,
    }
}

pub(crate) fn vendor_type(kind: TargetKind) -> VendorType {
    match kind {
        TargetKind::Http => VendorType::Webhook,
        TargetKind::Slack => VendorType::Slack,
    }
}

pub(crate) fn trigger(trigger: Trigger) -> ExecutionTrigger {
    match trigger {
        Trigger::Event => ExecutionTrigger::Event,
        Trigger::Manual => ExecutionTrigger::Manual,
        Trigger::Retry => ExecutionTrigger::Retry,
    }
}

/// The receiver's answer with the target's credentials blanked out.
pub fn redact_snippet(snippet: Option<&str>, target: &Target) -> Option<String> {
    let mut text = snippet?.to_owned();
    for secret in credentials_of(target) {
        text = text.replace(&secret, REDACTED);
    }
    Some(text)
}

/// Every piece of a target a receiver might echo that is a credential: the auth header and its
/// token (a receiver may quote just `abc123` of `Bearer abc123`), the signing secret, custom header
/// values, and the address with its user info, query values and path (a Slack webhook's path *is*
/// its secret). Longest first, so a whole value is blanked before its parts.
fn credentials_of(target: &Target) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    if let Some(auth) = target.auth_header.as_deref() {
        values.push(auth.to_owned());
        if let Some((_, token)) = auth.split_once(' ') {
            values.push(token.trim().to_owned());
        }
    }
    values.extend(target.secret.clone());
    values.extend(target.headers.values().cloned());
    values.push(target.address.clone());
    if let Ok(url) = reqwest::Url::parse(&target.address) {
        values.push(url.username().to_owned());
        values.extend(url.password().map(str::to_owned));
        values.extend(url.query_pairs().map(|(_, value)| value.into_owned()));
        if target.kind == TargetKind::Slack {
            values.push(url.path().to_owned());
        }
    }
    // Very short values would blank unrelated text; they are not worth hiding from a snippet.
    values.retain(|value| value.len() >= 4);
    values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    values.dedup();
    values
}

/// Writes one step durably; returns once it is (or once it is abandoned, see the module's design
/// constraints). Returns at once when history is disabled.
pub(crate) async fn record(ctx: &DeliveryContext, step: Step<'_>) {
    let Some(recorder) = &ctx.history else {
        return;
    };
    record_with(
        recorder,
        &ctx.metrics,
        step.into_record(),
        ctx.settings.history_outage_hold,
    )
    .await;
}

/// Queues steps for writing without waiting for them. For the Pending records of the matching
/// stage only: they say "matched, not attempted yet", and the delivery stage writes (and waits for)
/// every outcome anyway. Not waiting means the event is acked sooner, and a Pending record still
/// queued when its delivery's outcome arrives is folded into the same row write (the recorder
/// batches by key), which is most of them under load.
///
/// Bounded: a record that finds the recorder's queue full (the database is slow or down) is
/// dropped and counted in `regrelay_history_pending_dropped_total`, so an outage cannot pile up
/// memory here; the execution then appears with its outcome. One that fails to write is not
/// retried, for the same reason.
pub(crate) fn record_in_background(ctx: &DeliveryContext, steps: Vec<Step<'_>>) {
    let Some(recorder) = &ctx.history else {
        return;
    };
    for step in steps {
        if !recorder.offer(step.into_record()) {
            ctx.metrics.history_pending_dropped.inc();
        }
    }
}

async fn record_with(
    recorder: &HistoryRecorder,
    metrics: &ConsumerMetrics,
    record: DeliveryRecord,
    outage_hold: Duration,
) {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let (error, transient) =
            match tokio::time::timeout(RECORD_ATTEMPT_TIMEOUT, recorder.record(record.clone()))
                .await
            {
                Ok(Ok(())) => return,
                Ok(Err(error)) => (error.to_string(), error.is_unavailable()),
                Err(_) => (
                    format!("no answer from the database within {RECORD_ATTEMPT_TIMEOUT:?}"),
                    true,
                ),
            };
        let patience = if transient {
            outage_hold
        } else {
            RECORD_PATIENCE
        };
        if started.elapsed() + delay >= patience {
            metrics.history_records_abandoned.inc();
            tracing::error!(message = "Delivery history cannot be recorded; settling the delivery without it.", history_key = %record.history_key, error = %error, waited = ?started.elapsed());
            return;
        }
        metrics.history_record_retries.inc();
        tracing::warn!(message = "Cannot record delivery history; retrying.", history_key = %record.history_key, error = %error, retry_in = ?delay);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs the retention sweep every `settings.interval` until `shutdown`. Several consumers may run
/// it; the store lets one sweep at a time (an advisory lock) and the others find nothing to do.
pub async fn sweep_until(
    db: Database,
    settings: RetentionSettings,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
        match db
            .sweep_history(settings.keep_per_policy, settings.max_age, settings.batch)
            .await
        {
            Ok(report) => {
                metrics.history_sweeps.with_label_values(&["success"]).inc();
                metrics
                    .history_swept
                    .with_label_values(&["count"])
                    .inc_by(report.deleted_by_count);
                metrics
                    .history_swept
                    .with_label_values(&["age"])
                    .inc_by(report.deleted_by_age);
                tracing::info!(
                    message = "History swept.",
                    deleted_by_count = report.deleted_by_count,
                    deleted_by_age = report.deleted_by_age
                );
            }
            Err(error) => {
                metrics.history_sweeps.with_label_values(&["failure"]).inc();
                tracing::warn!(message = "History sweep failed; will try again.", error = %error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use regrelay_history::policy::PayloadFormat;

    use super::*;

    fn target(kind: TargetKind, address: &str, auth: Option<&str>) -> Target {
        Target {
            kind,
            address: address.to_owned(),
            auth_header: auth.map(str::to_owned),
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: Some("whsec_c2VjcmV0LWtleQ==".into()),
            headers: BTreeMap::from([("X-Api-Key".to_owned(), "key-12345".to_owned())]),
        }
    }

    #[test]
    fn echoed_credentials_are_blanked_in_any_form() {
        let http = target(
            TargetKind::Http,
            "https://ci:pa55word@hooks.example.com/in?token=qs-token-9",
            Some("Bearer tok-abc-123"),
        );
        let echoed = "bad token tok-abc-123; header Bearer tok-abc-123; key-12345; \
                      whsec_c2VjcmV0LWtleQ==; pa55word; qs-token-9; \
                      https://ci:pa55word@hooks.example.com/in?token=qs-token-9";
        let redacted = redact_snippet(Some(echoed), &http).unwrap();
        for secret in [
            "tok-abc-123",
            "key-12345",
            "whsec_",
            "pa55word",
            "qs-token-9",
        ] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(redacted.starts_with("bad token ********"), "{redacted}");

        let slack = target(
            TargetKind::Slack,
            "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
            None,
        );
        let redacted = redact_snippet(
            Some("no_service for /services/T000/B000/XXXXSECRET"),
            &slack,
        )
        .unwrap();
        assert!(!redacted.contains("XXXXSECRET"), "{redacted}");
        assert_eq!(redact_snippet(None, &slack), None);
    }
}
