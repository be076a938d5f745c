//! Names and declaration of regrelay's RabbitMQ topology.
//!
//! Design constraints:
//! - Every name starts with the configured prefix, so several installations or test runs share one broker
//!   (and one vhost) without touching each other.
//! - Declaration is idempotent: every process declares what it uses at start-up and after each reconnect,
//!   with the same arguments, so the order in which processes start never matters.
//! - Queues are quorum queues: replicated, durable, and they keep a message until a consumer acks it.
//!   A classic mirrored queue would lose confirmed messages on some failovers; a quorum queue does not.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use regrelay_events::EventType;

/// The exchange and queue names of one installation, derived from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every exchange and queue name (`REGRELAY_QUEUE_PREFIX`).
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("queue prefix must not be empty")]
    EmptyPrefix,
    #[error("queue prefix is {0} bytes long; at most 100 are allowed")]
    PrefixTooLong(usize),
    #[error("queue prefix {0:?} may only contain ASCII letters, digits, '.', '-' and '_'")]
    PrefixCharacters(String),
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Result<Self, TopologyError> {
        let prefix = prefix.into();
        if prefix.is_empty() {
            return Err(TopologyError::EmptyPrefix);
        }
        // AMQP names are at most 255 bytes; keep room for the suffixes.
        if prefix.len() > 100 {
            return Err(TopologyError::PrefixTooLong(prefix.len()));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(TopologyError::PrefixCharacters(prefix));
        }
        Ok(Self { prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic exchange every accepted event is published to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The quorum queue the consumers take events from; bound to [`Self::events_exchange`] with `#`.
    pub fn events_queue(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Every queue this topology declares (for operators' tooling and test clean-up).
    pub fn queues(&self) -> Vec<String> {
        vec![self.events_queue()]
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.events_exchange()]
    }

    /// Declares the exchanges, queues and bindings, idempotently.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.events_queue().into(),
                QueueDeclareOptions::durable(),
                quorum_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.events_queue().into(),
                self.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// Routing key of an event: `event.<TYPE>.<project>`.
///
/// Operators bind their own queues selectively, e.g. `event.PUSH_ARTIFACT.#` for every push, or
/// `event.*.library` for everything in project `library`. Harbor project names may contain `.`,
/// which adds words to the key; `#` patterns still match them.
pub fn routing_key(event_type: EventType, project: &str) -> String {
    format!("event.{}.{}", event_type.as_str(), project)
}

fn quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("acme-prod").unwrap();
        assert_eq!(t.events_exchange(), "acme-prod.events");
        assert_eq!(t.events_queue(), "acme-prod.events");
    }

    #[test]
    fn prefix_is_validated() {
        assert!(matches!(Topology::new(""), Err(TopologyError::EmptyPrefix)));
        assert!(matches!(
            Topology::new("a b"),
            Err(TopologyError::PrefixCharacters(_))
        ));
        assert!(matches!(
            Topology::new("x".repeat(101)),
            Err(TopologyError::PrefixTooLong(101))
        ));
        assert!(Topology::new("regrelay.test_1-a").is_ok());
    }

    #[test]
    fn routing_key_names_type_and_project() {
        assert_eq!(
            routing_key(EventType::PushArtifact, "library"),
            "event.PUSH_ARTIFACT.library"
        );
    }
}
