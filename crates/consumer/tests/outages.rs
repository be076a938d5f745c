//! Outages and refusals never turn into loss or a requeue loop, with RabbitMQ 4.x's quorum-queue
//! delivery limit simulated on this machine's 3.10 (a RabbitMQ policy setting `delivery-limit` 20
//! on the work queues, removed again even when the test fails).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{event, http_target, spec, Env, Options};
use lapin::options::BasicPublishOptions;
use regrelay_events::{EventType, RegistryEvent};
use regrelay_producer::{EventMessage, EventSource};
use regrelay_testkit::TestReceiver;

/// Settings of a publishing connection a test makes itself (quick reconnects).
fn publish_settings(url: String, connection_name: &str) -> regrelay_producer::BrokerSettings {
    regrelay_producer::BrokerSettings {
        url,
        connection_name: connection_name.into(),
        role: "publish",
        publish_channels: 1,
        connect_timeout: Duration::from_secs(2),
        reconnect_min_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        tls: Default::default(),
    }
}

/// A RabbitMQ policy on this test's work queues, cleared on drop.
struct DeliveryLimitPolicy {
    name: String,
}

impl DeliveryLimitPolicy {
    fn set(prefix: &str, limit: u32) -> Self {
        let name = format!("{prefix}-delivery-limit");
        let pattern = format!("^{}\\.(events|deliveries)$", prefix.replace('.', "\\."));
        let output = Command::new("rabbitmqctl")
            .args([
                "set_policy",
                "--apply-to",
                "queues",
                &name,
                &pattern,
                &format!("{{\"delivery-limit\":{limit}}}"),
            ])
            .output()
            .expect("run rabbitmqctl (the tests run as root next to the broker)");
        assert!(
            output.status.success(),
            "rabbitmqctl set_policy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { name }
    }
}

impl Drop for DeliveryLimitPolicy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.name])
            .output();
    }
}

#[tokio::test]
async fn a_database_outage_of_forty_seconds_loses_nothing_under_a_delivery_limit() {
    const EVENTS: usize = 5;
    let env = Env::start(
        "outage-limit",
        Options {
            database_proxy: true,
            // Shorter than the outage: events are parked (and come back) several times.
            outage_hold: Duration::from_secs(3),
            ..Options::default()
        },
    )
    .await;
    let _limit = DeliveryLimitPolicy::set(env.broker.prefix(), 20);
    let proxy = env.db_proxy.as_ref().unwrap();
    let receiver = TestReceiver::start().await;
    // System-wide: every event needs its project's id, which needs the database.
    env.policy(
        None,
        spec(
            "everything",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;

    proxy.set_refusing(true);
    proxy.sever();
    let events: Vec<String> = (0..EVENTS)
        .map(|i| event("PUSH_ARTIFACT", &format!("fresh{i}"), "app", "v1"))
        .collect();
    env.publish(&events).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(
        receiver.count(),
        0,
        "nothing can be matched without the database"
    );
    assert!(
        env.metric("regrelay_messages_parked_total{stage=\"matching\"}") >= EVENTS as f64,
        "events are parked, not requeued in a loop"
    );
    proxy.set_refusing(false);

    let requests = receiver.wait_for(EVENTS, Duration::from_secs(60)).await;
    let mut projects: Vec<String> = requests
        .iter()
        .map(|r| {
            r.json()["event_data"]["repository"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    projects.sort();
    projects.dedup();
    assert_eq!(
        projects.len(),
        EVENTS,
        "every event delivered: {projects:?}"
    );
    let dead = env.dead_letters(EVENTS, Duration::from_millis(500)).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}

#[tokio::test]
async fn an_event_the_database_refuses_is_dead_lettered_once_not_looped() {
    let env = Env::start("outage-refused", Options::default()).await;
    let _limit = DeliveryLimitPolicy::set(env.broker.prefix(), 20);
    let receiver = TestReceiver::start().await;
    env.policy(
        None,
        spec(
            "everything",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    // A namespace with a control character: published as ingest would publish an event (the body
    // swapped in after the message was built, so this holds whether or not ingest refuses it).
    let good = event("PUSH_ARTIFACT", "lib", "app", "v1");
    let message = EventMessage::new(
        RegistryEvent::from_json(&good).unwrap(),
        EventSource::Harbor,
        "test-request",
    );
    let bad = event("PUSH_ARTIFACT", "bad\u{1}name", "app", "v1");
    env.broker
        .channel()
        .basic_publish(
            env.broker.topology.events_exchange().as_str().into(),
            "event.PUSH_ARTIFACT.bad".into(),
            BasicPublishOptions::default(),
            bad.as_bytes(),
            message.properties(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // A good event after it is delivered: the consumer is not stuck on the bad one.
    env.publish(&[event("PUSH_ARTIFACT", "lib", "app", "after")])
        .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let dead = env.dead_letters(2, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1, "dead-lettered exactly once: {dead:?}");
    assert!(
        dead[0]["reason"] == "unstorable" || dead[0]["reason"] == "poison",
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["original"]["body"], bad);
    assert_eq!(
        env.broker.depth(&env.broker.topology.events_queue()).await,
        0
    );
    assert_eq!(
        env.metric("regrelay_consumer_errors_total{stage=\"matching\",error_type=\"database\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_deleted_core_queue_is_declared_again_and_nothing_is_lost() {
    let env = Env::start(
        "outage-deleted-queue",
        Options {
            // Every task goes through the deliveries queue.
            direct_first_attempt: false,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    let refusing = TestReceiver::start().await;
    refusing.set_default_status(400);
    env.policy(
        Some("lib"),
        spec(
            "two",
            vec![
                http_target(receiver.url("/ok")),
                http_target(refusing.url("/refuses")),
            ],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    for queue in [
        env.broker.topology.deliveries_queue(),
        env.broker.topology.dead_letter_queue(),
    ] {
        env.broker
            .channel()
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    env.publish(&[event("PUSH_ARTIFACT", "lib", "app", "v1")])
        .await;
    // The task publish came back unroutable, the topology was declared again, and it went through;
    // the 400 became a dead letter in the re-declared dead-letter queue.
    assert_eq!(receiver.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    let dead = env.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "client_error");
}

#[tokio::test]
async fn the_first_retry_into_a_new_bucket_does_not_repeat_the_attempt() {
    let env = Env::start("outage-fresh-bucket", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[503]);
    env.policy(
        Some("lib"),
        spec(
            "retry",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    env.publish(&[event("PUSH_ARTIFACT", "lib", "app", "v1")])
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let delivered = "regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}";
    assert_eq!(
        env.metric_when(delivered, 1.0, Duration::from_secs(5))
            .await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count(),
        2,
        "one failed attempt, one retry, nothing more"
    );
}

#[tokio::test]
async fn a_work_queue_of_an_older_release_is_used_and_reported() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    use regrelay_producer::{Broker, ProducerMetrics};

    let broker = regrelay_testkit::TestBroker::new("outdated-queue").await;
    // The events queue as an older regrelay declared it: quorum, nothing else.
    let mut legacy = FieldTable::default();
    legacy.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    broker
        .channel()
        .queue_declare(
            broker.topology.events_queue().as_str().into(),
            QueueDeclareOptions::durable(),
            legacy,
        )
        .await
        .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry).unwrap();
    let handle = Broker::new(
        publish_settings(regrelay_testkit::amqp_url(), "regrelay-test-outdated"),
        broker.topology.clone(),
        metrics.clone(),
    );
    // Connecting declares the rest and keeps the old queue (a re-declaration would be refused).
    handle
        .check()
        .await
        .expect("connects and the topology is usable");
    assert_eq!(metrics.topology_outdated_queues.get(), 1);
    assert_eq!(broker.depth(&broker.topology.deliveries_queue()).await, 0);
    assert_eq!(broker.depth(&broker.topology.events_wait_queue()).await, 0);
    handle.close().await;
}

#[tokio::test]
async fn an_event_past_its_delivery_limit_is_dead_lettered_by_the_broker_and_replayable() {
    use regrelay_dead_letters::{
        DeadLetterFilter, DeadLetterMetrics, DeadLetterQueue, DeadLetterReason, ReplaySelection,
    };
    use regrelay_producer::{Broker, ConfirmedPublisher, ProducerMetrics};
    use std::sync::Arc;

    let broker = regrelay_testkit::TestBroker::new("limit-dead-letter").await;
    broker.declare().await;
    // A limit of 1 (the lower of the policy and the queue's own 20 applies).
    let _limit = DeliveryLimitPolicy::set(broker.prefix(), 1);
    let message = EventMessage::new(
        RegistryEvent::from_json(&event("PUSH_ARTIFACT", "lib", "app", "v1")).unwrap(),
        EventSource::Harbor,
        "test-request",
    );
    broker
        .channel()
        .basic_publish(
            broker.topology.events_exchange().as_str().into(),
            message.routing_key().as_str().into(),
            BasicPublishOptions::default(),
            message.body(),
            message.properties(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // A consumer that keeps putting it back (what a crash loop looks like to the broker).
    let events = broker.topology.events_queue();
    for _ in 0..50 {
        if !broker.put_back(&events, Duration::ZERO).await {
            if broker.depth(&broker.topology.dead_letter_queue()).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        broker.depth(&broker.topology.dead_letter_queue()).await,
        1,
        "the broker dead-letters instead of dropping"
    );

    let registry = prometheus::Registry::new();
    let publish = Arc::new(Broker::new(
        publish_settings(regrelay_testkit::amqp_url(), "regrelay-test-limit"),
        broker.topology.clone(),
        ProducerMetrics::register(&registry).unwrap(),
    ));
    let queue = DeadLetterQueue::new(
        ConfirmedPublisher::new(publish, Duration::from_secs(5)),
        DeadLetterMetrics::register(&registry).unwrap(),
    );
    let letters = queue.list(&DeadLetterFilter::default(), 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::DeliveryLimit);
    assert_eq!(letters[0].id, message.id);
    assert_eq!(letters[0].project.as_deref(), Some("lib"));
    assert!(letters[0].replayable);

    let report = queue
        .replay(&ReplaySelection::Ids(vec![message.id]))
        .await
        .unwrap();
    assert_eq!(report.replayed, vec![message.id], "{report:?}");
    let back = broker.take(&events, 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1);
    let decoded =
        EventMessage::decode(&back[0].delivery.properties, &back[0].delivery.data).unwrap();
    assert_eq!(decoded.id, message.id);
    assert_eq!(broker.depth(&broker.topology.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn after_shutdown_no_new_attempt_starts() {
    let mut env = Env::start(
        "shutdown-no-attempt",
        Options {
            direct_first_attempt: false,
            per_target_concurrency: 1,
            max_waiting_per_target: 8,
            // Waiting tasks keep waiting for the one slot instead of being deferred.
            deferral_delay: Duration::from_secs(30),
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    receiver.set_delay(Duration::from_millis(1500));
    env.policy(
        Some("lib"),
        spec(
            "slow",
            vec![http_target(receiver.url("/slow"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    env.publish(&[
        event("PUSH_ARTIFACT", "lib", "app", "a"),
        event("PUSH_ARTIFACT", "lib", "app", "b"),
        event("PUSH_ARTIFACT", "lib", "app", "c"),
    ])
    .await;
    // One attempt is in flight; the other two tasks wait for its slot.
    receiver.wait_for(1, Duration::from_secs(10)).await;
    env.stop().await;
    assert_eq!(
        receiver.count(),
        1,
        "the tasks that were waiting are put back, not attempted, once the process stops"
    );
    assert_eq!(
        env.broker
            .depth(&env.broker.topology.deliveries_queue())
            .await,
        2,
        "and they are back on the queue"
    );
}

#[tokio::test]
async fn a_broker_connection_moves_to_the_next_address_when_one_fails() {
    use regrelay_producer::{Broker, ProducerMetrics};
    use regrelay_testkit::{TcpProxy, TestBroker};

    let broker = TestBroker::new("broker-addresses").await;
    broker.declare().await;
    let first = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let second = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = |proxy: &TcpProxy| format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry).unwrap();
    let handle = Broker::new(
        publish_settings(
            format!("{}, {}", url(&first), url(&second)),
            "regrelay-test-addresses",
        ),
        broker.topology.clone(),
        metrics.clone(),
    );
    let in_use = |proxy: &TcpProxy| {
        metrics
            .broker_address
            .with_label_values(&["publish", &format!("amqp://***@{}/%2f", proxy.addr())])
            .get()
    };
    handle.check().await.expect("connects to the first address");
    assert_eq!(handle.address(), format!("amqp://***@{}/%2f", first.addr()));
    assert_eq!((in_use(&first), in_use(&second)), (1, 0));

    // The first node goes away: the next connect fails there, the one after uses the second.
    first.set_refusing(true);
    first.sever();
    let mut connected = false;
    for _ in 0..100 {
        if handle.check().await.is_ok() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "reconnected through the second address");
    assert_eq!(
        handle.address(),
        format!("amqp://***@{}/%2f", second.addr())
    );
    assert_eq!((in_use(&first), in_use(&second)), (0, 1));
    handle.close().await;
}

/// Publishes one message to `queue` through `publisher` in a task of its own.
fn publish_in_background(
    publisher: regrelay_producer::ConfirmedPublisher,
    queue: String,
    body: &'static [u8],
) -> tokio::task::JoinHandle<Result<Duration, regrelay_producer::PublishError>> {
    tokio::spawn(async move {
        publisher
            .publish(vec![regrelay_producer::OutgoingMessage {
                exchange: "",
                routing_key: &queue,
                body,
                properties: lapin::BasicProperties::default().with_delivery_mode(2),
            }])
            .await
    })
}

#[tokio::test]
async fn a_late_confirm_is_waited_for_instead_of_publishing_a_second_copy() {
    use regrelay_producer::{Broker, ConfirmedPublisher, ProducerMetrics, PublishError};
    use regrelay_testkit::{TcpProxy, TestBroker};
    use std::sync::Arc;

    let broker = TestBroker::new("late-confirm").await;
    broker.declare().await;
    let queue = broker.topology.deliveries_queue();
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry).unwrap();
    let handle = Arc::new(Broker::new(
        publish_settings(
            format!("amqp://guest:guest@{}/%2f", proxy.addr()),
            "regrelay-test-late-confirm",
        ),
        broker.topology.clone(),
        metrics.clone(),
    ));
    let timeout = Duration::from_millis(200);
    let patient =
        ConfirmedPublisher::new(handle.clone(), timeout).with_patience(Duration::from_secs(30));
    // The channel is open before the broker turns slow.
    publish_in_background(patient.clone(), queue.clone(), b"warm-up")
        .await
        .unwrap()
        .expect("published while the broker answers");
    assert_eq!(broker.depth(&queue).await, 1);

    // The broker stores the message but its confirm is held for five confirm timeouts.
    proxy.hold_replies(true);
    let waiting = publish_in_background(patient, queue.clone(), b"late");
    tokio::time::sleep(timeout * 5).await;
    assert!(!waiting.is_finished(), "still waiting for the confirm");
    assert!(
        metrics.publish_confirms_late.get() >= 3,
        "each timeout passed is counted: {}",
        metrics.publish_confirms_late.get()
    );
    assert_eq!(broker.depth(&queue).await, 2, "the broker has stored it");
    proxy.hold_replies(false);
    waiting
        .await
        .unwrap()
        .expect("the late confirm is taken as the confirm");
    assert_eq!(
        broker.depth(&queue).await,
        2,
        "one copy: nothing was published again"
    );
    assert_eq!(
        metrics
            .publish_failures
            .with_label_values(&["confirm_timeout"])
            .get(),
        0
    );

    // Without patience the same wait is an error, though the message is stored: a caller that
    // then publishes again puts a second copy on the queue. That is what the patience prevents.
    let impatient = ConfirmedPublisher::new(handle.clone(), timeout);
    proxy.hold_replies(true);
    let given_up = publish_in_background(impatient, queue.clone(), b"given up");
    tokio::time::sleep(timeout * 3).await;
    proxy.hold_replies(false);
    assert!(matches!(
        given_up.await.unwrap(),
        Err(PublishError::ConfirmTimeout(_))
    ));
    assert_eq!(broker.depth(&queue).await, 3, "stored all the same");
    handle.close().await;
}

#[tokio::test]
async fn a_retry_whose_confirm_is_late_is_delivered_once() {
    let timeout = Duration::from_millis(200);
    let env = Env::start(
        "late-retry-confirm",
        Options {
            publish_proxy: Some((timeout, Duration::from_secs(20))),
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[500]);
    env.policy(
        Some("lib"),
        spec(
            "late",
            vec![http_target(receiver.url("/late"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    let (proxy, consumer_publish) = env.publish_proxy.as_ref().expect("publish proxy");
    // The consumer's publishing connection is up before the broker turns slow.
    consumer_publish.check().await.expect("connected");

    // The first attempt fails; the broker stores its retry but confirms it only after many
    // confirm timeouts.
    proxy.hold_replies(true);
    env.publish(&[event("PUSH_ARTIFACT", "lib", "app", "late")])
        .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let late = env
        .metric_when(
            "regrelay_publish_confirms_late_total",
            3.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(late >= 3.0, "the retry's confirm is waited for: {late}");
    proxy.hold_replies(false);

    let requests = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(requests.len(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.count(),
        2,
        "one retry: the late-confirmed publish was not published again"
    );
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id"),
        "the retry is the same message"
    );
    assert_eq!(
        env.metric(r#"regrelay_deliveries_total{outcome="delivered",target_type="http"}"#),
        1.0
    );
}
