//! The consume loop both stages share: take messages from one queue with a prefetch bound, run a
//! handler per message, and stop cleanly.
//!
//! Design constraints:
//! - In-flight work is bounded by the AMQP prefetch, not by a separate counter, and by bytes
//!   (`max_in_flight_bytes`, see `byte_budget`): the prefetch adapts to the sizes seen.
//! - On shutdown or pause the loop cancels its consumer and lets the handlers already running reach
//!   their ack or nack before closing the channel. Anything unacked when a process dies is redelivered
//!   by RabbitMQ, so a kill -9 loses nothing (it may duplicate).
//! - A lost connection ends the loop's inner part; it reconnects through the broker's backoff gate.
//! - Acks travel through the channel's `AckWindow` (`multiple` acks where the tags allow), which
//!   is closed, sending what it holds, before the channel is.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack_window::AckWindow;
use crate::byte_budget::ByteBudget;
use crate::context::DeliveryContext;
pub(crate) use crate::settlement::Stage;
pub(crate) use crate::settlement::{cause_chain, Settlement, StageError};

/// Consumes `queue` until `shutdown`, pausing while `enabled` is false (when given).
pub(crate) async fn consume_until<F, Fut>(
    ctx: Arc<DeliveryContext>,
    name: &'static str,
    queue: String,
    prefetch: u16,
    mut enabled: Option<watch::Receiver<bool>>,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Arc<DeliveryContext>, Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let budget = ByteBudget::new(
        ctx.settings.max_in_flight_bytes,
        ctx.settings.largest_message_bytes,
    );
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Some(enabled) = enabled.as_mut() {
            if !*enabled.borrow_and_update() {
                tracing::info!(
                    message = "Stage paused: notifications are disabled.",
                    stage = name
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = enabled.wait_for(|on| *on) => {
                        if changed.is_err() { return; }
                        tracing::info!(message = "Stage resumed: notifications are enabled.", stage = name);
                    }
                }
            }
        }
        let channel = match ctx.consume_broker.open_channel().await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(message = "Cannot open a consume channel.", stage = name, error = %error);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let subscribed = budget.prefetch_for(prefetch);
        let consumer = async {
            channel
                .basic_qos(subscribed, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("regrelay-{name}-{}", uuid::Uuid::new_v4().simple()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let mut consumer = match consumer.await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(message = "Cannot start consuming.", stage = name, queue = %queue, error = %error);
                let _ = channel.close(200, "retrying".into()).await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        tracing::info!(message = "Consuming.", stage = name, queue = %queue, prefetch = subscribed);
        let acks = AckWindow::start(name, ctx.metrics.clone());
        let handlers = TaskTracker::new();
        let mut resubscribe = false;
        // The channel or connection failed: its unacked messages go back to the queue anyway.
        let mut lost = false;
        loop {
            let paused = async {
                match enabled.as_mut() {
                    Some(enabled) => {
                        let _ = enabled.wait_for(|on| !*on).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = paused => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Open from now on, whatever happens next, so no `multiple` ack covers it
                        // before it is settled.
                        acks.taken(delivery.delivery_tag);
                        if delivery.redelivered {
                            ctx.metrics.redelivered.with_label_values(&[name]).inc();
                        }
                        let size = delivery.data.len();
                        budget.observe(size);
                        let held = tokio::select! {
                            held = budget.admit(size) => held,
                            () = shutdown.cancelled() => break,
                        };
                        let handle = handler(ctx.clone(), Received { delivery, acks: acks.clone() });
                        handlers.spawn(async move {
                            handle.await;
                            drop(held);
                        });
                        if budget.should_resubscribe(prefetch, subscribed) {
                            resubscribe = true;
                            break;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(message = "Consumer stream failed; reconnecting.", stage = name, error = %error);
                        lost = true;
                        break;
                    }
                    None => {
                        tracing::warn!(message = "Consumer was cancelled by the broker; reconnecting.", stage = name);
                        lost = true;
                        break;
                    }
                }
            }
        }
        // Stop taking messages, let the running handlers settle theirs, then close the channel;
        // deliveries that were buffered but not started go back to the queue on close.
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        handlers.close();
        if resubscribe {
            // Message sizes changed the prefetch that fits `max_in_flight_bytes`: subscribe again
            // at once on a new channel; this one closes once its handlers have settled.
            tracing::info!(
                message = "Resubscribing with another prefetch for the message sizes seen.",
                stage = name,
                prefetch = budget.prefetch_for(prefetch),
                was = subscribed
            );
            ctx.metrics
                .prefetch_changes
                .with_label_values(&[name])
                .inc();
            tokio::spawn(async move {
                handlers.wait().await;
                acks.close().await;
                let _ = channel.close(200, "resubscribed".into()).await;
            });
            continue;
        }
        if lost {
            // A broker node went away (or cancelled us): consume again at once, on the next
            // address if need be, instead of waiting for handlers whose messages the broker has
            // already taken back (one may be waiting out the outage for `outage_hold`): a node loss
            // must not stall the stage that long. The old handlers finish aside; where their channel
            // died their acks fail and those messages are redelivered (at-least-once, same
            // delivery ids).
            tokio::spawn(async move {
                handlers.wait().await;
                acks.close().await;
                let _ = channel.close(200, "connection lost".into()).await;
            });
            continue;
        }
        handlers.wait().await;
        acks.close().await;
        let _ = channel.close(200, "stage stopped".into()).await;
    }
}

/// A message a stage took from its queue, held until [`settle`] acks or nacks it. Only this module
/// speaks AMQP to the consume side; handlers read the message through this.
pub(crate) struct Received {
    delivery: Delivery,
    acks: Arc<AckWindow>,
}

impl Received {
    pub(crate) fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    pub(crate) fn properties(&self) -> &lapin::BasicProperties {
        &self.delivery.properties
    }

    /// Hands the ack to the channel's window, which sends it with its neighbours'.
    fn ack(&self) {
        self.acks
            .ack(self.delivery.delivery_tag, self.delivery.acker.clone());
    }

    /// Puts the message back now; only then may acks above it go as one frame.
    async fn nack_requeue(&self) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let _ = self.delivery.nack(requeue).await;
        self.acks.settled_otherwise(self.delivery.delivery_tag);
    }
}

/// Settles a message a stage took, in one exhaustive match:
/// - `Ack`: acked.
/// - `Requeue` while stopping: put back (nack), for another consumer or the next start.
/// - `Requeue` for an outage the handler already waited out for `outage_hold`: parked, i.e. a copy
///   is published to the stage's delay queue (`<prefix>.events.wait`, or a retry bucket for a
///   task) and confirmed, then the message is acked; it comes back as a fresh message, with
///   nothing counted against the queue's delivery limit. Only if even that fails (the broker is
///   in trouble) is it put back after a pause, which the queue's `x-delivery-limit` bounds: past
///   it RabbitMQ dead-letters the message into `<prefix>.dead-letter` (reason `delivery_limit`).
///
/// Acks go through the channel's `AckWindow`, within milliseconds. If an ack or nack fails, the
/// channel is gone and RabbitMQ redelivers the message.
pub(crate) async fn settle(
    ctx: &DeliveryContext,
    stage: Stage,
    received: &Received,
    settlement: Settlement,
) {
    let delivery = &received.delivery;
    let error = match settlement {
        Settlement::Ack => {
            received.ack();
            return;
        }
        Settlement::Requeue(error) => error,
    };
    ctx.metrics
        .stage_errors
        .with_label_values(&[stage.as_str(), error.error_type()])
        .inc();
    if matches!(error, StageError::ShuttingDown) {
        tracing::info!(
            message = "Stopping: message put back for redelivery.",
            stage = stage.as_str()
        );
        received.nack_requeue().await;
        return;
    }
    match park(ctx, stage, delivery).await {
        Ok(queue) => {
            ctx.metrics
                .messages_parked
                .with_label_values(&[stage.as_str()])
                .inc();
            tracing::warn!(
                message = "Message not settled; parked in a delay queue until the outage is over.",
                stage = stage.as_str(),
                error = %cause_chain(&error),
                queue = %queue,
            );
            // If this ack fails, the parked copy and the redelivered original may both come back:
            // at-least-once.
            received.ack();
        }
        Err(park_error) => {
            tracing::warn!(
                message = "Message not settled and cannot be parked; putting it back.",
                stage = stage.as_str(),
                error = %cause_chain(&error),
                park_error = %cause_chain(&park_error),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            received.nack_requeue().await;
        }
    }
}

/// Publishes a copy of `delivery` (body and properties unchanged) to the stage's delay queue and
/// waits for the confirm; returns the queue's name.
async fn park(
    ctx: &DeliveryContext,
    stage: Stage,
    delivery: &Delivery,
) -> Result<String, regrelay_producer::PublishError> {
    match stage {
        Stage::Matching => {
            ctx.queue
                .park_event(&delivery.data, &delivery.properties)
                .await
        }
        Stage::Delivery => {
            ctx.queue
                .park_task(&delivery.data, &delivery.properties, PARK_DELAY)
                .await
        }
    }
}

/// How long a parked delivery task waits before it is taken again (a retry bucket; not counted as
/// an attempt).
pub(crate) const PARK_DELAY: Duration = Duration::from_secs(10);
