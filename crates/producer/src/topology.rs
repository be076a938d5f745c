//! Names and declaration of regrelay's RabbitMQ topology.
//!
//! Design constraints:
//! - Every name starts with the configured prefix, so several installations or test runs share one broker
//!   (and one vhost) without touching each other.
//! - Declaration is idempotent: every process declares what it uses at start-up and after each reconnect,
//!   with the same arguments, so the order in which processes start never matters.
//! - Queues are quorum queues: replicated, durable, and they keep a message until a consumer acks it.
//!   A classic mirrored queue would lose confirmed messages on some failovers; a quorum queue does not.
//! - The broker never drops a message: the two work queues (`<prefix>.events`,
//!   `<prefix>.deliveries`) carry an explicit `x-delivery-limit` ([`DELIVERY_LIMIT`]) and
//!   dead-letter into `<prefix>.dead-letter` (at-least-once), so a message returned too often lands
//!   there with reason `delivery_limit` on 3.10 as on 4.x (whose default limit of 20 otherwise
//!   *drops* it). regrelay itself never returns a message in a loop (consumer `stage`): the limit
//!   is the backstop for crashes and broker trouble.
//! - A queue declared by an older regrelay without those arguments cannot be changed in place
//!   (RabbitMQ refuses a re-declaration with other arguments): [`Topology::declare_on`] then uses
//!   it as it is and reports it, and the broker logs what the operator must do
//!   ([`outdated_queue_advice`]).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
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

    /// Where the matching stage parks an event it cannot match while the database or the broker is
    /// down (after holding it for `outage_hold`): a TTL queue ([`EVENTS_WAIT`]) that dead-letters
    /// it back into [`Self::events_queue`] (directly, not through the exchange, so operators' own
    /// bindings see each event once).
    pub fn events_wait_queue(&self) -> String {
        format!("{}.events.wait", self.prefix)
    }

    /// The quorum queue of delivery tasks: one message per (event, policy, target), fanned out by the
    /// consumers' matching stage and taken by their delivery stage.
    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    /// Where deliveries that cannot be delivered end up, with the reason, for operators to inspect
    /// and replay.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// The delay queue of one retry bucket, e.g. `regrelay.retry.5s`.
    pub fn retry_queue(&self, bucket: Duration) -> String {
        format!("{}.retry.{}", self.prefix, bucket_name(bucket))
    }

    /// Every queue this topology may declare (for operators' tooling and test clean-up).
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.events_queue(),
            self.events_wait_queue(),
            self.deliveries_queue(),
            self.dead_letter_queue(),
        ];
        queues.extend(RETRY_BUCKETS.iter().map(|b| self.retry_queue(*b)));
        queues
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.events_exchange()]
    }

    /// Declares the exchanges, queues and bindings, idempotently, on one channel. Fails (and the
    /// broker closes the channel) if a queue exists with other arguments; [`Self::declare_on`]
    /// copes with that.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        self.declare_exchange(channel).await?;
        for queue in [self.events_queue(), self.deliveries_queue()] {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.work_queue_arguments(),
                )
                .await?;
        }
        self.declare_rest(channel).await
    }

    /// Declares everything like [`Self::declare`], each work queue on a channel of its own. A work
    /// queue that exists with the arguments of an older regrelay (no delivery limit, no
    /// dead-letter target) is used as it is: it is checked passively and its name returned, so the
    /// caller tells the operator. Any other failure is an error.
    pub async fn declare_on(&self, connection: &Connection) -> Result<Vec<String>, lapin::Error> {
        let mut outdated = Vec::new();
        for queue in [self.events_queue(), self.deliveries_queue()] {
            let channel = connection.create_channel().await?;
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.work_queue_arguments(),
                )
                .await;
            match declared {
                Ok(_) => {
                    let _ = channel.close(200, "declared".into()).await;
                }
                Err(error) if is_precondition_failed(&error) => {
                    let channel = connection.create_channel().await?;
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    let _ = channel.close(200, "checked".into()).await;
                    outdated.push(queue);
                }
                Err(error) => return Err(error),
            }
        }
        let channel = connection.create_channel().await?;
        self.declare_exchange(&channel).await?;
        self.declare_rest(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(outdated)
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), lapin::Error> {
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
            .await
    }

    /// The binding, the events wait queue and the dead-letter queue (after the work queues).
    async fn declare_rest(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .queue_bind(
                self.events_queue().into(),
                self.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.events_wait_queue().into(),
                QueueDeclareOptions::durable(),
                self.delay_arguments(EVENTS_WAIT, &self.events_queue()),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions::durable(),
                quorum_arguments(),
            )
            .await?;
        Ok(())
    }

    /// The work queues' arguments: quorum, at most [`DELIVERY_LIMIT`] deliveries, then into the
    /// dead-letter queue, at-least-once (which needs `reject-publish` overflow; there is no length
    /// limit, so publishing is never refused for it).
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut args = quorum_arguments();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        dead_letter_into(&mut args, &self.dead_letter_queue());
        args
    }

    /// A delay queue: holds each message for `ttl`, then dead-letters it into `target` through the
    /// default exchange, at-least-once.
    fn delay_arguments(&self, ttl: Duration, target: &str) -> FieldTable {
        let mut args = quorum_arguments();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        dead_letter_into(&mut args, target);
        args
    }

    /// Declares the delay queue of one retry bucket. Declared on first use rather than at start-up,
    /// because most installations only ever use a few buckets.
    ///
    /// A message waits there for the bucket's TTL, then RabbitMQ dead-letters it back to the
    /// deliveries queue (through the default exchange). At-least-once dead-lettering (RabbitMQ 3.10+,
    /// quorum queues, which requires `reject-publish` overflow) means a broker crash while moving the
    /// message cannot lose it. The arguments depend only on the bucket, never on configuration, so a
    /// changed retry schedule never conflicts with queues that already exist.
    pub async fn declare_retry_queue(
        &self,
        channel: &Channel,
        bucket: Duration,
    ) -> Result<(), lapin::Error> {
        channel
            .queue_declare(
                self.retry_queue(bucket).into(),
                QueueDeclareOptions::durable(),
                self.delay_arguments(bucket, &self.deliveries_queue()),
            )
            .await?;
        Ok(())
    }
}

/// Deliveries a work queue allows a message before RabbitMQ dead-letters it (reason
/// `delivery_limit`): RabbitMQ 4.x's default, set explicitly so 3.x behaves the same and 4.x
/// dead-letters instead of dropping. Only crashes, lost connections and broker trouble return a
/// message; regrelay's own outage handling parks messages in delay queues instead.
pub const DELIVERY_LIMIT: i64 = 20;

/// How long an event parked in `<prefix>.events.wait` waits before it is matched again.
pub const EVENTS_WAIT: Duration = Duration::from_secs(10);

/// What an operator must do about a work queue declared by an older regrelay, in words for the
/// start-up log (its arguments cannot be changed in place).
pub fn outdated_queue_advice(topology: &Topology, queue: &str) -> String {
    let dead_letter = topology.dead_letter_queue();
    format!(
        "queue {queue} was declared by an older regrelay without a delivery limit or dead-letter target, \
         so on RabbitMQ 4.x a message returned {DELIVERY_LIMIT} times would be dropped. Either apply a policy \
         (keeps every message, no downtime): rabbitmqctl set_policy --apply-to queues regrelay-{queue} '^{pattern}$' \
         '{{\"delivery-limit\":{DELIVERY_LIMIT},\"dead-letter-exchange\":\"\",\"dead-letter-routing-key\":\"{dead_letter}\",\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"}}' \
         (this warning then stays, the protection applies); or stop the api processes, wait until the queue is empty \
         (rabbitmqctl list_queues name messages), delete it (rabbitmqctl delete_queue {queue}) and restart regrelay, \
         which declares it with the new arguments",
        pattern = queue.replace('.', "\\."),
    )
}

/// Whether RabbitMQ refused a declaration because the object exists with other arguments.
pub fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The delays RabbitMQ can hold a retry for: one TTL queue per bucket. A computed delay is rounded
/// *up* to a bucket ([`bucket_for`]), so a retry never comes earlier than its schedule or a
/// receiver's `Retry-After`. The ladder is fixed (not configuration) so queue arguments never change.
pub const RETRY_BUCKETS: &[Duration] = &[
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(8 * 3600),
    Duration::from_secs(12 * 3600),
    Duration::from_secs(24 * 3600),
];

/// The smallest bucket that is at least `delay`, or the largest bucket.
pub fn bucket_for(delay: Duration) -> Duration {
    RETRY_BUCKETS
        .iter()
        .copied()
        .find(|bucket| *bucket >= delay)
        .unwrap_or(RETRY_BUCKETS[RETRY_BUCKETS.len() - 1])
}

/// Stable text of a bucket for queue names: `100ms`, `1s`, `2m`, `1h`.
pub fn bucket_name(bucket: Duration) -> String {
    let ms = bucket.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Longest routing key AMQP carries (a `shortstr`).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// Routing key of an event: `event.<TYPE>.<project>` when that fits in [`MAX_ROUTING_KEY_BYTES`],
/// else `event.<TYPE>.<head>~<hash>`.
///
/// Operators bind their own queues selectively, e.g. `event.PUSH_ARTIFACT.#` for every push, or
/// `event.*.library` for everything in project `library`. Harbor project names may contain `.`,
/// which adds words to the key; `#` patterns still match them.
///
/// The fallback: a project name may be 255 characters long (Harbor's limit, checked at ingest),
/// and `event.<TYPE>.` takes up to 25 bytes, so a long name does not fit. Then the key is the
/// project's first bytes (cut at a character boundary, so the key stays UTF-8) followed by `~`
/// and 16 hex digits of a hash of the whole name (the first 8 bytes of its UUIDv5 under a fixed
/// namespace), filling at most 255 bytes. It is stable: the same project always gets the same
/// key, in every process and version, so a binding on it keeps matching. `~` never occurs in a
/// Harbor project or a Distribution namespace (`[a-z0-9._-]`), so a fallback key never equals
/// the key of a project that fits. `event.PUSH_ARTIFACT.#` and `#` match either form; to bind
/// one long project, use the key this function gives it (the full name is in the message's
/// `x-regrelay-project` header).
pub fn routing_key(event_type: EventType, project: &str) -> String {
    let key = format!("event.{}.{}", event_type.as_str(), project);
    if key.len() <= MAX_ROUTING_KEY_BYTES {
        return key;
    }
    let hash = uuid::Uuid::new_v5(&ROUTING_KEY_NAMESPACE, project.as_bytes());
    let hash = &hash.simple().to_string()[..16];
    let prefix = format!("event.{}.", event_type.as_str());
    let room = MAX_ROUTING_KEY_BYTES.saturating_sub(prefix.len() + 1 + hash.len());
    let mut cut = room.min(project.len());
    while !project.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}~{hash}", &project[..cut])
}

/// Namespace of the UUIDv5 hashes in fallback routing keys (a fixed, random UUID; changing it
/// changes every long project's key).
const ROUTING_KEY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x2d0b_8f4e_61a3_4c57_b9e2_07f6_c3a1_5d84);

/// Dead-letters into `queue` through the default exchange, at-least-once (which needs
/// `reject-publish` overflow; without a length limit that refuses nothing).
fn dead_letter_into(args: &mut FieldTable, queue: &str) {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
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
    fn buckets_round_up_and_have_stable_names() {
        assert_eq!(
            bucket_for(Duration::from_millis(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            bucket_for(Duration::from_millis(1001)),
            Duration::from_secs(2)
        );
        assert_eq!(bucket_for(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(
            bucket_for(Duration::from_secs(999_999)),
            Duration::from_secs(86400)
        );
        let names: Vec<String> = RETRY_BUCKETS.iter().map(|b| bucket_name(*b)).collect();
        assert_eq!(names[0], "100ms");
        assert_eq!(names[3], "1s");
        assert_eq!(names[9], "1m");
        assert_eq!(names[15], "1h");
        let t = Topology::new("p").unwrap();
        assert_eq!(t.retry_queue(Duration::from_secs(30)), "p.retry.30s");
        assert!(RETRY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn work_queues_have_a_delivery_limit_and_dead_letter_into_the_dead_letter_queue() {
        let t = Topology::new("p").unwrap();
        let args = t.work_queue_arguments();
        let get = |key: &str| args.inner().get(key).cloned();
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString("p.dead-letter".into()))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert!(t.queues().contains(&"p.events.wait".to_owned()));
        let advice = outdated_queue_advice(&t, "p.events");
        assert!(
            advice.contains("rabbitmqctl set_policy") && advice.contains("'^p\\.events$'"),
            "{advice}"
        );
    }

    #[test]
    fn routing_key_names_type_and_project() {
        assert_eq!(
            routing_key(EventType::PushArtifact, "library"),
            "event.PUSH_ARTIFACT.library"
        );
    }

    #[test]
    fn routing_key_always_fits_and_is_stable() {
        let longest_type = EventType::ALL
            .iter()
            .copied()
            .max_by_key(|t| t.as_str().len())
            .unwrap();
        for event_type in EventType::ALL.iter().copied() {
            let prefix_len = "event..".len() + event_type.as_str().len();
            // The longest project that fits keeps the plain form, one byte more takes the fallback.
            let fits = "p".repeat(MAX_ROUTING_KEY_BYTES - prefix_len);
            let key = routing_key(event_type, &fits);
            assert_eq!(key, format!("event.{}.{fits}", event_type.as_str()));
            assert_eq!(key.len(), MAX_ROUTING_KEY_BYTES);
            let over = format!("{fits}q");
            let key = routing_key(event_type, &over);
            assert!(key.len() <= MAX_ROUTING_KEY_BYTES, "{}", key.len());
            assert!(key.starts_with(&format!("event.{}.ppp", event_type.as_str())));
            assert!(key.contains('~'), "{key}");
            assert_eq!(key, routing_key(event_type, &over), "stable");
        }
        // Names that share their first 255 bytes still get different keys.
        let a = format!("{}a", "x".repeat(300));
        let b = format!("{}b", "x".repeat(300));
        assert_ne!(routing_key(longest_type, &a), routing_key(longest_type, &b));
        // A fixed expectation, so a change of the hash is seen (it would move bindings).
        let key = routing_key(EventType::PushArtifact, &"n".repeat(255));
        assert_eq!(key.len(), 255);
        assert_eq!(
            key,
            format!("event.PUSH_ARTIFACT.{}~b5ff2c853bb35320", "n".repeat(218))
        );
    }

    #[test]
    fn routing_key_cuts_at_a_character_boundary() {
        // 255 four-byte characters (1020 bytes), and every alignment of a multi-byte character
        // against the cut.
        for pad in 0..4 {
            let project = format!("{}{}", "a".repeat(pad), "\u{1F433}".repeat(255));
            for event_type in EventType::ALL.iter().copied() {
                let key = routing_key(event_type, &project);
                assert!(key.len() <= MAX_ROUTING_KEY_BYTES, "{}", key.len());
                assert!(key.len() > MAX_ROUTING_KEY_BYTES - 4, "{}", key.len());
                lapin::types::ShortString::try_new(key.clone()).unwrap();
            }
        }
    }
}
