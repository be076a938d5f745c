//! [`DeadLetterQueue`] against the real RabbitMQ: hand-made dead letters (the real `DeadLetterBody`
//! shape) on a unique prefix, listed, shown, replayed and purged; nothing lost, even when the
//! connection is cut in the middle of a replay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use prometheus::Registry;
use regrelay_dead_letters::letter::Schema;
use regrelay_dead_letters::{
    DeadLetterBody, DeadLetterFilter, DeadLetterMetrics, DeadLetterQueue, DeadLetterReason,
    PolicySummary, ReplaySelection, TargetSummary,
};
use regrelay_events::RegistryEvent;
use regrelay_history::policy::TargetKind;
use regrelay_producer::{Broker, BrokerSettings, ConfirmedPublisher, ProducerMetrics};
use regrelay_producer::{DeliveryTask, Trigger};
use regrelay_testkit::{amqp_url, TcpProxy, TestBroker};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

struct Env {
    broker: TestBroker,
    queue: DeadLetterQueue,
    registry: Registry,
}

impl Env {
    async fn start(name: &str) -> Self {
        Self::start_at(name, amqp_url()).await
    }

    /// The dead-letter queue reached through `url` (a proxy, to cut the connection).
    async fn start_at(name: &str, url: String) -> Self {
        let broker = TestBroker::new(name).await;
        broker.declare().await;
        let registry = Registry::new();
        let producer = ProducerMetrics::register(&registry).unwrap();
        let settings = BrokerSettings {
            url,
            connection_name: "regrelay-test-dlq".into(),
            role: "publish",
            publish_channels: 1,
            connect_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_millis(200),
            tls: Default::default(),
        };
        let publish = Arc::new(Broker::new(settings, broker.topology.clone(), producer));
        let queue = DeadLetterQueue::new(
            ConfirmedPublisher::new(publish, Duration::from_secs(5)),
            DeadLetterMetrics::register(&registry).unwrap(),
        );
        Self {
            broker,
            queue,
            registry,
        }
    }

    fn dlq(&self) -> String {
        self.broker.topology.dead_letter_queue()
    }

    fn deliveries(&self) -> String {
        self.broker.topology.deliveries_queue()
    }

    /// Publishes a dead letter as the delivery stage writes it; returns its id.
    async fn dead_letter(&self, letter: Letter<'_>) -> Uuid {
        let event = RegistryEvent::from_json(&push(letter.project)).unwrap();
        let mut task = DeliveryTask::new(
            Uuid::new_v4(),
            "req-1",
            &event,
            letter.policy_id,
            1,
            0,
            "https://hooks.example.com/x",
            Trigger::Event,
        )
        .unwrap();
        task.attempts = 3;
        task.last_status = Some(500);
        let body = DeadLetterBody {
            schema: Schema,
            id: task.delivery_id,
            reason: letter.reason,
            detail: "gave up after 3 attempts; last: HTTP 500".into(),
            dead_lettered_at: ago(letter.age),
            attempts: 3,
            last_status: Some(500),
            last_error: None,
            event_type: Some("PUSH_ARTIFACT".into()),
            project: Some(letter.project.into()),
            policy: Some(PolicySummary {
                id: letter.policy_id,
                name: format!("policy-{}", letter.policy_id),
                project: Some(letter.project.into()),
            }),
            target: Some(TargetSummary {
                kind: TargetKind::Http,
                address: "https://hooks.example.com/x?redacted".into(),
                payload_format: "Default".into(),
            }),
            task: Some(&task),
            original: None,
        };
        self.publish_raw(&serde_json::to_vec(&body).unwrap(), Some(task.delivery_id))
            .await;
        task.delivery_id
    }

    /// Publishes a poison dead letter (no task); returns its id.
    async fn poison(&self) -> Uuid {
        let body = DeadLetterBody::<()>::unprocessable(
            DeadLetterReason::Poison,
            self.deliveries(),
            b"{not a task",
            "task body is not a known task message".into(),
        );
        self.publish_raw(&serde_json::to_vec(&body).unwrap(), Some(body.id))
            .await;
        body.id
    }

    async fn publish_raw(&self, body: &[u8], id: Option<Uuid>) {
        let before = self.broker.depth(&self.dlq()).await;
        let mut headers = FieldTable::default();
        headers.insert(
            "x-regrelay-target".into(),
            AMQPValue::LongString("https://user:pw@hooks.example.com/x?token=abc".into()),
        );
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = id {
            properties = properties.with_message_id(id.to_string().into());
        }
        self.broker
            .channel()
            .basic_publish(
                "".into(),
                self.dlq().as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
        self.wait_depth(&self.dlq(), before + 1).await;
    }

    /// Waits until `queue` holds `n` ready messages (released messages come back asynchronously).
    async fn wait_depth(&self, queue: &str, n: u32) -> u32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let depth = self.broker.depth(queue).await;
            if depth == n || tokio::time::Instant::now() >= deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn metric(&self, series: &str) -> f64 {
        use prometheus::{Encoder, TextEncoder};
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

struct Letter<'a> {
    project: &'a str,
    policy_id: i64,
    reason: DeadLetterReason,
    age: Duration,
}

fn letter<'a>(
    project: &'a str,
    policy_id: i64,
    reason: DeadLetterReason,
    age: Duration,
) -> Letter<'a> {
    Letter {
        project,
        policy_id,
        reason,
        age,
    }
}

fn push(project: &str) -> String {
    format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"ci","event_data":{{"resources":[{{"digest":"sha256:1","tag":"v1","resource_url":"r/{project}/app:v1"}}],"repository":{{"name":"app","namespace":"{project}","repo_full_name":"{project}/app","repo_type":"private"}}}}}}"#
    )
}

fn ago(age: Duration) -> String {
    (Utc::now() - chrono::Duration::from_std(age).unwrap())
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn ids(summaries: &[regrelay_dead_letters::DeadLetterSummary]) -> HashSet<Uuid> {
    summaries.iter().map(|s| s.id).collect()
}

#[tokio::test]
async fn list_filters_by_every_field_and_leaves_the_queue_as_it_was() {
    let env = Env::start("dlq-list").await;
    let a = env
        .dead_letter(letter(
            "lib",
            1,
            DeadLetterReason::AttemptsExhausted,
            2 * HOUR,
        ))
        .await;
    let b = env
        .dead_letter(letter("lib", 2, DeadLetterReason::ClientError, MIN))
        .await;
    let c = env
        .dead_letter(letter("ops", 3, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let p = env.poison().await;

    let all = env
        .queue
        .list(&DeadLetterFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(ids(&all), HashSet::from([a, b, c, p]));
    let first = all.iter().find(|s| s.id == a).unwrap();
    assert_eq!(first.reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(first.attempts, 3);
    assert_eq!(first.last_status, Some(500));
    assert_eq!(first.project.as_deref(), Some("lib"));
    assert_eq!(first.policy.as_ref().unwrap().name, "policy-1");
    assert!(first.replayable);
    assert!(first.age_seconds.unwrap() >= 7199);
    assert!(!all.iter().find(|s| s.id == p).unwrap().replayable);

    let check = |filter: DeadLetterFilter, expected: Vec<Uuid>| {
        let queue = env.queue.clone();
        async move {
            let found = queue.list(&filter, 100).await.unwrap();
            assert_eq!(
                ids(&found),
                expected.into_iter().collect::<HashSet<_>>(),
                "{filter:?}"
            );
        }
    };
    check(
        DeadLetterFilter {
            project: Some("lib".into()),
            ..Default::default()
        },
        vec![a, b],
    )
    .await;
    check(
        DeadLetterFilter {
            policy_id: Some(3),
            ..Default::default()
        },
        vec![c],
    )
    .await;
    check(
        DeadLetterFilter {
            event_type: Some("PUSH_ARTIFACT".into()),
            ..Default::default()
        },
        vec![a, b, c],
    )
    .await;
    check(
        DeadLetterFilter {
            reason: Some(DeadLetterReason::Poison),
            ..Default::default()
        },
        vec![p],
    )
    .await;
    check(
        DeadLetterFilter {
            older_than: Some(HOUR),
            ..Default::default()
        },
        vec![a],
    )
    .await;
    check(
        DeadLetterFilter {
            newer_than: Some(10 * MIN),
            reason: Some(DeadLetterReason::AttemptsExhausted),
            ..Default::default()
        },
        vec![c],
    )
    .await;

    // The limit caps the listing; the scan limit caps what one operation reads.
    assert_eq!(
        env.queue
            .list(&DeadLetterFilter::default(), 2)
            .await
            .unwrap()
            .len(),
        2
    );
    let narrow = env.queue.clone().with_scan_limit(1);
    assert_eq!(
        narrow
            .list(&DeadLetterFilter::default(), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // Browsing took nothing away.
    assert_eq!(env.wait_depth(&env.dlq(), 4).await, 4);
    assert_eq!(env.queue.depth().await.unwrap(), 4);
    assert_eq!(env.metric("regrelay_dead_letter_queue_depth"), 4.0);
}

#[tokio::test]
async fn show_returns_everything_known_and_no_secret() {
    let env = Env::start("dlq-show").await;
    let id = env
        .dead_letter(letter("lib", 7, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let letter = env.queue.show(id).await.unwrap().expect("found");
    assert_eq!(letter.summary.id, id);
    assert_eq!(letter.summary.reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(letter.body["schema"], "dead-letter.v1");
    assert_eq!(letter.body["task"]["delivery_id"], id.to_string());
    assert_eq!(letter.body["policy"]["id"], 7);
    assert_eq!(letter.message.queue, env.dlq());
    assert_eq!(letter.message.message_id, Some(id.to_string()));
    // A header written with credentials in it is redacted on the way out.
    assert_eq!(
        letter.headers["x-regrelay-target"],
        "https://********@hooks.example.com/x?token=********"
    );
    let text = serde_json::to_string(&letter).unwrap();
    assert!(
        !text.contains("pw@") && !text.contains("token=abc"),
        "{text}"
    );
    // Flattened: the summary's fields sit at the top level next to the body.
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["id"], id.to_string());
    assert_eq!(json["body"]["reason"], "attempts_exhausted");

    assert!(env.queue.show(Uuid::new_v4()).await.unwrap().is_none());
    assert_eq!(env.wait_depth(&env.dlq(), 1).await, 1);
}

#[tokio::test]
async fn replay_puts_the_task_back_as_a_new_execution_then_removes_the_dead_letter() {
    let env = Env::start("dlq-replay").await;
    let id = env
        .dead_letter(letter("lib", 7, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let other = env
        .dead_letter(letter("lib", 8, DeadLetterReason::ClientError, MIN))
        .await;
    let missing = Uuid::new_v4();

    let report = env
        .queue
        .replay(&ReplaySelection::Ids(vec![id, missing]))
        .await
        .unwrap();
    assert_eq!(report.replayed, vec![id]);
    assert_eq!(report.not_found, vec![missing]);
    assert!(report.failed.is_empty());
    assert!(!report.is_complete());

    let replayed = env.broker.take(&env.deliveries(), 1, WAIT).await;
    assert_eq!(replayed.len(), 1);
    let task = DeliveryTask::decode(&replayed[0].delivery.data).unwrap();
    assert_eq!(task.delivery_id, id, "receivers dedupe on the same id");
    assert_eq!(task.attempts, 0);
    assert_eq!(task.trigger, Trigger::Retry);
    assert_eq!(task.last_status, None);
    assert_eq!(task.last_error, None);
    let key = task.history_key.expect("a fresh history key");
    assert_ne!(key, id);
    assert_eq!(task.history_key(), key);
    assert_eq!(task.policy_id, 7);
    assert_eq!(
        task.registry_event().unwrap().raw_json(),
        push("lib"),
        "the event travels verbatim"
    );
    let properties = &replayed[0].delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(*properties.delivery_mode(), Some(2));

    // The replayed dead letter is gone; the other one stays.
    assert_eq!(env.wait_depth(&env.dlq(), 1).await, 1);
    let left = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&left), HashSet::from([other]));
    assert_eq!(
        env.metric("regrelay_dead_letter_replays_total{outcome=\"replayed\"}"),
        1.0
    );
}

#[tokio::test]
async fn poison_and_unreadable_messages_are_reported_failed_and_kept() {
    let env = Env::start("dlq-poison").await;
    let poison = env.poison().await;
    env.publish_raw(b"not json at all", None).await;
    let good = env
        .dead_letter(letter("lib", 7, DeadLetterReason::AttemptsExhausted, MIN))
        .await;

    let listed = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    let unreadable = listed
        .iter()
        .find(|s| s.reason == DeadLetterReason::Unreadable)
        .expect("an unreadable message is listed, not hidden");
    assert!(!unreadable.replayable);
    // Its id is derived from its content, so it is the same on every scan.
    let again = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert!(again.iter().any(|s| s.id == unreadable.id));

    let report = env
        .queue
        .replay(&ReplaySelection::All(DeadLetterFilter::default()))
        .await
        .unwrap();
    assert_eq!(report.replayed, vec![good]);
    let failed: HashSet<Uuid> = report.failed.iter().map(|(id, _)| *id).collect();
    assert_eq!(failed, HashSet::from([poison, unreadable.id]));
    let (_, why) = report.failed.iter().find(|(id, _)| *id == poison).unwrap();
    assert!(why.contains("poison"), "{why}");
    assert_eq!(env.wait_depth(&env.dlq(), 2).await, 2, "both stay");
    assert_eq!(
        env.metric("regrelay_dead_letter_replays_total{outcome=\"failed\"}"),
        2.0
    );

    // They can be purged once inspected.
    let purged = env
        .queue
        .purge(&DeadLetterFilter {
            reason: Some(DeadLetterReason::Unreadable),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(env.wait_depth(&env.dlq(), 1).await, 1);
}

#[tokio::test]
async fn replay_all_replays_only_what_matches() {
    let env = Env::start("dlq-replay-all").await;
    let a = env
        .dead_letter(letter("lib", 1, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let b = env
        .dead_letter(letter("lib", 1, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let c = env
        .dead_letter(letter("ops", 2, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let report = env
        .queue
        .replay(&ReplaySelection::All(DeadLetterFilter {
            policy_id: Some(1),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        report.replayed.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([a, b])
    );
    assert!(report.is_complete());
    let tasks = env.broker.take(&env.deliveries(), 3, WAIT).await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(env.wait_depth(&env.dlq(), 1).await, 1);
    let left = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&left), HashSet::from([c]));
}

#[tokio::test]
async fn purge_with_a_filter_keeps_the_others() {
    let env = Env::start("dlq-purge").await;
    env.dead_letter(letter(
        "lib",
        1,
        DeadLetterReason::AttemptsExhausted,
        2 * HOUR,
    ))
    .await;
    env.dead_letter(letter(
        "lib",
        1,
        DeadLetterReason::AttemptsExhausted,
        2 * HOUR,
    ))
    .await;
    let young = env
        .dead_letter(letter("lib", 1, DeadLetterReason::AttemptsExhausted, MIN))
        .await;
    let other = env
        .dead_letter(letter("ops", 2, DeadLetterReason::ClientError, 2 * HOUR))
        .await;

    let purged = env
        .queue
        .purge(&DeadLetterFilter {
            project: Some("lib".into()),
            older_than: Some(HOUR),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(env.wait_depth(&env.dlq(), 2).await, 2);
    let left = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&left), HashSet::from([young, other]));
    assert_eq!(env.metric("regrelay_dead_letters_purged_total"), 2.0);

    // Purging everything is allowed.
    assert_eq!(
        env.queue.purge(&DeadLetterFilter::default()).await.unwrap(),
        2
    );
    assert_eq!(env.wait_depth(&env.dlq(), 0).await, 0);
}

/// The connection is cut while a replay of many dead letters is under way: every dead letter ends
/// either replayed on the deliveries queue or still on the dead-letter queue (or both: a replay whose
/// ack was lost), never nowhere.
#[tokio::test]
async fn a_connection_cut_mid_replay_loses_nothing() {
    const LETTERS: usize = 300;
    let target = "127.0.0.1:5672".parse().unwrap();
    let proxy = TcpProxy::start(target).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let env = Env::start_at("dlq-cut", url).await;
    let mut all = HashSet::new();
    for _ in 0..LETTERS {
        all.insert(
            env.dead_letter(letter("lib", 1, DeadLetterReason::AttemptsExhausted, MIN))
                .await,
        );
    }

    let queue = env.queue.clone();
    let replay = tokio::spawn(async move {
        queue
            .replay(&ReplaySelection::All(DeadLetterFilter::default()))
            .await
    });
    // Cut the connection once the replay is visibly under way.
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.broker.depth(&env.deliveries()).await < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.sever();
    proxy.set_refusing(true);
    let result = replay.await.unwrap();
    let cut_short = match &result {
        Err(_) => true,
        Ok(report) => !report.failed.is_empty(),
    };
    assert!(
        cut_short,
        "the cut must land mid-replay: {:?}",
        result.map(|r| r.replayed.len())
    );

    // Held messages return to the queue when the broker notices the connection is gone.
    let settle = tokio::time::Instant::now() + WAIT;
    let (mut replayed, mut remaining);
    loop {
        replayed = env.broker.depth(&env.deliveries()).await as usize;
        remaining = env.broker.depth(&env.dlq()).await as usize;
        if replayed + remaining >= LETTERS || tokio::time::Instant::now() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut found = HashSet::new();
    for message in env.broker.take(&env.deliveries(), replayed, WAIT).await {
        found.insert(
            DeliveryTask::decode(&message.delivery.data)
                .unwrap()
                .delivery_id,
        );
    }
    for message in env.broker.take(&env.dlq(), remaining, WAIT).await {
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        found.insert(body["id"].as_str().unwrap().parse().unwrap());
    }
    let lost: Vec<&Uuid> = all.difference(&found).collect();
    assert!(
        lost.is_empty(),
        "{} dead letters lost ({replayed} replayed, {remaining} left)",
        lost.len()
    );
    assert!(replayed > 0 && remaining > 0, "{replayed} / {remaining}");
}

#[tokio::test]
async fn an_unreachable_broker_is_an_unavailable_error_naming_no_password() {
    let port = regrelay_testkit::unused_port();
    let env = Env::start_at(
        "dlq-down",
        format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f"),
    )
    .await;
    let error = env
        .queue
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap_err();
    assert!(error.is_unavailable());
    let text = error.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn original_is_kept_for_poison_messages() {
    // The poison body keeps the message it could not read (what `show` displays).
    let body = DeadLetterBody::<()>::unprocessable(
        DeadLetterReason::Poison,
        "p.deliveries".into(),
        b"raw",
        "bad".into(),
    );
    let json = serde_json::to_value(&body).unwrap();
    assert_eq!(json["original"]["body"], "raw");
}
