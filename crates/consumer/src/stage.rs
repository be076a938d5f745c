//! The consume loop both stages share: take messages from one queue with a prefetch bound, run a
//! handler per message, and stop cleanly.
//!
//! Design constraints:
//! - In-flight work is bounded by the AMQP prefetch, not by a separate counter.
//! - On shutdown or pause the loop cancels its consumer and lets the handlers already running reach
//!   their ack or nack before closing the channel. Anything unacked when a process dies is redelivered
//!   by RabbitMQ, so a kill -9 loses nothing (it may duplicate).
//! - A lost connection ends the loop's inner part; it reconnects through the broker's backoff gate.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::DeliveryContext;

/// Consumes `queue` until `shutdown`, pausing while `enabled` is false (when given).
pub async fn consume_until<F, Fut>(
    ctx: Arc<DeliveryContext>,
    name: &'static str,
    queue: String,
    prefetch: u16,
    mut enabled: Option<watch::Receiver<bool>>,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Arc<DeliveryContext>, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
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
        let consumer = async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
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
        tracing::info!(message = "Consuming.", stage = name, queue = %queue, prefetch);
        let handlers = TaskTracker::new();
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
                        let handler = handler.clone();
                        handlers.spawn(handler(ctx.clone(), delivery));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(message = "Consumer stream failed; reconnecting.", stage = name, error = %error);
                        break;
                    }
                    None => {
                        tracing::warn!(message = "Consumer was cancelled by the broker; reconnecting.", stage = name);
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
        handlers.wait().await;
        let _ = channel.close(200, "stage stopped".into()).await;
    }
}

/// Settles a message a stage took: acks it once its outcome is durable (`Ok`), or, when that
/// could not be done (a broker or database error), counts the error, waits a moment, so an outage
/// is waited out rather than spun on, and puts the message back for redelivery. Either way a
/// message is never dropped: if even the ack or nack fails, the channel is gone and RabbitMQ
/// redelivers it.
pub(crate) async fn settle(
    ctx: &DeliveryContext,
    stage: &'static str,
    delivery: &Delivery,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => {
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(message = "Cannot ack a message; it will be redelivered.", stage, error = %error);
            }
        }
        Err(reason) => {
            ctx.metrics.stage_errors.with_label_values(&[stage]).inc();
            tracing::warn!(message = "Message not settled; requeueing it.", stage, reason = %reason);
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
