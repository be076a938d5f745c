//! [`TaskQueue`]: the one place delivery tasks, retries, dead letters and replays become AMQP
//! messages on regrelay's queues.
//!
//! Design constraints:
//! - Every publish here is confirmed ([`ConfirmedPublisher`]): `Ok` means the broker stored it.
//! - A publish that comes back unroutable (`Returned`: someone deleted a queue) declares the
//!   topology again before the caller's next try; a retry bucket declared by this process is
//!   forgotten, declared again and the publish retried once at once.
//! - Retry buckets are declared on first use (the ladder is fixed, so their arguments never change)
//!   and remembered per process: a retry costs one publish, not a declare and a publish.
//! - Callers decide *whether* to publish and how patiently (the consumer waits out an outage for
//!   `outage_hold`); this type only says what the broker did.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lapin::BasicProperties;

use crate::publisher::{ConfirmedPublisher, OutgoingMessage, PublishError};
use crate::task::TaskMessageOut;
use crate::topology::{bucket_for, Topology};

/// Publishes to `<prefix>.deliveries`, the retry buckets, `<prefix>.events.wait` and
/// `<prefix>.dead-letter`.
pub struct TaskQueue {
    publisher: ConfirmedPublisher,
    topology: Topology,
    /// Retry buckets already declared by this process.
    declared_buckets: Mutex<HashSet<Duration>>,
}

/// A message for `<prefix>.dead-letter`, encoded by its writer (`dead-letter.v1`, whose headers
/// repeat the key facts): the queue only stores it.
pub struct DeadLetterMessage {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl TaskQueue {
    pub fn new(publisher: ConfirmedPublisher) -> Self {
        let topology = publisher.broker().topology().clone();
        Self {
            publisher,
            topology,
            declared_buckets: Mutex::new(HashSet::new()),
        }
    }

    pub fn publisher(&self) -> &ConfirmedPublisher {
        &self.publisher
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes delivery tasks to `<prefix>.deliveries` and waits for every confirm.
    pub async fn publish_tasks(&self, tasks: &[&TaskMessageOut]) -> Result<(), PublishError> {
        let queue = self.topology.deliveries_queue();
        let messages = tasks
            .iter()
            .map(|task| OutgoingMessage {
                exchange: "",
                routing_key: &queue,
                body: &task.body,
                properties: task.properties.clone(),
            })
            .collect();
        self.publish_or_redeclare(messages).await
    }

    /// Puts a task in the retry bucket for `delay` (rounded up: never early) and waits for the
    /// confirm; returns the bucket.
    pub async fn schedule_retry(
        &self,
        task: &TaskMessageOut,
        delay: Duration,
    ) -> Result<Duration, PublishError> {
        self.publish_to_bucket(delay, &task.body, &task.properties)
            .await
    }

    /// Parks a copy of a message the delivery stage holds (its body and properties unchanged) in
    /// the retry bucket for `delay`; returns the bucket's queue name.
    pub async fn park_task(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        delay: Duration,
    ) -> Result<String, PublishError> {
        let bucket = self.publish_to_bucket(delay, body, properties).await?;
        Ok(self.topology.retry_queue(bucket))
    }

    /// Parks a copy of an event message (body and properties unchanged) in `<prefix>.events.wait`,
    /// which hands it back to `<prefix>.events` after its TTL; returns the queue's name.
    pub async fn park_event(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<String, PublishError> {
        let queue = self.topology.events_wait_queue();
        self.publish_or_redeclare(vec![OutgoingMessage {
            exchange: "",
            routing_key: &queue,
            body,
            properties: properties.clone(),
        }])
        .await?;
        Ok(queue)
    }

    /// Publishes an event message back onto `<prefix>.events` (a replay of one RabbitMQ
    /// dead-lettered from there).
    pub async fn replay_event(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let queue = self.topology.events_queue();
        self.publish_or_redeclare(vec![OutgoingMessage {
            exchange: "",
            routing_key: &queue,
            body,
            properties,
        }])
        .await
    }

    /// Publishes a dead letter to `<prefix>.dead-letter` and waits for the confirm.
    pub async fn dead_letter(&self, message: &DeadLetterMessage) -> Result<(), PublishError> {
        let queue = self.topology.dead_letter_queue();
        self.publish_or_redeclare(vec![OutgoingMessage {
            exchange: "",
            routing_key: &queue,
            body: &message.body,
            properties: message.properties.clone(),
        }])
        .await
    }

    /// Publishes; a message returned unroutable (a queue deleted under us) declares the topology
    /// again, so the caller's next try can succeed. The error is still returned.
    async fn publish_or_redeclare(
        &self,
        messages: Vec<OutgoingMessage<'_>>,
    ) -> Result<(), PublishError> {
        let result = self.publisher.publish(messages).await;
        if let Err(PublishError::Returned { .. }) = &result {
            if let Err(error) = self.publisher.broker().redeclare_topology().await {
                tracing::warn!(message = "Cannot declare the topology again.", error = %error);
            }
        }
        result.map(|_| ())
    }

    /// Publishes one message to the retry bucket for `delay` (rounded up) and waits for the
    /// confirm; returns the bucket. If someone deleted the bucket since this process declared it,
    /// the publish comes back unroutable and one re-declaration fixes it.
    async fn publish_to_bucket(
        &self,
        delay: Duration,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<Duration, PublishError> {
        let bucket = bucket_for(delay);
        let queue = self.topology.retry_queue(bucket);
        for attempt in 0..2 {
            if !self.bucket_declared(bucket) {
                let channel = self.publisher.broker().open_channel().await?;
                let declared = self.topology.declare_retry_queue(&channel, bucket).await;
                let _ = channel.close(200, "declared".into()).await;
                declared?;
                self.set_bucket_declared(bucket, true);
            }
            let result = self
                .publisher
                .publish(vec![OutgoingMessage {
                    exchange: "",
                    routing_key: &queue,
                    body,
                    properties: properties.clone(),
                }])
                .await;
            match result {
                Err(PublishError::Returned { .. }) if attempt == 0 => {
                    self.set_bucket_declared(bucket, false);
                }
                other => return other.map(|_| bucket),
            }
        }
        Ok(bucket)
    }

    /// The retry buckets this process has declared (and not seen deleted since), shortest first.
    pub fn declared_buckets(&self) -> Vec<Duration> {
        let mut buckets: Vec<Duration> = self
            .declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        buckets.sort();
        buckets
    }

    fn bucket_declared(&self, bucket: Duration) -> bool {
        self.declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&bucket)
    }

    fn set_bucket_declared(&self, bucket: Duration, declared: bool) {
        let mut buckets = self
            .declared_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if declared {
            buckets.insert(bucket);
        } else {
            buckets.remove(&bucket);
        }
    }
}
