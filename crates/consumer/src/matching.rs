//! The matching stage: takes an event from `<prefix>.events`, finds the policies it triggers, and
//! fans it out as one delivery task per (policy, target) onto `<prefix>.deliveries`.
//!
//! Design constraints:
//! - The event is acked only after every task it produced is confirmed by the broker. A crash in
//!   between redelivers the event; its tasks get the same delivery ids, so receivers can drop the
//!   duplicates by `webhook-id`.
//! - An event that cannot be decoded (poison) is dead-lettered with its reason, never requeued in a loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use regrelay_producer::{EventMessage, OutgoingMessage};

use crate::context::DeliveryContext;
use crate::dead_letter::DeadLetterBody;
use crate::history::{self, Step};
use crate::task::{DeliveryTask, Trigger};

pub async fn handle_event(ctx: Arc<DeliveryContext>, delivery: Delivery) {
    let message = match EventMessage::decode(&delivery.properties, &delivery.data) {
        Ok(message) => message,
        Err(error) => {
            let dead = DeadLetterBody::poison(
                ctx.topology.events_queue(),
                &delivery.data,
                format!("event message cannot be read: {error}"),
            );
            settle(
                &ctx,
                &delivery,
                dead.publish(&ctx).await.map_err(|e| e.to_string()),
            )
            .await;
            return;
        }
    };
    settle(&ctx, &delivery, fan_out(&ctx, &message).await).await;
}

/// Matches and publishes the tasks; `Ok` once they are all confirmed.
async fn fan_out(ctx: &DeliveryContext, message: &EventMessage) -> Result<(), String> {
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
    let mut tasks = Vec::new();
    let mut kinds = Vec::new();
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
            tasks.push(task);
            kinds.push(target.kind);
        }
    }
    // Pending in history, queued without waiting (see `history::record_in_background`): the
    // outcome of every delivery is recorded, durably, by the delivery stage. A task delivered
    // before its Pending record lands is fine: the store never lets a record with fewer attempts
    // overwrite one with more.
    let event_type = message.event_type().as_str();
    let steps = tasks
        .iter()
        .zip(&kinds)
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
        .map(DeliveryTask::encode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot encode task: {e}"))?;
    let queue = ctx.topology.deliveries_queue();
    let outgoing = tasks
        .iter()
        .zip(&bodies)
        .map(|(task, body)| OutgoingMessage {
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
    ctx.metrics.tasks_created.inc_by(tasks.len() as u64);
    tracing::debug!(
        message = "Event fanned out.",
        event_id = %message.id,
        event_type,
        policies = matched.len(),
        tasks = tasks.len(),
    );
    Ok(())
}

/// Acks on success. On a broker or database error the event goes back to the queue after a short
/// pause, so an outage is waited out rather than spun on.
async fn settle(ctx: &DeliveryContext, delivery: &Delivery, result: Result<(), String>) {
    match result {
        Ok(()) => {
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                // The channel is gone; the broker redelivers the event, and its tasks keep their ids.
                tracing::warn!(message = "Cannot ack an event; it will be redelivered.", error = %error);
            }
        }
        Err(error) => {
            ctx.metrics
                .stage_errors
                .with_label_values(&["matching"])
                .inc();
            tracing::warn!(message = "Event not fanned out; requeueing it.", error = %error);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}
