//! [`EventPublisher`]: publish event messages and return only once the broker confirmed all of them.
//!
//! Design constraints:
//! - `Ok` means every message is on a durable queue: persistent, routed (`mandatory`) and confirmed.
//! - Anything less is an error the caller sees; nothing is dropped silently. A failed batch may have
//!   been partly enqueued (AMQP cannot take a confirmed message back): the caller answers "not accepted",
//!   the sender resends, and downstream delivery is at-least-once anyway.
//! - A late confirm is not a lost message. A caller that would publish again after a timeout (the
//!   consumer's tasks, retries and dead letters, whose source message stays unacked meanwhile)
//!   makes its publisher patient ([`ConfirmedPublisher::with_patience`]): past the confirm timeout
//!   it counts and logs the wait and keeps waiting on the same channel, up to the patience, since a
//!   second publish of a message the broker did store is delivered twice. Only a channel that
//!   fails, a nack, or a wait past the patience ends the call with an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::{ShortString, ShortStringError};
use lapin::{BasicProperties, Confirmation};

use crate::broker::{Broker, BrokerError};
use crate::message::EventMessage;
use crate::telemetry::PublishFailure;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    #[error("the broker refused to store a message (nack)")]
    Nacked,
    #[error("the broker could not route a message: {code} {text}")]
    Returned { code: u16, text: String },
    #[error("no confirm from the broker within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker did not confirm a message (confirm mode is off on the channel)")]
    NotConfirmed,
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    /// An exchange name or routing key longer than AMQP's 255-byte `shortstr`. Checked for every
    /// message before any is published, so a batch is refused whole rather than half sent.
    #[error("an AMQP name is too long to publish: {0}")]
    NameTooLong(#[from] ShortStringError),
}

impl PublishError {
    pub fn failure(&self) -> PublishFailure {
        match self {
            PublishError::Unavailable(_) => PublishFailure::Unavailable,
            PublishError::Nacked | PublishError::NotConfirmed => PublishFailure::Nack,
            PublishError::Returned { .. } => PublishFailure::Returned,
            PublishError::ConfirmTimeout(_) => PublishFailure::ConfirmTimeout,
            PublishError::Amqp(_) | PublishError::NameTooLong(_) => PublishFailure::Amqp,
        }
    }
}

/// One message to publish: where to, and what.
pub struct OutgoingMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Publishes messages on the broker's confirm-mode channels and waits for every confirm.
/// The building block of [`EventPublisher`] and of the consumer's retry and dead-letter publishing.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    broker: Arc<Broker>,
    /// How long to wait for the broker's confirms before counting them late (and, for an
    /// impatient publisher, giving up on the batch).
    confirm_timeout: Duration,
    /// How long to wait in all before giving up on a batch; at least `confirm_timeout`.
    patience: Duration,
}

impl ConfirmedPublisher {
    /// A publisher that gives up on a batch once `confirm_timeout` passed without every confirm.
    pub fn new(broker: Arc<Broker>, confirm_timeout: Duration) -> Self {
        Self {
            broker,
            confirm_timeout,
            patience: confirm_timeout,
        }
    }

    /// Waits for late confirms up to `patience` in all (never less than the confirm timeout)
    /// instead of giving up after the confirm timeout; each timeout passed is counted in
    /// `regrelay_publish_confirms_late_total` and logged.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience.max(self.confirm_timeout);
        self
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Publishes every message (`mandatory`) and returns once all are confirmed, with the time the
    /// confirms took. Counts failures in `regrelay_publish_failures_total`.
    ///
    /// Runs in a `publish` span (OpenTelemetry kind producer) whose context every message carries
    /// in its headers, so what consumes them continues the same trace.
    #[tracing::instrument(
        name = "publish",
        level = "debug",
        skip_all,
        fields(messages = messages.len(), otel.kind = "producer", otel.status_code = tracing::field::Empty)
    )]
    pub async fn publish(
        &self,
        messages: Vec<OutgoingMessage<'_>>,
    ) -> Result<Duration, PublishError> {
        let result = self.publish_inner(messages).await;
        match &result {
            Ok(elapsed) => self
                .broker
                .metrics()
                .publish_confirm_seconds
                .observe(elapsed.as_secs_f64()),
            Err(error) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                self.broker
                    .metrics()
                    .publish_failures
                    .with_label_values(&[error.failure().as_str()])
                    .inc();
                tracing::warn!(message = "Publish failed.", error = %error);
            }
        }
        result
    }

    async fn publish_inner(
        &self,
        messages: Vec<OutgoingMessage<'_>>,
    ) -> Result<Duration, PublishError> {
        // Names first: a name that cannot be sent refuses the batch before anything is published
        // (lapin's `From<&str>` for `ShortString` would panic on it).
        let messages = messages
            .into_iter()
            .map(|message| {
                let exchange = ShortString::try_new(message.exchange)?;
                let routing_key = ShortString::try_new(message.routing_key)?;
                Ok((exchange, routing_key, message))
            })
            .collect::<Result<Vec<_>, ShortStringError>>()?;
        let channel = self.broker.publish_channel().await?;
        let started = Instant::now();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for (exchange, routing_key, message) in messages {
            let confirm = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    options,
                    message.body,
                    crate::trace_context::inject_current(message.properties),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut confirmed = std::pin::pin!(join_all(confirms));
        let results = loop {
            let waited = started.elapsed();
            let wait = self
                .confirm_timeout
                .min(self.patience.saturating_sub(waited));
            match tokio::time::timeout(wait, confirmed.as_mut()).await {
                Ok(results) => break results,
                Err(_) if started.elapsed() < self.patience => {
                    // The broker may still store them: publishing again would put a second copy
                    // on the queue. Wait on the same channel (its failure ends the wait).
                    self.broker.metrics().publish_confirms_late.inc();
                    tracing::warn!(
                        message = "Publish confirms are late; waiting for them instead of publishing again.",
                        waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        patience_ms = u64::try_from(self.patience.as_millis()).unwrap_or(u64::MAX),
                    );
                }
                Err(_) => {
                    self.broker.replace_channel(&channel).await;
                    return Err(PublishError::ConfirmTimeout(self.patience));
                }
            }
        };
        for result in results {
            match result? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(PublishError::Returned {
                        code: returned.reply_code,
                        text: returned.reply_text.to_string(),
                    })
                }
                Confirmation::Nack(_) => {
                    // The next publish goes out on a fresh channel (see `replace_channel`).
                    self.broker.replace_channel(&channel).await;
                    return Err(PublishError::Nacked);
                }
                Confirmation::NotRequested => return Err(PublishError::NotConfirmed),
            }
        }
        Ok(started.elapsed())
    }
}

/// Publishes events onto the events exchange.
#[derive(Clone)]
pub struct EventPublisher {
    inner: ConfirmedPublisher,
}

impl EventPublisher {
    pub fn new(broker: Arc<Broker>, confirm_timeout: Duration) -> Self {
        Self {
            inner: ConfirmedPublisher::new(broker, confirm_timeout),
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        self.inner.broker()
    }

    /// An event publisher over an existing confirm-mode publisher (the consumers' own, for
    /// regrelay's operational events).
    pub fn over(inner: ConfirmedPublisher) -> Self {
        Self { inner }
    }

    /// Publishes every message and waits for every confirm.
    pub async fn publish(&self, messages: &[EventMessage]) -> Result<(), PublishError> {
        let exchange = self.inner.broker().topology().events_exchange();
        let keys: Vec<String> = messages.iter().map(EventMessage::routing_key).collect();
        let outgoing = messages
            .iter()
            .zip(&keys)
            .map(|(message, key)| OutgoingMessage {
                exchange: &exchange,
                routing_key: key,
                body: message.body(),
                properties: message.properties(),
            })
            .collect();
        self.inner.publish(outgoing).await?;
        let metrics = self.inner.broker().metrics();
        for message in messages {
            metrics
                .events_published
                .with_label_values(&[message.event_type().as_str()])
                .inc();
            tracing::debug!(
                message = "Event published.",
                event_id = %message.id,
                event_type = message.event_type().as_str(),
                project = message.event.project(),
            );
        }
        Ok(())
    }
}
