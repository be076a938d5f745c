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
//! - A passive declare of a queue that does not exist (a retry bucket never used) closes the
//!   channel with 404: the next queue is read on a fresh channel, so one missing queue never stops
//!   the loop.
//! - An unreachable broker is a debug line; the gauges keep their last value.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use regrelay_producer::topology::{bucket_name, Topology, RETRY_BUCKETS};
use regrelay_producer::Broker;
use tokio_util::sync::CancellationToken;

use crate::telemetry::ConsumerMetrics;

/// The queues whose depth is exported: (role label, queue name).
pub(crate) fn watched_queues(topology: &Topology) -> Vec<(String, String)> {
    let mut queues = vec![
        ("events".to_owned(), topology.events_queue()),
        ("events_wait".to_owned(), topology.events_wait_queue()),
        ("deliveries".to_owned(), topology.deliveries_queue()),
    ];
    queues.extend(RETRY_BUCKETS.iter().map(|bucket| {
        (
            format!("retry_{}", bucket_name(*bucket)),
            topology.retry_queue(*bucket),
        )
    }));
    // Last, after the buckets that may not exist: a test reads it to show a 404 stops nothing.
    queues.push(("dead_letter".to_owned(), topology.dead_letter_queue()));
    queues
}

/// Reads every watched queue once and sets the gauges; returns how many queues were read.
pub(crate) async fn read_once(
    broker: &Broker,
    topology: &Topology,
    metrics: &ConsumerMetrics,
) -> usize {
    let mut channel: Option<Channel> = None;
    let mut read = 0;
    for (role, name) in watched_queues(topology) {
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
    broker: Arc<Broker>,
    topology: Topology,
    metrics: ConsumerMetrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = read_once(&broker, &topology, &metrics) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
