//! The consumer test environment: a unique queue prefix on the real RabbitMQ, a fresh database on the
//! real PostgreSQL, and the consumer running in-process with a fast retry schedule.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use regrelay_consumer::{
    Consumer, ConsumerMetrics, ConsumerSettings, HttpClients, HttpSettings, RetrySchedule,
};
use regrelay_events::{EventType, RegistryEvent};
use regrelay_history::policy::{Filters, PayloadFormat, Policy, PolicySpec, Target, TargetKind};
use regrelay_history::recorder::{RecorderMetrics, RecorderSettings};
use regrelay_history::{Database, HistoryRecorder};
use regrelay_producer::{
    Broker, BrokerSettings, ConfirmedPublisher, EventMessage, EventPublisher, EventSource,
    ProducerMetrics,
};
use regrelay_testkit::{amqp_url, TcpProxy, TestBroker, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Options {
    pub max_attempts: u32,
    pub http_timeout: Duration,
    pub per_target_concurrency: usize,
    pub max_waiting_per_target: usize,
    pub delivery_prefetch: u16,
    pub matching_prefetch: u16,
    /// Record delivery history (through the batching recorder, as `serve` does).
    pub history: bool,
    /// The consumer reaches PostgreSQL through a [`TcpProxy`] the test controls (`Env::db_proxy`);
    /// the test's own `Env::db` stays direct.
    pub database_proxy: bool,
    /// The consumer publishes (tasks, retries, dead letters) through a [`TcpProxy`]
    /// (`Env::publish_proxy`), with this confirm timeout and patience; the test's own publisher
    /// stays direct.
    pub publish_proxy: Option<(Duration, Duration)>,
    /// The matching stage attempts fast targets itself (`direct_first_attempt`, on in `serve`).
    pub direct_first_attempt: bool,
    /// How long a task waits for a busy target's slot before it is deferred.
    pub deferral_delay: Duration,
    /// `outage_hold` and `history_outage_hold`.
    pub outage_hold: Duration,
    pub history_outage_hold: Duration,
    /// `breaker_failures` (0: off).
    pub breaker_failures: u32,
    pub auto_disable_after: Option<Duration>,
    /// Start consuming at once; when false the test calls `Env::run_consumer` (after preparing
    /// the queues, say).
    pub start_consumer: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            http_timeout: Duration::from_secs(2),
            per_target_concurrency: 8,
            max_waiting_per_target: 8,
            delivery_prefetch: 64,
            matching_prefetch: 16,
            history: true,
            database_proxy: false,
            publish_proxy: None,
            direct_first_attempt: true,
            deferral_delay: Duration::from_millis(100),
            outage_hold: Duration::from_secs(30),
            history_outage_hold: Duration::from_secs(600),
            breaker_failures: 0,
            auto_disable_after: None,
            start_consumer: true,
        }
    }
}

pub struct Env {
    pub broker: TestBroker,
    pub db: Database,
    pub registry: Registry,
    pub publisher: EventPublisher,
    /// Between the consumer and PostgreSQL, when `Options::database_proxy`.
    pub db_proxy: Option<TcpProxy>,
    /// Between the consumer's publishing connection and RabbitMQ, with that connection, when
    /// `Options::publish_proxy`.
    pub publish_proxy: Option<(TcpProxy, Arc<Broker>)>,
    shutdown: CancellationToken,
    consumer: Option<tokio::task::JoinHandle<()>>,
    /// Built but not started (`Options::start_consumer` false).
    idle: Option<Consumer>,
    // Dropped last: the database outlives the consumer using it.
    _database: TestDatabase,
}

impl Env {
    pub async fn start(name: &str, options: Options) -> Self {
        let broker = TestBroker::new(name).await;
        broker.declare().await;
        let database = TestDatabase::create(name).await;
        let db = Database::connect(&database.url, 4).unwrap();
        db.migrate().await.unwrap();
        let db_proxy = if options.database_proxy {
            Some(TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await)
        } else {
            None
        };
        let consumer_db = match &db_proxy {
            Some(proxy) => Database::connect(
                &database
                    .url
                    .replace(":5432/", &format!(":{}/", proxy.addr().port())),
                4,
            )
            .unwrap(),
            None => db.clone(),
        };
        let registry = Registry::new();
        let producer_metrics = ProducerMetrics::register(&registry).unwrap();
        let make_broker = |role, url| {
            Arc::new(Broker::new(
                BrokerSettings {
                    url,
                    connection_name: format!("regrelay-test-{role}"),
                    role,
                    publish_channels: 2,
                    connect_timeout: Duration::from_secs(2),
                    reconnect_min_delay: Duration::from_millis(50),
                    reconnect_max_delay: Duration::from_millis(500),
                    tls: Default::default(),
                },
                broker.topology.clone(),
                producer_metrics.clone(),
            ))
        };
        let publish = make_broker("publish", amqp_url());
        let consume = make_broker("consume", amqp_url());
        let (consumer_publisher, publish_proxy) = match options.publish_proxy {
            Some((timeout, patience)) => {
                let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
                let proxied = make_broker(
                    "publish",
                    format!("amqp://guest:guest@{}/%2f", proxy.addr()),
                );
                (
                    ConfirmedPublisher::new(proxied.clone(), timeout).with_patience(patience),
                    Some((proxy, proxied)),
                )
            }
            None => (
                ConfirmedPublisher::new(publish.clone(), Duration::from_secs(5)),
                None,
            ),
        };
        let consumer = Consumer {
            consume_broker: consume,
            publisher: consumer_publisher,
            db: consumer_db.clone(),
            clients: HttpClients::new(&HttpSettings {
                timeout: options.http_timeout,
                allow_private_targets: true,
                user_agent: format!("regrelay/{}", env!("CARGO_PKG_VERSION")),
                pool_idle_per_host: 8,
            })
            .unwrap(),
            schedule: RetrySchedule::new(
                Duration::from_millis(100),
                Duration::from_millis(250),
                2.0,
                options.max_attempts,
            )
            .unwrap(),
            settings: ConsumerSettings {
                matching_prefetch: options.matching_prefetch,
                delivery_prefetch: options.delivery_prefetch,
                per_target_concurrency: options.per_target_concurrency,
                max_waiting_per_target: options.max_waiting_per_target,
                deferral_delay: options.deferral_delay,
                policy_refresh_interval: Duration::from_millis(100),
                queue_depth_interval: Duration::from_millis(100),
                breaker_failures: options.breaker_failures,
                breaker_probe_interval: Duration::from_millis(300),
                auto_disable_after: options.auto_disable_after,
                allow_private_targets: true,
                direct_first_attempt: options.direct_first_attempt,
                outage_hold: options.outage_hold,
                history_outage_hold: options.history_outage_hold,
                max_in_flight_bytes: 4 << 20,
                largest_message_bytes: 64 << 10,
            },
            metrics: ConsumerMetrics::register(&registry).unwrap(),
            history: options.history.then(|| {
                HistoryRecorder::spawn(
                    consumer_db.clone(),
                    RecorderSettings {
                        max_batch: 128,
                        linger: Duration::ZERO,
                        concurrency: 2,
                    },
                    RecorderMetrics::register(&registry).unwrap(),
                )
            }),
            retention: None,
        };
        let shutdown = CancellationToken::new();
        let (handle, idle) = if options.start_consumer {
            (Some(tokio::spawn(consumer.run(shutdown.clone()))), None)
        } else {
            (None, Some(consumer))
        };
        Self {
            broker,
            db,
            registry,
            publisher: EventPublisher::new(publish, Duration::from_secs(5)),
            db_proxy,
            publish_proxy,
            shutdown,
            consumer: handle,
            idle,
            _database: database,
        }
    }

    /// Starts the consumer built with `Options::start_consumer` false.
    pub fn run_consumer(&mut self) {
        let consumer = self.idle.take().expect("the consumer was started already");
        self.consumer = Some(tokio::spawn(consumer.run(self.shutdown.clone())));
    }

    /// Stops the consumer and waits for it to settle its in-flight work.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.consumer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// Publishes events as ingest would; returns their ids.
    pub async fn publish(&self, events: &[String]) -> Vec<Uuid> {
        let messages: Vec<EventMessage> = events
            .iter()
            .map(|json| {
                EventMessage::new(
                    RegistryEvent::from_json(json).unwrap(),
                    EventSource::Harbor,
                    "test-request",
                )
            })
            .collect();
        self.publisher.publish(&messages).await.unwrap();
        messages.iter().map(|m| m.id).collect()
    }

    /// Creates a policy (project-scoped, or system-wide for `None`) and waits until consumers see it.
    pub async fn policy(&self, project: Option<&str>, spec: PolicySpec) -> Policy {
        let project_id = match project {
            Some(name) => Some(self.db.ensure_project(name).await.unwrap().id),
            None => None,
        };
        let policy = self.db.create_policy(project_id, &spec).await.unwrap();
        // The consumer's cache refreshes every 100 ms.
        tokio::time::sleep(Duration::from_millis(400)).await;
        policy
    }

    /// The value of one series in this environment's registry, e.g.
    /// `regrelay_deliveries_total{outcome="delivered",target_type="http"}`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_text()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The whole exposition text of this environment's registry.
    #[allow(dead_code)]
    pub fn metric_text(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .unwrap();
        String::from_utf8(buffer).unwrap()
    }

    /// Waits until `series` reads `value` (counters move just after the step they count, e.g. a
    /// task's confirm can arrive after the receiver already has its request); returns the last
    /// reading.
    pub async fn metric_when(&self, series: &str, value: f64, wait: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = self.metric(series);
            if now == value || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes up to `n` dead letters as JSON.
    pub async fn dead_letters(&self, n: usize, wait: Duration) -> Vec<serde_json::Value> {
        self.broker
            .take(&self.broker.topology.dead_letter_queue(), n, wait)
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.delivery.data).unwrap())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn http_target(address: String) -> Target {
    Target {
        kind: TargetKind::Http,
        address,
        auth_header: None,
        skip_cert_verify: false,
        payload_format: PayloadFormat::Default,
        secret: None,
        headers: BTreeMap::new(),
        options: Default::default(),
    }
}

pub fn spec(name: &str, targets: Vec<Target>, event_types: &[EventType]) -> PolicySpec {
    PolicySpec {
        name: name.to_owned(),
        description: String::new(),
        targets,
        event_types: event_types.to_vec(),
        filters: Filters::default(),
        creator: "test".into(),
        enabled: true,
    }
}

/// A Harbor push event for `project/repo:tag`.
pub fn push(project: &str, repo: &str, tag: &str) -> String {
    event("PUSH_ARTIFACT", project, repo, tag)
}

pub fn event(kind: &str, project: &str, repo: &str, tag: &str) -> String {
    serde_json::json!({
        "type": kind,
        "occur_at": 1_700_000_000,
        "operator": "tester",
        "event_data": {
            "resources": [{"digest": "sha256:abc", "tag": tag, "resource_url": format!("reg.local/{project}/{repo}:{tag}")}],
            "repository": {"name": repo, "namespace": project, "repo_full_name": format!("{project}/{repo}"), "repo_type": "private"}
        }
    })
    .to_string()
}
