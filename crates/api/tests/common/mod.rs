//! The API test environment: the API runs in-process on port 0 against the real RabbitMQ (under a
//! unique queue prefix) and a fresh database on the real PostgreSQL.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use regrelay_api::{AdminSettings, AppState, IngestSettings, TestDeliverySettings};
use regrelay_history::Database;
use regrelay_producer::{Broker, BrokerSettings, EventPublisher, ProducerMetrics, Topology};
use regrelay_testkit::{unused_port, TestDatabase};
use serde_json::Value;
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-ingest-token";
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "test-admin-password";
pub const API_TOKEN: &str = "test-api-token";
pub const MAX_BODY: usize = 64 * 1024;

pub struct TestApi {
    pub base: String,
    /// The server task: it ends when the shutdown given to [`Self::start_with`] resolves and the
    /// drain is over.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub client: reqwest::Client,
    pub db: Database,
    // Dropped last: the server may still hold connections until the test ends.
    _database: Option<TestDatabase>,
}

/// Where the API's database lives.
pub enum DatabaseChoice {
    /// A fresh, migrated database.
    Fresh(&'static str),
    /// A port nothing listens on: the database is unreachable.
    Unreachable,
}

/// A reply: status, headers, body as JSON (`Null` when it is not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first error message of Harbor's error body.
    pub fn message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl TestApi {
    /// Starts the API against `amqp` with `topology` and the database `choice`.
    pub async fn start(amqp: String, topology: Topology, choice: DatabaseChoice) -> Self {
        Self::start_with(
            amqp,
            topology,
            choice,
            regrelay_api::ServerSettings::with_defaults(Duration::from_secs(1)),
            std::future::pending(),
        )
        .await
    }

    /// [`Self::start`] with the server's connection settings and a shutdown signal.
    pub async fn start_with(
        amqp: String,
        topology: Topology,
        choice: DatabaseChoice,
        server: regrelay_api::ServerSettings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let (db, database) = match choice {
            DatabaseChoice::Fresh(name) => {
                let database = TestDatabase::create(name).await;
                let db = Database::connect(&database.url, 4).unwrap();
                db.migrate().await.unwrap();
                (db, Some(database))
            }
            DatabaseChoice::Unreachable => {
                let url = format!("postgres://postgres@127.0.0.1:{}/none", unused_port());
                (Database::connect(&url, 2).unwrap(), None)
            }
        };
        let registry = Registry::new();
        let metrics = ProducerMetrics::register(&registry).unwrap();
        let broker = Broker::new(
            BrokerSettings {
                url: amqp,
                connection_name: "regrelay-test".into(),
                role: "publish",
                publish_channels: 2,
                connect_timeout: Duration::from_secs(2),
                reconnect_min_delay: Duration::from_millis(50),
                reconnect_max_delay: Duration::from_millis(200),
                tls: Default::default(),
            },
            topology,
            metrics,
        );
        let publisher = EventPublisher::new(Arc::new(broker), Duration::from_secs(5));
        let state = AppState::new(publisher, db.clone(), registry)
            .unwrap()
            .with_ingest(IngestSettings {
                token: TOKEN.to_owned().into(),
                max_body_bytes: MAX_BODY,
            })
            .with_admin(AdminSettings {
                user: ADMIN_USER.into(),
                password: ADMIN_PASSWORD.to_owned().into(),
                token: Some(API_TOKEN.to_owned().into()),
            })
            .with_test_delivery(TestDeliverySettings {
                clients: regrelay_consumer::HttpClients::new(&regrelay_consumer::HttpSettings {
                    timeout: Duration::from_secs(2),
                    allow_private_targets: true,
                    user_agent: "regrelay/test".into(),
                    pool_idle_per_host: 2,
                })
                .unwrap(),
                allow_private_targets: true,
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(regrelay_api::serve(listener, state, server, shutdown));
        Self {
            base,
            server,
            client: reqwest::Client::new(),
            db,
            _database: database,
        }
    }

    pub async fn post(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/api/v1/events", self.base))
            .bearer_auth(TOKEN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn post_json(&self, body: &str) -> (u16, Value) {
        self.post(Some("application/json"), body.to_owned()).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// A request with the administrator's HTTP Basic credentials.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD));
        send(request, body).await
    }

    /// A request with no credentials, or with the given `Authorization` header.
    pub async fn request_as(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        send(request, body).await
    }

    /// The value of one metric series in `/metrics`, e.g. `regrelay_events_received_total{event_type="PUSH_ARTIFACT"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

async fn send(mut request: reqwest::RequestBuilder, body: Option<Value>) -> Reply {
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

/// An API on its own queue prefix and a fresh database, both named after the test; the broker
/// handle keeps the prefix alive (and cleans it up) for as long as the test holds it.
pub async fn setup(name: &'static str) -> (regrelay_testkit::TestBroker, TestApi) {
    let broker = regrelay_testkit::TestBroker::new(name).await;
    let api = TestApi::start(
        regrelay_testkit::amqp_url(),
        broker.topology.clone(),
        DatabaseChoice::Fresh(name),
    )
    .await;
    (broker, api)
}
