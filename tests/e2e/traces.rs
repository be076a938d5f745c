//! Traces end to end: an `api` and a `consumer` process export spans over OTLP/HTTP to a collector
//! on 127.0.0.1 that decodes them; one event sent with a `traceparent` must come out as one trace,
//! from the ingest request through the broker to every delivery attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use regrelay_testkit::{amqp_url, TestBroker, TestDatabase, TestReceiver};
use serde_json::json;

use super::delivery::Cluster;
use super::{Service, TOKEN};

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    error: bool,
}

/// An OTLP/HTTP collector: decodes every export request and keeps its spans.
struct Collector {
    base: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<ExportedSpan>>> = Arc::default();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, spans }
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<ExportedSpan>>>>,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    let mut kept = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    error: span
                        .status
                        .is_some_and(|s| s.code == SpanStatus::Error as i32),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        Vec::new(),
    )
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names of `span`'s ancestors, nearest first, as far as the exported spans reach.
fn ancestry(span: &ExportedSpan, all: &[ExportedSpan]) -> Vec<String> {
    let mut names = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(next) = all.iter().find(|s| s.span_id == parent) {
        names.push(next.name.clone());
        parent = next.parent_span_id.clone();
    }
    names
}

// Multi-threaded: `terminate` blocks its thread until the process exits, and the collector must
// keep answering the exit's final export meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_ingest_to_every_attempt() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SENDER_SPAN: &str = "00f067aa0ba902b7";
    let collector = Collector::start().await;
    let broker = TestBroker::new("e2e-traces").await;
    let database = TestDatabase::create("e2e-traces").await;
    let mut env = Cluster::env(&database);
    env.push(("REGRELAY_OTLP_ENDPOINT", collector.base.clone()));
    // Quiet logs must not silence traces.
    env.push(("REGRELAY_LOG_LEVEL", "warn".into()));
    // Export every 100 ms instead of every 5 s.
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    let mut api = Service::start_with(broker.prefix(), &amqp_url(), &["--role", "api"], &env);
    api.wait_healthy().await;
    let mut cluster = Cluster {
        broker,
        database,
        api,
        client: reqwest::Client::new(),
    };
    let receiver = TestReceiver::start().await;
    // The first attempt fails, so the trace must also follow the retry through its delay queue.
    receiver.script(&[503]);
    cluster.create_policy("traced", receiver.url("/hook")).await;
    let mut consumer = Service::start_with(
        cluster.broker.prefix(),
        &amqp_url(),
        &["--role", "consumer"],
        &env,
    );
    consumer.wait_healthy().await;

    let event = json!({"type": "PUSH_ARTIFACT", "occur_at": 1_700_000_000, "operator": "e2e",
        "event_data": {"resources": [{"digest": "sha256:1", "tag": "v1", "resource_url": "r/traced/app:v1"}],
        "repository": {"name": "app", "namespace": "traced", "repo_full_name": "traced/app", "repo_type": "private"}}});
    let response = cluster
        .client
        .post(format!("{}/api/v1/events", cluster.api.base))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{SENDER_SPAN}-01"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let requests = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(requests.len(), 2, "{}", consumer.log_tail(30));

    // Spans are exported while the service runs, not only at exit.
    let mut exported = 0.0;
    for _ in 0..100 {
        exported = consumer
            .metric("regrelay_trace_exports_total{result=\"ok\"}")
            .await;
        if exported >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exported >= 1.0, "{}", consumer.log_tail(30));
    // SIGTERM flushes what is still queued.
    let stopped = consumer.terminate();
    assert!(stopped.status.success());
    let consumer_log = stopped.stdout;
    assert!(cluster.api.terminate().status.success());

    let spans: Vec<ExportedSpan> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let ingest: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == "ingest").collect();
    assert_eq!(ingest.len(), 1, "{names:?}");
    assert_eq!(ingest[0].parent_span_id, SENDER_SPAN);
    assert_eq!(ingest[0].service, "regrelay");
    assert_eq!(ingest[0].attributes["http.response.status_code"], "202");
    assert_eq!(spans.iter().filter(|s| s.name == "match_event").count(), 1);

    let mut attempts: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == "attempt").collect();
    attempts.sort_by_key(|s| s.attributes["attempt"].clone());
    assert_eq!(attempts.len(), 2, "{names:?}\n{consumer_log}");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(first.attributes["attempt"], "1");
    assert_eq!(first.attributes["http.response.status_code"], "503");
    assert_eq!(first.attributes["outcome"], "retry");
    assert!(first.error);
    assert_eq!(second.attributes["attempt"], "2");
    assert_eq!(second.attributes["http.response.status_code"], "200");
    assert_eq!(second.attributes["outcome"], "delivered");
    assert!(!second.error);
    // The receiver's host, never its full URL (a path may be a credential).
    assert_eq!(second.attributes["server.address"], "127.0.0.1");
    assert!(spans
        .iter()
        .all(|s| s.attributes.values().all(|v| !v.contains("/hook"))));

    // Each attempt descends from the ingest request through the broker hops.
    for attempt in [first, second] {
        let chain = ancestry(attempt, &spans);
        assert_eq!(
            chain.last().map(String::as_str),
            Some("ingest"),
            "{chain:?}"
        );
        assert!(chain.iter().any(|n| n == "match_event"), "{chain:?}");
        assert!(chain.iter().any(|n| n == "publish"), "{chain:?}");
    }
    // The retry continues from the failed attempt, through the retry queue.
    let chain = ancestry(second, &spans);
    assert!(chain.iter().any(|n| n == "attempt"), "{chain:?}");
    assert!(chain.iter().any(|n| n == "deliver_task"), "{chain:?}");
}
