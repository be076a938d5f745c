//! The delivery stage: takes a task from `<prefix>.deliveries`, makes one HTTP attempt, and settles
//! the task according to the outcome.
//!
//! Design constraints:
//! - "Retry?" is decided by the pure [`classify`]; "when?" by the pure [`RetrySchedule`]; this module
//!   only maps the outcome to broker actions, in one exhaustive match:
//!   Delivered → ack. Retry → publish to the retry bucket, confirm, ack.
//!   DeadLetter → publish to the dead-letter queue with the reason, confirm, ack.
//! - A task is acked only after its outcome is durable. If the broker cannot take the retry or the
//!   dead letter, the task is nacked back to the queue (it may be attempted again: at-least-once,
//!   with the same `webhook-id`).
//! - Retries wait in the broker (TTL queues), never in memory: a restart of regrelay or RabbitMQ
//!   loses no pending retry, and no timer or poll runs here.

use std::sync::Arc;
use std::time::Duration;

use regrelay_dead_letters::{DeadLetterBody, DeadLetterReason, PolicySummary, TargetSummary};
use regrelay_events::cloudevents::CloudEventContext;
use regrelay_history::executions::TaskStatus;
use regrelay_history::policy::{Target, TargetKind};
use regrelay_producer::topology::bucket_for;
use regrelay_producer::{trace_context, DeliveryTask};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attempt::AttemptReport;
use crate::circuit::{self, Gate};
use crate::classify::{AttemptResult, DeliveryOutcome};
use crate::context::DeliveryContext;
use crate::dead_letter;
use crate::history::{self, redact_snippet, Step};
use crate::limiter::Admission as SlotAdmission;
use crate::outage::GaveUp;
use crate::policy_cache::CachedPolicy;
use crate::rate_limit::{self, Admission};
use crate::request::{prepare, send_prepared, RequestContext};
use crate::stage::{Received, Settlement, Stage, StageError};
use tokio::sync::OwnedSemaphorePermit;

/// Counts a task as in flight for as long as it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) async fn handle_task(ctx: Arc<DeliveryContext>, delivery: Received) {
    // One span per task message, continuing the trace of whatever published it: the matching
    // stage, or the attempt before (a retry).
    let span = tracing::debug_span!(
        "deliver_task",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
    );
    // Err only when no OpenTelemetry layer is installed (tracing off): nothing to continue then.
    let _ = span.set_parent(trace_context::extract(delivery.properties()));
    async {
        let settlement = process(&ctx, delivery.body()).await;
        if !matches!(settlement, Settlement::Ack) {
            tracing::Span::current().record("otel.status_code", "ERROR");
        }
        crate::stage::settle(&ctx, Stage::Delivery, &delivery, settlement).await;
    }
    .instrument(span)
    .await;
}

async fn process(ctx: &DeliveryContext, body: &[u8]) -> Settlement {
    let mut task = match DeliveryTask::decode(body) {
        Ok(task) => task,
        Err(error) => return poison(ctx, body, error.to_string()).await,
    };
    let event = match task.registry_event() {
        Ok(event) => event,
        Err(error) => return poison(ctx, body, error.to_string()).await,
    };
    let caught_up = ctx
        .patiently("policy_catch_up", ctx.settings.outage_hold, || {
            ctx.cache.catch_up(task.policy_generation)
        })
        .await;
    if let Err(GaveUp::Refused(error) | GaveUp::Outlasted(error)) = caught_up {
        return Settlement::Requeue(StageError::Database(error));
    }
    let set = ctx.cache.snapshot();
    if !set.notifications_enabled {
        // Switched off since this stage took the task (the catch-up above may just have learnt
        // it; the stage pauses now): no attempt, back to the queue through a retry bucket, so it
        // waits there without counting against any delivery limit.
        return put_off(ctx, &task, &event).await;
    }
    let Some((cached, target_index)) =
        set.target(task.policy_id, task.target_index, &task.target_fingerprint)
    else {
        let detail = format!(
            "policy {} or its target is gone or disabled since the event was matched",
            task.policy_id
        );
        let undeliverable =
            Undeliverable::new(&task, &event, DeadLetterReason::PolicyChanged, detail);
        return dead_letter(ctx, undeliverable).await;
    };
    if cached.policy.targets[target_index].options.disabled {
        let detail = "the target is disabled (its circuit stayed open for auto_disable_after, or a client disabled it); replay this once a PUT of the policy has enabled it".to_owned();
        let undeliverable = Undeliverable {
            policy: Some(&cached),
            target: Some(&cached.policy.targets[target_index]),
            ..Undeliverable::new(&task, &event, DeadLetterReason::TargetDisabled, detail)
        };
        return dead_letter(ctx, undeliverable).await;
    }
    let permit = match ctx.limiter.admit(&task.target_fingerprint).await {
        SlotAdmission::Go(permit) => permit,
        SlotAdmission::Saturated => {
            task.deferrals += 1;
            ctx.metrics.deferrals.inc();
            return put_off(ctx, &task, &event).await;
        }
    };
    attempt_and_settle(ctx, task, &event, &cached, target_index, permit).await
}

/// Puts a task back without attempting it, through the retry bucket for `deferral_delay` (not
/// counted as an attempt, nor against any delivery limit).
async fn put_off(
    ctx: &DeliveryContext,
    task: &DeliveryTask,
    event: &regrelay_events::RegistryEvent,
) -> Settlement {
    put_off_for(ctx, task, event, ctx.settings.deferral_delay).await
}

/// [`put_off`] for `delay` (rounded up to a bucket).
async fn put_off_for(
    ctx: &DeliveryContext,
    task: &DeliveryTask,
    event: &regrelay_events::RegistryEvent,
    delay: Duration,
) -> Settlement {
    match schedule(ctx, task, event.event_type().as_str(), delay).await {
        Ok(_) => Settlement::Ack,
        Err(error) => Settlement::Requeue(error),
    }
}

/// Makes one attempt of `task` (its target's slot held by `permit`), records the step in history,
/// and makes the outcome durable in the broker: nothing more when delivered, the retry bucket, or
/// the dead-letter queue. `Settlement::Ack` once all of that is done; the caller then settles the
/// message the task came from (the task itself in the delivery stage, the event for the matching
/// stage's direct first attempts).
pub(crate) async fn attempt_and_settle(
    ctx: &DeliveryContext,
    task: DeliveryTask,
    event: &regrelay_events::RegistryEvent,
    cached: &CachedPolicy,
    target_index: usize,
    permit: OwnedSemaphorePermit,
) -> Settlement {
    if ctx.shutdown.is_cancelled() {
        // Stopping: no new attempt (the message goes back for another consumer or the next start).
        return Settlement::Requeue(StageError::ShuttingDown);
    }
    // Field values are evaluated only when the span is built (traces on), so the URL is parsed
    // only then. The receiver's host only: a target URL's path or query may be its credential
    // (Slack's is).
    let span = tracing::debug_span!(
        "attempt",
        otel.kind = "client",
        delivery_id = %task.delivery_id,
        policy_id = task.policy_id,
        attempt = task.attempts + 1,
        server.address = host_of(&cached.policy.targets[target_index].address).as_str(),
        http.response.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    attempt_in_span(ctx, task, event, cached, target_index, permit)
        .instrument(span)
        .await
}

fn host_of(address: &str) -> String {
    reqwest::Url::parse(address)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn attempt_in_span(
    ctx: &DeliveryContext,
    mut task: DeliveryTask,
    event: &regrelay_events::RegistryEvent,
    cached: &CachedPolicy,
    target_index: usize,
    permit: OwnedSemaphorePermit,
) -> Settlement {
    let _in_flight = InFlight::new(&ctx.metrics.in_flight);
    let target = &cached.policy.targets[target_index];

    let context = RequestContext {
        cloud: CloudEventContext {
            id: task.delivery_id,
            project_id: task.project_id,
            policy_id: task.policy_id,
            request_id: task.request_id.clone(),
        },
        policy_name: &cached.policy.name,
        event_id: task.event_id,
    };
    let vendor = cached.vendor(target_index);
    let prepared = match prepare(target, vendor, event, &context) {
        Ok(prepared) => prepared,
        Err(unsendable) => {
            let undeliverable = Undeliverable {
                policy: Some(cached),
                target: Some(target),
                ..Undeliverable::new(&task, event, unsendable.reason, unsendable.detail)
            };
            return dead_letter(ctx, undeliverable).await;
        }
    };
    // The target's circuit, shared by every consumer: while it is open the task waits in the
    // broker for the next probe (not an attempt), unless it is the probe.
    match circuit::gate(ctx, &task).await {
        Ok(Gate::Pass) => {}
        Ok(Gate::Probe) => {
            tracing::info!(
                message = "Probing a target whose circuit is open.",
                delivery_id = %task.delivery_id,
                policy_id = task.policy_id,
            );
        }
        Ok(Gate::Wait(wait)) => {
            drop(permit);
            ctx.metrics
                .breaker_deferrals
                .with_label_values(&[target.kind.as_str()])
                .inc();
            let event_type = event.event_type().as_str();
            return match schedule(ctx, &task, event_type, rate_limit::bucket_within(wait)).await {
                Ok(_) => Settlement::Ack,
                Err(error) => Settlement::Requeue(error),
            };
        }
        // The probe could not be claimed: wait for the database like any of its calls.
        Err(error) => return Settlement::Requeue(StageError::Database(error)),
    }
    // The target's rate limit, shared by every consumer: over it, the task waits in the broker
    // for its reserved slot (not an attempt).
    let scope = rate_limit::scope_of(target, vendor);
    if let Some(scope) = &scope {
        match rate_limit::admit(ctx, &mut task, scope).await {
            Admission::Go => {}
            Admission::Later(wait) => {
                drop(permit);
                ctx.metrics
                    .rate_limited
                    .with_label_values(&[target.kind.as_str()])
                    .inc();
                tracing::debug!(
                    message = "Rate limit reached; the delivery waits for its slot.",
                    delivery_id = %task.delivery_id,
                    policy_id = task.policy_id,
                    wait_ms = wait.as_millis() as u64,
                );
                let event_type = event.event_type().as_str();
                return match schedule(ctx, &task, event_type, rate_limit::bucket_within(wait)).await
                {
                    Ok(_) => Settlement::Ack,
                    Err(error) => Settlement::Requeue(error),
                };
            }
            Admission::Unavailable(error) => {
                return Settlement::Requeue(StageError::Database(error));
            }
        }
    }
    // Kept for the history record: the exact body sent.
    let payload = ctx.history.is_some().then(|| prepared.body.clone());
    let sent = send_prepared(
        &ctx.clients,
        target,
        prepared,
        task.delivery_id,
        ctx.settings.allow_private_targets,
    )
    .await;
    // The slot bounds requests to the receiver, nothing else: free it before the history write and
    // the broker calls, so their latency does not cap the target's throughput.
    drop(permit);
    let verdict = sent.verdict();
    if let (Some(pause), Some(scope)) = (verdict.pause, &scope) {
        // The vendor asked for a pause (Discord's rate-limit headers): every consumer holds it.
        if let Err(error) = ctx.db.pause_rate_slots(&scope.key, pause).await {
            tracing::warn!(message = "Cannot record the pause a vendor asked for.", error = %error);
        }
    }
    let report = &sent.report;
    let described = sent.describe(&verdict);
    let (result, elapsed) = (&report.result, report.elapsed);
    ctx.limiter
        .record_attempt(&task.target_fingerprint, elapsed);
    task.attempts += 1;
    let target_type = target.kind.as_str();
    ctx.metrics
        .attempt_seconds
        .with_label_values(&[target_type])
        .observe(elapsed.as_secs_f64());
    record_last(&mut task, result);
    let attempt = Attempted {
        report,
        target,
        snippet: redact_snippet(report, target),
        payload: payload.as_deref(),
    };
    let event_type = event.event_type().as_str();
    let outcome = verdict.outcome;
    let span = tracing::Span::current();
    if let AttemptResult::Response { status, .. } = result {
        span.record("http.response.status_code", status);
    }
    span.record(
        "outcome",
        match &outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::DeadLetter { .. } => "dead_letter",
        },
    );
    if !matches!(outcome, DeliveryOutcome::Delivered) {
        span.record("otel.status_code", "ERROR");
    }

    match outcome {
        DeliveryOutcome::Delivered => {
            let step = attempt.step(
                &task,
                event_type,
                target.kind,
                TaskStatus::Success,
                described.clone(),
            );
            history::record(ctx, step).await;
            ctx.metrics
                .deliveries
                .with_label_values(&["delivered", target_type])
                .inc();
            // Per delivery: at debug (see the note on "Events accepted." in api::ingest).
            tracing::debug!(
                message = "Delivered.",
                delivery_id = %task.delivery_id,
                event_id = %task.event_id,
                policy_id = task.policy_id,
                status = task.last_status,
                attempts = task.attempts,
                elapsed_ms = elapsed.as_millis() as u64,
            );
            Settlement::Ack
        }
        DeliveryOutcome::Retry {
            reason,
            retry_after,
        } => match ctx.schedule.next_delay(task.attempts, retry_after) {
            Some(delay) => {
                let message = format!(
                    "{}; retry {} of {} in {}",
                    described,
                    task.attempts + 1,
                    ctx.schedule.max_attempts(),
                    humanize(bucket_for(delay))
                );
                let step = attempt.step(
                    &task,
                    event_type,
                    target.kind,
                    TaskStatus::Scheduled,
                    message,
                );
                history::record(ctx, step).await;
                match schedule(ctx, &task, event_type, delay).await {
                    Ok(bucket) => {
                        ctx.metrics
                            .deliveries
                            .with_label_values(&["retried", target_type])
                            .inc();
                        ctx.metrics
                            .retries_scheduled
                            .with_label_values(&[reason.as_str()])
                            .inc();
                        tracing::info!(
                            message = "Delivery failed; retry scheduled.",
                            delivery_id = %task.delivery_id,
                            policy_id = task.policy_id,
                            reason = reason.as_str(),
                            attempts = task.attempts,
                            retry_in = ?bucket,
                            status = task.last_status,
                            error = task.last_error.as_deref(),
                        );
                        Settlement::Ack
                    }
                    Err(error) => Settlement::Requeue(error),
                }
            }
            None => {
                let detail = format!(
                    "gave up after {} attempts; last: {}",
                    task.attempts, described
                );
                let undeliverable = Undeliverable {
                    policy: Some(cached),
                    target: Some(target),
                    attempt: Some(&attempt),
                    ..Undeliverable::new(&task, event, DeadLetterReason::AttemptsExhausted, detail)
                };
                dead_letter(ctx, undeliverable).await
            }
        },
        DeliveryOutcome::DeadLetter { reason } => {
            let detail = format!("not retryable: {described}");
            let undeliverable = Undeliverable {
                policy: Some(cached),
                target: Some(target),
                attempt: Some(&attempt),
                ..Undeliverable::new(&task, event, reason, detail)
            };
            dead_letter(ctx, undeliverable).await
        }
    }
}

fn record_last(task: &mut DeliveryTask, result: &AttemptResult) {
    match result {
        AttemptResult::Response { status, .. } => {
            task.last_status = Some(*status);
            task.last_error = None;
        }
        other => {
            task.last_status = None;
            task.last_error = Some(other.describe());
        }
    }
}

/// What an attempt left for the history record.
struct Attempted<'a> {
    report: &'a AttemptReport,
    /// The target attempted (its address names it in `target_health`).
    target: &'a Target,
    /// The receiver's answer, credentials blanked.
    snippet: Option<String>,
    /// The body sent (when history is on).
    payload: Option<&'a [u8]>,
}

impl<'a> Attempted<'a> {
    fn step(
        &'a self,
        task: &'a DeliveryTask,
        event_type: &'a str,
        kind: TargetKind,
        status: TaskStatus,
        status_message: String,
    ) -> Step<'a> {
        Step {
            task,
            event_type,
            kind,
            status,
            status_message,
            payload: self.payload,
            attempt: Some((self.report, self.snippet.clone())),
            target_address: Some(&self.target.address),
        }
    }
}

/// "1s", "2m", "1h": a retry bucket as people read it.
fn humanize(delay: Duration) -> String {
    let secs = delay.as_secs();
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s if s >= 1 => format!("{s}s"),
        _ => format!("{}ms", delay.as_millis()),
    }
}

/// Puts the task in the retry bucket for `delay` (rounded up) and waits for the confirm, waiting
/// out an outage for `outage_hold`: a nack from a bucket declared a moment ago (its queue has no
/// leader yet) is retried here, so the attempt is not made again.
async fn schedule(
    ctx: &DeliveryContext,
    task: &DeliveryTask,
    event_type: &str,
    delay: Duration,
) -> Result<Duration, StageError> {
    let message = task
        .to_message(event_type)
        .map_err(|error| StageError::Bug("cannot encode a delivery task", error))?;
    ctx.publish_patiently("publish_retry", || {
        ctx.queue.schedule_retry(&message, delay)
    })
    .await
}

/// What a delivery's dead letter says: the task, why, and what is known of where it was going.
struct Undeliverable<'a> {
    task: &'a DeliveryTask,
    event: &'a regrelay_events::RegistryEvent,
    /// The policy and target, when they were found.
    policy: Option<&'a CachedPolicy>,
    target: Option<&'a Target>,
    reason: DeadLetterReason,
    detail: String,
    /// The attempt that decided it, if one was made.
    attempt: Option<&'a Attempted<'a>>,
}

impl<'a> Undeliverable<'a> {
    fn new(
        task: &'a DeliveryTask,
        event: &'a regrelay_events::RegistryEvent,
        reason: DeadLetterReason,
        detail: String,
    ) -> Self {
        Self {
            task,
            event,
            policy: None,
            target: None,
            reason,
            detail,
            attempt: None,
        }
    }
}

/// Records the dead letter's step in history, then publishes it (confirmed) to settle the task.
async fn dead_letter(ctx: &DeliveryContext, undeliverable: Undeliverable<'_>) -> Settlement {
    let Undeliverable {
        task,
        event,
        policy,
        target,
        reason,
        detail,
        attempt,
    } = undeliverable;
    // History first: the task is Error from now on, whatever the broker does next.
    let kind = target.map_or(TargetKind::Http, |t| t.kind);
    let event_type = event.event_type().as_str();
    let step = match attempt {
        Some(attempt) => attempt.step(task, event_type, kind, TaskStatus::Error, detail.clone()),
        None => Step {
            task,
            event_type,
            kind,
            status: TaskStatus::Error,
            status_message: detail.clone(),
            payload: None,
            attempt: None,
            target_address: None,
        },
    };
    history::record(ctx, step).await;
    if let Some(target) = target {
        ctx.metrics
            .deliveries
            .with_label_values(&["dead_lettered", target.kind.as_str()])
            .inc();
    }
    let letter = DeadLetterBody {
        event_type: Some(event_type.to_owned()),
        project: Some(event.project().to_owned()),
        policy: policy.map(|p| PolicySummary::of(&p.policy)),
        target: target.map(TargetSummary::of),
        ..DeadLetterBody::of_task(task, reason, detail)
    };
    dead_letter::publish_and_settle(ctx, &letter).await
}

async fn poison(ctx: &DeliveryContext, body: &[u8], error: String) -> Settlement {
    let letter = DeadLetterBody::<()>::unprocessable(
        DeadLetterReason::Poison,
        ctx.topology.deliveries_queue(),
        body,
        format!("delivery task cannot be read: {error}"),
    );
    dead_letter::publish_and_settle(ctx, &letter).await
}
