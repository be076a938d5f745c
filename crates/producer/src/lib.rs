//! Publishes registry events to RabbitMQ durably.
//!
//! Module map:
//! - [`topology`]: the names of regrelay's exchanges and queues under a prefix, and their idempotent declaration.
//! - [`message`]: the wire contract of one event message (body, properties, headers, schema version).
//! - [`broker`]: one supervised AMQP connection with a small pool of confirm-mode channels, reconnecting with backoff.
//! - [`publisher`]: [`EventPublisher`], which returns only once the broker has confirmed every message.
//! - [`task`]: [`DeliveryTask`], the wire contract of one delivery (event × policy × target).
//! - [`task_queue`]: [`TaskQueue`], which publishes tasks, retries (into their bucket), parked
//!   messages, dead letters and replays, confirmed.
//! - [`telemetry`]: the metrics this crate feeds.
//! - [`trace_context`]: W3C trace context in message headers, written on every publish.
//!
//! The producer is both the ingest API's back end and a library that a registry-side program can embed:
//! build a [`Broker`], wrap it in an [`EventPublisher`] and call [`EventPublisher::publish`].

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![warn(unreachable_pub)]

pub mod broker;
pub mod message;
pub mod publisher;
pub mod task;
pub mod task_queue;
pub mod telemetry;
pub mod topology;
pub mod trace_context;

pub use broker::{Broker, BrokerError, BrokerSettings, BrokerTls};
pub use message::{DecodeError, EventMessage, EventSource, SCHEMA_VERSION};
pub use publisher::{ConfirmedPublisher, EventPublisher, OutgoingMessage, PublishError};
pub use task::{DeliveryTask, TaskDecodeError, TaskMessageOut, Trigger};
pub use task_queue::{DeadLetterMessage, TaskQueue};
pub use telemetry::ProducerMetrics;
pub use topology::{Topology, TopologyError};
