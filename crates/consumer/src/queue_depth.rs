//! Queue depths as metrics: `regrelay_queue_messages{queue, state="ready"}` and
//! `regrelay_queue_consumers{queue}`, read with passive declares every `queue_depth_interval`.
//!
//! Design constraints:
//! - The `queue` label is the queue's role (`events`, `events_wait`, `deliveries`, `dead_letter`,
//!   `retry_<bucket>` from the fixed ladder in `producer::topology`), never a queue name, so the
//!   label stays bounded whatever the prefix.
//! - A passive declare answers the ready count and the consumer count only; the unacked count needs
//!   RabbitMQ's management API, which regrelay does not require, so `state="unacked"` is not
//!   exported (docs/metrics.md).
//! - Retry buckets are declared on first use, so most never exist: only the buckets this process
//!   has declared are read (a passive declare of a missing queue closes its channel with a 404,
//!   which lapin logs as an error: twenty of those every interval would be noise, and channel
//!   churn on the consume connection). Every consumer reports the buckets it uses; `max by
//!   (queue)` over consumers is the depth. A queue deleted under us closes the channel the same
//!   way: the next queue is read on a fresh channel, so one missing queue never stops the loop.
//! - An unreachable broker is a debug line; the gauges keep their last value.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use regrelay_producer::topology::{bucket_name, Topology};
use regrelay_producer::Broker;
use tokio_util::sync::CancellationToken;

use crate::context::DeliveryContext;
use crate::telemetry::ConsumerMetrics;

/// The queues whose depth is exported: (role label, queue name).
pub(crate) fn watched_queues(
    topology: &Topology,
    declared_buckets: &[Duration],
) -> Vec<(String, String)> {
    let mut queues = vec![
        ("events".to_owned(), topology.events_queue()),
        ("events_wait".to_owned(), topology.events_wait_queue()),
        ("deliveries".to_owned(), topology.deliveries_queue()),
    ];
    queues.extend(declared_buckets.iter().map(|bucket| {
        (
            format!("retry_{}", bucket_name(*bucket)),
            topology.retry_queue(*bucket),
        )
    }));
    // Last, after the buckets (one may have been deleted since): a 404 before it stops nothing.
    queues.push(("dead_letter".to_owned(), topology.dead_letter_queue()));
    queues
}

/// Reads every watched queue once and sets the gauges; returns how many queues were read.
pub(crate) async fn read_once(
    broker: &Broker,
    topology: &Topology,
    declared_buckets: &[Duration],
    metrics: &ConsumerMetrics,
) -> usize {
    let mut channel: Option<Channel> = None;
    let mut read = 0;
    for (role, name) in watched_queues(topology, declared_buckets) {
        let current = match channel.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => match broker.open_channel().await {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::debug!(message = "Cannot read queue depths.", error = %error);
                    return read;
                }
            },
        };
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match current
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
        {
            Ok(queue) => {
                metrics
                    .queue_messages
                    .with_label_values(&[role.as_str(), "ready"])
                    .set(i64::from(queue.message_count()));
                metrics
                    .queue_consumers
                    .with_label_values(&[role.as_str()])
                    .set(i64::from(queue.consumer_count()));
                read += 1;
                channel = Some(current);
            }
            // A missing queue (a bucket never declared) closed the channel: the next read opens
            // a fresh one.
            Err(error) => {
                tracing::debug!(message = "Cannot read a queue depth.", queue = %role, error = %error);
            }
        }
    }
    if let Some(channel) = channel {
        let _ = channel.close(200, "depth read".into()).await;
    }
    read
}

/// Refreshes the queue depth gauges every `interval` until `shutdown`; a zero interval turns it off.
pub(crate) async fn monitor_until(
    ctx: Arc<DeliveryContext>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        let buckets = ctx.queue.declared_buckets();
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = read_once(&ctx.consume_broker, &ctx.topology, &buckets, &ctx.metrics) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_buckets_are_watched_and_the_dead_letter_queue_comes_last() {
        let topology = Topology::new("p").unwrap();
        let roles = |buckets: &[Duration]| -> Vec<String> {
            watched_queues(&topology, buckets)
                .into_iter()
                .map(|(role, _)| role)
                .collect()
        };
        assert_eq!(
            roles(&[]),
            ["events", "events_wait", "deliveries", "dead_letter"]
        );
        assert_eq!(
            roles(&[Duration::from_secs(1), Duration::from_secs(60)]),
            [
                "events",
                "events_wait",
                "deliveries",
                "retry_1s",
                "retry_1m",
                "dead_letter"
            ]
        );
    }
}
