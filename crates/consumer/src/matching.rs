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
//! - An event that cannot be decoded (poison) is dead-lettered with its reason, never requeued in a loop.

use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use regrelay_producer::{trace_context, EventMessage, OutgoingMessage};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use regrelay_history::policy::TargetKind;

use crate::context::DeliveryContext;
use crate::dead_letter::DeadLetterBody;
use crate::delivery;
use crate::history::{self, Step};
use crate::limiter::Admission;
use crate::policy_cache::CachedPolicy;
use crate::stage;
use crate::task::{DeliveryTask, Trigger};

pub async fn handle_event(ctx: Arc<DeliveryContext>, delivery: Delivery) {
    // One span per event, continuing the trace of the request that published it.
    let span = tracing::debug_span!(
        "match_event",
        otel.kind = "consumer",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // Err only when no OpenTelemetry layer is installed (tracing off): nothing to continue then.
    let _ = span.set_parent(trace_context::extract(&delivery.properties));
    match_event(ctx, delivery).instrument(span).await;
}

async fn match_event(ctx: Arc<DeliveryContext>, delivery: Delivery) {
    let span = tracing::Span::current();
    let message = match EventMessage::decode(&delivery.properties, &delivery.data) {
        Ok(message) => message,
        Err(error) => {
            let dead = DeadLetterBody::poison(
                ctx.topology.events_queue(),
                &delivery.data,
                format!("event message cannot be read: {error}"),
            );
            stage::settle(
                &ctx,
                "matching",
                &delivery,
                dead.publish(&ctx).await.map_err(|e| e.to_string()),
            )
            .await;
            return;
        }
    };
    span.record("event_id", tracing::field::display(message.id));
    span.record("event_type", message.event_type().as_str());
    let result = fan_out(&ctx, &message).await;
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    stage::settle(&ctx, "matching", &delivery, result).await;
}

/// Matches and publishes the tasks; `Ok` once they are all confirmed.
async fn fan_out(ctx: &DeliveryContext, message: &EventMessage) -> Result<(), String> {
    if let Some(generation) = message.policy_generation {
        ctx.cache.catch_up(generation).await.map_err(|e| {
            format!("cannot load the policies the event must be matched against: {e}")
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
    let _budget = ctx
        .fanout_budget
        .acquire_many(wanted)
        .await
        .map_err(|_| "the fan-out budget is closed".to_owned())?;
    // (task, its policy, the target's index in it)
    let mut tasks = Vec::new();
    for cached in &matched {
        let policy = &cached.policy;
        let project_id = match &policy.project {
            Some(project) => project.id,
            None => ctx
                .project_id(message.event.project())
                .await
                .map_err(|e| format!("cannot resolve project id: {e}"))?,
        };
        for (index, target) in policy.targets.iter().enumerate() {
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
            .map_err(|e| format!("cannot build task: {e}"))?;
            let task = DeliveryTask {
                policy_generation: set.generation,
                ..task
            };
            tasks.push((task, cached.clone(), index));
        }
    }
    let event_type = message.event_type().as_str();
    let direct_allowed = ctx.settings.direct_first_attempt && set.notifications_enabled;
    let mut queued = Vec::new();
    let mut direct = Vec::new();
    for (task, cached, index) in tasks {
        if direct_allowed && ctx.limiter.is_fast(&task.target_fingerprint) {
            direct.push(attempt_directly(ctx, task, &message.event, cached, index));
        } else {
            queued.push((task, cached.policy.targets[index].kind));
        }
    }
    let task_count = queued.len() + direct.len();
    let (published, attempted) = tokio::join!(
        queue_tasks(ctx, queued, event_type),
        futures::future::join_all(direct)
    );
    published?;
    attempted.into_iter().collect::<Result<Vec<()>, String>>()?;
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
    event: &regrelay_events::RegistryEvent,
    cached: Arc<CachedPolicy>,
    target_index: usize,
) -> Result<(), String> {
    let _attempting = ctx
        .direct_attempts
        .acquire()
        .await
        .map_err(|_| "the direct attempt bound is closed".to_owned())?;
    let permit = match ctx.limiter.admit(&task.target_fingerprint).await {
        Admission::Go(permit) => permit,
        Admission::Saturated => {
            let kind = cached.policy.targets[target_index].kind;
            let event_type = event.event_type().as_str();
            return queue_tasks(ctx, vec![(task, kind)], event_type).await;
        }
    };
    ctx.metrics
        .tasks_created
        .with_label_values(&["direct"])
        .inc();
    delivery::attempt_and_settle(ctx, task, event, &cached, target_index, permit)
        .await
        .into_result()
}

/// Publishes tasks to `<prefix>.deliveries` and waits for the confirms; their Pending history
/// records are queued without waiting (see `history::record_in_background`): the outcome of every
/// delivery is recorded, durably, by the delivery stage. A task delivered before its Pending record
/// lands is fine: the store never lets a record with fewer attempts overwrite one with more.
async fn queue_tasks(
    ctx: &DeliveryContext,
    tasks: Vec<(DeliveryTask, TargetKind)>,
    event_type: &str,
) -> Result<(), String> {
    if tasks.is_empty() {
        return Ok(());
    }
    let steps = tasks
        .iter()
        .map(|(task, kind)| Step {
            task,
            event_type,
            kind: *kind,
            status: regrelay_history::executions::TaskStatus::Pending,
            status_message: String::new(),
            payload: None,
            attempt: None,
        })
        .collect();
    let bodies = tasks
        .iter()
        .map(|(task, _)| task.encode())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot encode task: {e}"))?;
    let queue = ctx.topology.deliveries_queue();
    let outgoing = tasks
        .iter()
        .zip(&bodies)
        .map(|((task, _), body)| OutgoingMessage {
            exchange: "",
            routing_key: &queue,
            body,
            properties: task.properties(event_type),
        })
        .collect();
    let publish = async {
        ctx.publisher
            .publish(outgoing)
            .await
            .map_err(|e| format!("cannot publish delivery tasks: {e}"))
    };
    history::record_in_background(ctx, steps);
    publish.await?;
    ctx.metrics
        .tasks_created
        .with_label_values(&["queued"])
        .inc_by(tasks.len() as u64);
    Ok(())
}
