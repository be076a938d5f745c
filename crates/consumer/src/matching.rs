//! The matching stage: takes an event from `<prefix>.events`, finds the policies it triggers, and
//! fans it out as one delivery task per (policy, target). A task whose target is known to answer
//! quickly gets its first attempt here, directly; the others go onto `<prefix>.deliveries` for the
//! delivery stage.
//!
//! Design constraints:
//! - The event is acked only after every task it produced is settled durably: published and
//!   confirmed (queued tasks), or attempted with its outcome recorded and any retry or dead letter
//!   confirmed (direct ones). A crash in between redelivers the event; its tasks get the same
//!   delivery ids, so receivers can drop the duplicates by `webhook-id`, and history records the
//!   same steps again without duplicating them.
//! - Why direct first attempts: most deliveries succeed at once, and publishing each through the
//!   deliveries queue costs a second persistent, confirmed broker round trip (and a Pending history
//!   row) per delivery. The broker was the lowest ceiling measured (docs/benchmarks.md).
//! - Only *fast* targets are attempted directly (recent attempts average under
//!   [`crate::limiter::SLOW_ATTEMPT`]): the event stays unacked while its direct attempts run, and
//!   the matching prefetch is small, so a slow or unknown target must not hold it. Their tasks, and
//!   those of a fast target whose slots stay taken for `deferral_delay`, are queued as before.
//!   Direct attempts share the per-target slots with the delivery stage, and each holds at most
//!   one slot while waiting for none, so they cannot deadlock one another.
//! - No direct attempt while notifications are globally disabled: the delivery stage is paused
//!   then, and the tasks wait in the queue.
//! - An event that cannot be decoded (poison), or that can never be fanned out (a project name the
//!   database refuses, a task that cannot be encoded), is dead-lettered once with its reason, never
//!   requeued in a loop. A database or broker outage is waited out (`outage`), then the event is
//!   parked in `<prefix>.events.wait` (`stage::settle`).

use std::sync::Arc;
use std::time::Instant;

use regrelay_producer::{trace_context, DeliveryTask, EventMessage, TaskMessageOut, Trigger};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use regrelay_dead_letters::{DeadLetterBody, DeadLetterReason};
use regrelay_history::policy::TargetKind;

use crate::context::DeliveryContext;
use crate::dead_letter;
use crate::delivery;
use crate::history::{self, Step};
use crate::limiter::Admission;
use crate::outage::GaveUp;
use crate::policy_cache::CachedPolicy;
use crate::stage::{self, Received, Settlement, Stage, StageError};

pub(crate) async fn handle_event(ctx: Arc<DeliveryContext>, delivery: Received) {
    // One span per event, continuing the trace of the request that published it.
    let span = tracing::debug_span!(
        "match_event",
        otel.kind = "consumer",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // Err only when no OpenTelemetry layer is installed (tracing off): nothing to continue then.
    let _ = span.set_parent(trace_context::extract(delivery.properties()));
    match_event(ctx, delivery).instrument(span).await;
}

async fn match_event(ctx: Arc<DeliveryContext>, delivery: Received) {
    let span = tracing::Span::current();
    let message = match EventMessage::decode(delivery.properties(), delivery.body()) {
        Ok(message) => message,
        Err(error) => {
            let dead = DeadLetterBody::<()>::unprocessable(
                DeadLetterReason::Poison,
                ctx.topology.events_queue(),
                delivery.body(),
                format!("event message cannot be read: {error}"),
            );
            let settlement = dead_letter::publish_and_settle(&ctx, &dead).await;
            stage::settle(&ctx, Stage::Matching, &delivery, settlement).await;
            return;
        }
    };
    span.record("event_id", tracing::field::display(message.id));
    span.record("event_type", message.event_type().as_str());
    let settlement = match fan_out(&ctx, &message).await {
        Ok(()) => Settlement::Ack,
        Err(FanOutError::Later(error)) => Settlement::Requeue(error),
        Err(FanOutError::Unprocessable { reason, detail }) => {
            // It can never be fanned out (a value the database refuses, a task that cannot be
            // encoded): dead-lettered once, with the event, never retried in a loop.
            let mut dead = DeadLetterBody::<()>::unprocessable(
                reason,
                ctx.topology.events_queue(),
                delivery.body(),
                detail,
            );
            dead.event_type = Some(message.event_type().as_str().to_owned());
            dead.project = Some(message.event.project().to_owned());
            dead_letter::publish_and_settle(&ctx, &dead).await
        }
    };
    if !matches!(settlement, Settlement::Ack) {
        span.record("otel.status_code", "ERROR");
    }
    stage::settle(&ctx, Stage::Matching, &delivery, settlement).await;
}

/// Why an event was not fanned out.
enum FanOutError {
    /// Not now (an outage outlasted `outage_hold`, or the process is stopping): park it.
    Later(StageError),
    /// Never: dead-letter it with `reason`.
    Unprocessable {
        reason: DeadLetterReason,
        detail: String,
    },
}

/// A task on its way to `<prefix>.deliveries`, encoded.
struct QueuedTask {
    task: DeliveryTask,
    kind: TargetKind,
    message: TaskMessageOut,
}

/// Matches and publishes the tasks; `Ok` once they are all settled durably.
async fn fan_out(ctx: &DeliveryContext, message: &EventMessage) -> Result<(), FanOutError> {
    if let Some(generation) = message.policy_generation {
        ctx.patiently("policy_catch_up", ctx.settings.outage_hold, || {
            ctx.cache.catch_up(generation)
        })
        .await
        .map_err(|gave_up| match gave_up {
            GaveUp::Refused(error) | GaveUp::Outlasted(error) => {
                FanOutError::Later(StageError::Database(error))
            }
        })?;
    }
    let started = Instant::now();
    let set = ctx.cache.snapshot();
    let matched = set.matching(&message.event);
    ctx.metrics
        .matching_seconds
        .observe(started.elapsed().as_secs_f64());
    let result = if matched.is_empty() {
        "unmatched"
    } else {
        "matched"
    };
    ctx.metrics
        .events_matched
        .with_label_values(&[result])
        .inc();
    if matched.is_empty() {
        tracing::debug!(message = "Event matched no policy.", event_id = %message.id, event_type = message.event_type().as_str(), project = message.event.project());
        return Ok(());
    }

    // Hold budget for this event's tasks while they are built and published (an event with more
    // targets than the whole budget takes all of it, and runs alone).
    let wanted: usize = matched.iter().map(|c| c.policy.targets.len()).sum();
    let wanted = u32::try_from(wanted.clamp(1, crate::context::FANOUT_BUDGET)).unwrap_or(1);
    let Ok(_budget) = ctx.fanout_budget.acquire_many(wanted).await else {
        return Err(FanOutError::Later(StageError::ShuttingDown));
    };
    let event_type = message.event_type().as_str();
    // Everything that can refuse the event for good happens here, before any side effect.
    // (task, its policy, the target's index in it)
    let mut tasks = Vec::new();
    for cached in &matched {
        let policy = &cached.policy;
        let project_id = match &policy.project {
            Some(project) => project.id,
            None => ctx
                .patiently("project_id", ctx.settings.outage_hold, || {
                    ctx.project_id(message.event.project())
                })
                .await
                .map_err(|gave_up| match gave_up {
                    GaveUp::Outlasted(error) => FanOutError::Later(StageError::Database(error)),
                    GaveUp::Refused(error) => FanOutError::Unprocessable {
                        reason: DeadLetterReason::Unstorable,
                        detail: format!("the event's project cannot be stored: {error}"),
                    },
                })?,
        };
        for (index, target) in policy.targets.iter().enumerate() {
            if target.options.disabled {
                continue;
            }
            let task = DeliveryTask::new(
                message.id,
                &message.request_id,
                &message.event,
                policy.id,
                project_id,
                index,
                &target.address,
                Trigger::Event,
            )
            .map_err(|error| FanOutError::Unprocessable {
                reason: DeadLetterReason::Unencodable,
                detail: format!("cannot build a delivery task: {error}"),
            })?;
            let task = DeliveryTask {
                policy_generation: set.generation,
                ..task
            };
            let encoded =
                task.to_message(event_type)
                    .map_err(|error| FanOutError::Unprocessable {
                        reason: DeadLetterReason::Unencodable,
                        detail: format!("cannot encode a delivery task: {error}"),
                    })?;
            tasks.push((task, encoded, cached.clone(), index));
        }
    }
    let direct_allowed = ctx.settings.direct_first_attempt && set.notifications_enabled;
    let mut queued = Vec::new();
    let mut direct = Vec::new();
    for (task, encoded, cached, index) in tasks {
        if direct_allowed && ctx.limiter.is_fast(&task.target_fingerprint) {
            direct.push(attempt_directly(
                ctx,
                task,
                encoded,
                &message.event,
                cached,
                index,
            ));
        } else {
            let kind = cached.policy.targets[index].kind;
            queued.push(QueuedTask {
                task,
                kind,
                message: encoded,
            });
        }
    }
    let task_count = queued.len() + direct.len();
    let (published, attempted) = tokio::join!(
        queue_tasks(ctx, queued, event_type),
        futures::future::join_all(direct)
    );
    published.map_err(FanOutError::Later)?;
    for outcome in attempted {
        outcome?;
    }
    tracing::debug!(
        message = "Event fanned out.",
        event_id = %message.id,
        event_type,
        policies = matched.len(),
        tasks = task_count,
    );
    Ok(())
}

/// The first attempt of a task to a fast target, made here; if the target's slots stay taken for
/// `deferral_delay`, the task is queued instead. `Ok` once its outcome is durable.
async fn attempt_directly(
    ctx: &DeliveryContext,
    task: DeliveryTask,
    encoded: TaskMessageOut,
    event: &regrelay_events::RegistryEvent,
    cached: Arc<CachedPolicy>,
    target_index: usize,
) -> Result<(), FanOutError> {
    let Ok(_attempting) = ctx.direct_attempts.acquire().await else {
        return Err(FanOutError::Later(StageError::ShuttingDown));
    };
    let permit = match ctx.limiter.admit(&task.target_fingerprint).await {
        Admission::Go(permit) => permit,
        Admission::Saturated => {
            let kind = cached.policy.targets[target_index].kind;
            let event_type = event.event_type().as_str();
            let queued = QueuedTask {
                task,
                kind,
                message: encoded,
            };
            return queue_tasks(ctx, vec![queued], event_type)
                .await
                .map_err(FanOutError::Later);
        }
    };
    ctx.metrics
        .tasks_created
        .with_label_values(&["direct"])
        .inc();
    match delivery::attempt_and_settle(ctx, task, event, &cached, target_index, permit).await {
        Settlement::Ack => Ok(()),
        Settlement::Requeue(error) => Err(FanOutError::Later(error)),
    }
}

/// Publishes tasks to `<prefix>.deliveries` and waits for the confirms (waiting out an outage for
/// `outage_hold`); their Pending history records are queued without waiting (see
/// `history::record_in_background`): the outcome of every delivery is recorded, durably, by the
/// delivery stage. A task delivered before its Pending record lands is fine: the store never lets
/// a record with fewer attempts overwrite one with more.
async fn queue_tasks(
    ctx: &DeliveryContext,
    tasks: Vec<QueuedTask>,
    event_type: &str,
) -> Result<(), StageError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let steps = tasks
        .iter()
        .map(|queued| Step {
            task: &queued.task,
            event_type,
            kind: queued.kind,
            status: regrelay_history::executions::TaskStatus::Pending,
            status_message: String::new(),
            payload: None,
            attempt: None,
            target_address: None,
        })
        .collect();
    history::record_in_background(ctx, steps);
    let messages: Vec<&TaskMessageOut> = tasks.iter().map(|queued| &queued.message).collect();
    ctx.publish_patiently("publish_tasks", || ctx.queue.publish_tasks(&messages))
        .await?;
    ctx.metrics
        .tasks_created
        .with_label_values(&["queued"])
        .inc_by(tasks.len() as u64);
    Ok(())
}
