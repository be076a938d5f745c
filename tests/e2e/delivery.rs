//! Delivery with real processes: an `api` process takes policies and events over HTTP, `consumer`
//! processes deliver to a real receiver; one is killed with SIGKILL mid-stream, two share the work.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regrelay_testkit::{amqp_url, TestBroker, TestDatabase, TestReceiver};
use serde_json::{json, Value};

use super::{Service, StdoutReading, TOKEN};

pub(crate) const ADMIN: (&str, &str) = ("admin", "e2e-admin-password");

pub(crate) struct Cluster {
    pub(crate) broker: TestBroker,
    pub(crate) database: TestDatabase,
    pub(crate) api: Service,
    pub(crate) client: reqwest::Client,
}

impl Cluster {
    pub(crate) async fn start(name: &str) -> Self {
        let broker = TestBroker::new(name).await;
        let database = TestDatabase::create(name).await;
        let mut api = Service::start_with(
            broker.prefix(),
            &amqp_url(),
            &["--role", "api"],
            &Self::env(&database),
        );
        api.wait_healthy().await;
        Self {
            broker,
            database,
            api,
            client: reqwest::Client::new(),
        }
    }

    pub(crate) fn env(database: &TestDatabase) -> Vec<(&'static str, String)> {
        vec![
            ("REGRELAY_DATABASE_URL", database.url.clone()),
            ("REGRELAY_ALLOW_PRIVATE_TARGETS", "true".into()),
            ("REGRELAY_RETRY_INITIAL_DELAY", "100ms".into()),
            ("REGRELAY_RETRY_MAX_DELAY", "500ms".into()),
            ("REGRELAY_POLICY_REFRESH_INTERVAL", "200ms".into()),
            ("REGRELAY_SHUTDOWN_TIMEOUT", "2s".into()),
        ]
    }

    pub(crate) async fn consumer(&self) -> Service {
        self.consumer_with(StdoutReading::Drained).await
    }

    async fn consumer_with(&self, reading: StdoutReading) -> Service {
        let env = Self::env(&self.database);
        let mut consumer = Service::start_with_output(
            self.broker.prefix(),
            &amqp_url(),
            &["--role", "consumer"],
            &env,
            reading,
        );
        consumer.wait_healthy().await;
        consumer
    }

    pub(crate) async fn create_policy(&self, project: &str, address: String) {
        let response = self
            .client
            .post(format!("{}/api/v2.0/projects/{project}/webhook/policies", self.api.base))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&json!({
                "name": "e2e",
                "event_types": ["PUSH_ARTIFACT"],
                "targets": [{"type": "http", "address": address, "skip_cert_verify": false, "payload_format": "Default"}],
                "enabled": true,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Posts `count` push events for `lib/app` with tags `t0`, `t1`, ... in batches.
    pub(crate) async fn send_events(&self, count: usize) {
        for batch in (0..count).collect::<Vec<_>>().chunks(50) {
            let events: Vec<Value> = batch
                .iter()
                .map(|i| {
                    json!({"type": "PUSH_ARTIFACT", "occur_at": 1_700_000_000, "operator": "e2e",
                        "event_data": {"resources": [{"digest": "sha256:1", "tag": format!("t{i}"), "resource_url": "r/lib/app"}],
                        "repository": {"name": "app", "namespace": "lib", "repo_full_name": "lib/app", "repo_type": "private"}}})
                })
                .collect();
            let response = self
                .client
                .post(format!("{}/api/v1/events", self.api.base))
                .bearer_auth(TOKEN)
                .json(&events)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }
}

/// Waits until the receiver has seen every tag `t0..t{count}`; returns tag → webhook ids seen.
async fn wait_all(
    receiver: &TestReceiver,
    count: usize,
    within: Duration,
) -> HashMap<String, Vec<String>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for request in receiver.requests() {
            let tag = request.json()["event_data"]["resources"][0]["tag"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let id = request.header("webhook-id").unwrap_or_default().to_owned();
            seen.entry(tag).or_default().push(id);
        }
        if seen.len() >= count || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each service's delivered counter, once together they reach `expected` (or after 5 s): a
/// delivery is counted once its history is durable, just after the receiver answered.
async fn delivered_by_all(services: &[&Service], expected: usize) -> Vec<f64> {
    let mut counted = Vec::new();
    for _ in 0..50 {
        counted.clear();
        for service in services {
            counted.push(delivered_by(service).await);
        }
        if counted.iter().sum::<f64>() >= expected as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counted
}

async fn delivered_by(service: &Service) -> f64 {
    service
        .metric("regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}")
        .await
}

#[tokio::test]
async fn a_consumer_killed_mid_delivery_loses_nothing() {
    const EVENTS: usize = 300;
    let cluster = Cluster::start("e2e-kill").await;
    let receiver = TestReceiver::start().await;
    receiver.set_delay(Duration::from_millis(20));
    cluster.create_policy("lib", receiver.url("/hook")).await;

    let mut first = cluster.consumer().await;
    cluster.send_events(EVENTS).await;
    receiver.wait_for(EVENTS / 5, Duration::from_secs(30)).await;
    first.kill();
    let before = receiver.count();
    assert!(
        before < EVENTS,
        "the kill must land mid-stream ({before} delivered)"
    );

    let second = cluster.consumer().await;
    let seen = wait_all(&receiver, EVENTS, Duration::from_secs(60)).await;
    let missing: Vec<usize> = (0..EVENTS)
        .filter(|i| !seen.contains_key(&format!("t{i}")))
        .collect();
    if !missing.is_empty() {
        let topology = &cluster.broker.topology;
        let dead = cluster.broker.depth(&topology.dead_letter_queue()).await;
        let deliveries = cluster.broker.depth(&topology.deliveries_queue()).await;
        let events = cluster.broker.depth(&topology.events_queue()).await;
        let listing = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "name", "messages", "messages_unacknowledged"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours: Vec<&str> = listing
            .lines()
            .filter(|l| l.starts_with(cluster.broker.prefix()))
            .collect();
        let metrics = reqwest::get(format!("{}/metrics", second.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let interesting: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("in_flight")
                        || l.contains("deferrals")
                        || l.contains("publish_failures")
                        || l.contains("deliveries_total")
                        || l.contains("consumer_errors"))
            })
            .collect();
        panic!(
            "lost events: {missing:?} (queues: events {events}, deliveries {deliveries}, dead-letter {dead}; {ours:?}; second consumer: {interesting:#?})\n{}",
            second.log_tail(40)
        );
    }
    // Duplicates are allowed (at-least-once), but each carries the same webhook-id.
    for (tag, ids) in &seen {
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "{tag} arrived with different webhook ids: {ids:?}"
        );
        assert!(!ids[0].is_empty(), "{tag} arrived without a webhook-id");
    }
    // Every delivered event has its history, Success, although a process died mid-stream: history
    // is written before the ack, and a redelivery updates the same execution.
    // (The last records land just after the receiver saw the last request: poll briefly.)
    let mut statuses = cluster.execution_statuses("lib").await;
    for _ in 0..50 {
        if statuses.get("Success") == Some(&EVENTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        statuses = cluster.execution_statuses("lib").await;
    }
    assert_eq!(
        statuses.get("Success").copied().unwrap_or(0),
        EVENTS,
        "one Success execution per event: {statuses:?}"
    );
    assert_eq!(statuses.values().sum::<usize>(), EVENTS, "{statuses:?}");
}

impl Cluster {
    /// Counts the executions of `project`'s first policy by status, reading every page of Harbor's
    /// executions API as a Harbor client would.
    pub(crate) async fn execution_statuses(&self, project: &str) -> HashMap<String, usize> {
        let base = format!(
            "{}/api/v2.0/projects/{project}/webhook/policies",
            self.api.base
        );
        let policies: Value = self
            .client
            .get(&base)
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = policies[0]["id"].as_i64().expect("a policy");
        let mut statuses = HashMap::new();
        for page in 1.. {
            let response = self
                .client
                .get(format!("{base}/{id}/executions?page={page}&page_size=100"))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let executions: Vec<Value> = response.json().await.unwrap();
            if executions.is_empty() {
                break;
            }
            for execution in executions {
                *statuses
                    .entry(execution["status"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
        statuses
    }
}

#[tokio::test]
async fn two_consumers_share_one_stream_and_deliver_everything() {
    const EVENTS: usize = 200;
    let cluster = Cluster::start("e2e-two").await;
    let receiver = TestReceiver::start().await;
    receiver.set_delay(Duration::from_millis(10));
    cluster.create_policy("lib", receiver.url("/hook")).await;
    let a = cluster.consumer().await;
    let b = cluster.consumer().await;
    cluster.send_events(EVENTS).await;

    let seen = wait_all(&receiver, EVENTS, Duration::from_secs(60)).await;
    assert_eq!(seen.len(), EVENTS, "every event delivered");
    let counted = delivered_by_all(&[&a, &b], receiver.count()).await;
    let (da, db) = (counted[0], counted[1]);
    assert_eq!(da + db, receiver.count() as f64);
    assert!(
        da > 0.0 && db > 0.0,
        "both consumers delivered: {da} and {db}"
    );
    // A pipe gets no colour codes.
    for consumer in [&a, &b] {
        assert!(
            !consumer.stdout.text().contains('\u{1b}'),
            "no ANSI escape in piped output"
        );
    }
}

/// A log collector that stops reading must not stop deliveries: with stdout a pipe nobody drains,
/// the pipe buffer (64 KiB) fills after a few hundred log lines. A consumer that wrote its logs
/// synchronously stalled right there with tasks unacked; this one keeps delivering.
#[tokio::test]
async fn a_consumer_whose_logs_nobody_reads_keeps_delivering() {
    const EVENTS: usize = 600;
    let cluster = Cluster::start("e2e-unread").await;
    let receiver = TestReceiver::start().await;
    cluster.create_policy("lib", receiver.url("/hook")).await;
    let consumer = cluster.consumer_with(StdoutReading::NeverRead).await;
    cluster.send_events(EVENTS).await;

    let seen = wait_all(&receiver, EVENTS, Duration::from_secs(60)).await;
    assert_eq!(
        seen.len(),
        EVENTS,
        "every event delivered although the consumer's stdout is never read; stderr:\n{}",
        consumer.log_tail(20)
    );
    let counted = delivered_by_all(&[&consumer], receiver.count()).await;
    assert_eq!(counted[0], receiver.count() as f64);
}
