//! Ingest against the real RabbitMQ: the API runs in-process on port 0 under a unique queue prefix,
//! and every assertion about what was accepted reads the messages back from the broker.

mod common;

use std::time::Duration;

use common::{setup, DatabaseChoice, TestApi, MAX_BODY};
use lapin::types::AMQPValue;
use regrelay_producer::Topology;
use regrelay_testkit::{unused_port, BasicGetMessage, TcpProxy, TestBroker};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/tests/fixtures");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

fn header<'a>(message: &'a BasicGetMessage, name: &str) -> Option<&'a AMQPValue> {
    message
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)
}

fn header_str(message: &BasicGetMessage, name: &str) -> String {
    match header(message, name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name} is {other:?}"),
    }
}

fn ids(body: &Value) -> Vec<String> {
    body["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn single_event_is_published_exactly_as_received() {
    let (broker, api) = setup("single").await;
    let event = fixture("harbor/PUSH_ARTIFACT.default.json");

    let (status, body) = api.post_json(&event).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    let id = ids(&body).remove(0);

    let messages = broker
        .take(&broker.topology.events_queue(), 1, Duration::from_secs(5))
        .await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    // The body is the event byte for byte: unknown fields and key order survive.
    // (Whitespace around the top-level value is not part of the event.)
    assert_eq!(message.delivery.data, event.trim().as_bytes());
    let props = &message.delivery.properties;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "PUSH_ARTIFACT");
    assert_eq!(
        *props.delivery_mode(),
        Some(2),
        "message must be persistent"
    );
    assert_eq!(
        message.delivery.routing_key.as_str(),
        "event.PUSH_ARTIFACT.harbor"
    );
    assert_eq!(header_str(message, "x-regrelay-project"), "harbor");
    assert_eq!(
        header_str(message, "x-regrelay-event-type"),
        "PUSH_ARTIFACT"
    );
    assert_eq!(header_str(message, "x-regrelay-source"), "harbor");
    assert!(matches!(
        header(message, "x-regrelay-schema"),
        Some(AMQPValue::LongLongInt(1))
    ));
    let decoded = regrelay_producer::EventMessage::decode(props, &message.delivery.data).unwrap();
    assert_eq!(decoded.id.to_string(), id);
}

#[tokio::test]
async fn array_is_published_in_order() {
    let (broker, api) = setup("array").await;
    let (status, body) = api.post_json(&fixture("telegram-article/array.json")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 4);
    let sent = ids(&body);

    let messages = broker
        .take(&broker.topology.events_queue(), 4, Duration::from_secs(5))
        .await;
    let types: Vec<String> = messages
        .iter()
        .map(|m| header_str(m, "x-regrelay-event-type"))
        .collect();
    assert_eq!(
        types,
        [
            "SCANNING_STOPPED",
            "PULL_ARTIFACT",
            "SCANNING_COMPLETED",
            "DELETE_ARTIFACT"
        ]
    );
    let got: Vec<String> = messages
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, sent);
    assert!(messages
        .iter()
        .all(|m| header_str(m, "x-regrelay-project") == "repo"));
    assert!(
        api.metric("regrelay_events_published_total{event_type=\"PULL_ARTIFACT\"}")
            .await
            >= 1.0
    );
}

const DISTRIBUTION_ENVELOPE: &str = r#"{"events":[
 {"id":"e-push-1","timestamp":"2026-11-23T10:00:00.123456789Z","action":"push",
  "target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":525,"digest":"sha256:aaaa","length":525,"repository":"team/app","url":"http://registry.local:5000/v2/team/app/manifests/sha256:aaaa","tag":"1.0"},
  "request":{"id":"r1","addr":"10.0.0.9:5123","host":"registry.local:5000","method":"PUT","useragent":"skopeo"},
  "actor":{"name":"ci-bot"},"source":{"addr":"registry:5000","instanceID":"i-1"}},
 {"id":"e-blob-1","timestamp":"2026-11-23T10:00:00Z","action":"push",
  "target":{"mediaType":"application/octet-stream","size":100,"digest":"sha256:bbbb","length":100,"repository":"team/app","url":"http://registry.local:5000/v2/team/app/blobs/sha256:bbbb"},
  "request":{"id":"r1","addr":"10.0.0.9:5123","host":"registry.local:5000","method":"PUT","useragent":"skopeo"},
  "actor":{},"source":{"addr":"registry:5000","instanceID":"i-1"}},
 {"id":"e-mount-1","timestamp":"2026-11-23T10:00:00Z","action":"mount",
  "target":{"mediaType":"application/octet-stream","size":100,"digest":"sha256:cccc","length":100,"repository":"team/app","fromRepository":"team/base","url":"http://registry.local:5000/v2/team/app/blobs/sha256:cccc"},
  "request":{"id":"r1","addr":"10.0.0.9:5123","host":"registry.local:5000","method":"POST","useragent":"skopeo"},
  "actor":{},"source":{"addr":"registry:5000","instanceID":"i-1"}}
]}"#;

#[tokio::test]
async fn distribution_envelope_publishes_artifact_events_and_reports_the_rest() {
    let (broker, api) = setup("distribution").await;
    let (status, body) = api
        .post(
            Some("application/vnd.docker.distribution.events.v1+json"),
            DISTRIBUTION_ENVELOPE,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    let ignored = body["ignored"].as_array().unwrap();
    assert_eq!(ignored.len(), 2, "{body}");
    assert_eq!(ignored[0]["reason"], "blob");
    assert_eq!(ignored[1]["reason"], "mount");

    let messages = broker
        .take(&broker.topology.events_queue(), 2, Duration::from_secs(2))
        .await;
    assert_eq!(messages.len(), 1, "only the manifest push is an event");
    let message = &messages[0];
    assert_eq!(header_str(message, "x-regrelay-source"), "distribution");
    assert_eq!(
        header_str(message, "x-regrelay-source-event-id"),
        "e-push-1"
    );
    let event: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event["type"], "PUSH_ARTIFACT");
    assert_eq!(event["operator"], "ci-bot");
    assert_eq!(event["event_data"]["repository"]["namespace"], "team");
    assert_eq!(event["event_data"]["resources"][0]["tag"], "1.0");

    // The registry resends until it gets a 2xx; a resend keeps its event id.
    let v2_single = r#"{"events":[{"id":"e-push-1","timestamp":"2026-11-23T10:00:00Z","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaa","repository":"team/app","url":"http://registry.local:5000/v2/team/app/manifests/sha256:aaaa","tag":"1.0"},"request":{"host":"registry.local:5000"},"actor":{"name":"ci-bot"}}]}"#;
    let (status, again) = api
        .post(
            Some("application/vnd.docker.distribution.events.v2+json"),
            v2_single,
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(ids(&again), ids(&body));
    assert!(
        api.metric("regrelay_events_ignored_total{reason=\"blob\"}")
            .await
            >= 1.0
    );
}

/// Every kind of bad input: status, Harbor's error body, a message that says what is wrong, and
/// nothing published.
#[tokio::test]
async fn bad_input_is_refused_with_harbor_errors_and_nothing_is_published() {
    let (broker, api) = setup("bad-input").await;
    let good = fixture("harbor/PULL_ARTIFACT.default.json");
    let unknown_type = good.replace("PULL_ARTIFACT", "PULL_CHART_X");
    let no_namespace = good.replace("\"namespace\": \"harbor\",", "");
    assert_ne!(no_namespace, good);
    let one_bad_in_array = format!("[{good},{good},{unknown_type}]");
    let too_large = format!(
        "[{}]",
        vec![good.as_str(); MAX_BODY / good.len() + 2].join(",")
    );

    struct Case<'a> {
        name: &'a str,
        content_type: Option<&'a str>,
        body: String,
        status: u16,
        code: &'a str,
        says: &'a str,
    }
    let cases = [
        Case {
            name: "malformed JSON",
            content_type: Some("application/json"),
            body: "{\"type\":".into(),
            status: 400,
            code: "BAD_REQUEST",
            says: "malformed JSON",
        },
        Case {
            name: "not an object",
            content_type: Some("application/json"),
            body: "42".into(),
            status: 400,
            code: "BAD_REQUEST",
            says: "",
        },
        Case {
            name: "unknown content type",
            content_type: Some("text/plain"),
            body: good.clone(),
            status: 415,
            code: "UNSUPPORTED_MEDIA_TYPE",
            says: "text/plain",
        },
        Case {
            name: "missing content type",
            content_type: None,
            body: good.clone(),
            status: 415,
            code: "UNSUPPORTED_MEDIA_TYPE",
            says: "missing Content-Type",
        },
        Case {
            name: "too large",
            content_type: Some("application/json"),
            body: too_large,
            status: 413,
            code: "PAYLOAD_TOO_LARGE",
            says: "65536",
        },
        Case {
            name: "unknown event type",
            content_type: Some("application/json"),
            body: unknown_type.clone(),
            status: 422,
            code: "UNPROCESSABLE_ENTITY",
            says: "PULL_CHART_X",
        },
        Case {
            name: "missing namespace",
            content_type: Some("application/json"),
            body: no_namespace,
            status: 422,
            code: "UNPROCESSABLE_ENTITY",
            says: "namespace",
        },
        Case {
            name: "one bad event in an array",
            content_type: Some("application/json"),
            body: one_bad_in_array,
            status: 422,
            code: "UNPROCESSABLE_ENTITY",
            says: "2",
        },
        Case {
            name: "empty array",
            content_type: Some("application/json"),
            body: "[]".into(),
            status: 422,
            code: "UNPROCESSABLE_ENTITY",
            says: "",
        },
        Case {
            name: "envelope without events",
            content_type: Some("application/vnd.docker.distribution.events.v1+json"),
            body: "{\"nope\":[]}".into(),
            status: 400,
            code: "BAD_REQUEST",
            says: "",
        },
    ];
    for case in cases {
        let (status, body) = api.post(case.content_type, case.body).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        let error = &body["errors"][0];
        assert_eq!(error["code"], case.code, "{}: {body}", case.name);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{}: empty message", case.name);
        assert!(
            message.contains(case.says),
            "{}: {message:?} should mention {:?}",
            case.name,
            case.says
        );
    }
    assert_eq!(broker.depth(&broker.topology.events_queue()).await, 0);
    assert!(
        api.metric("regrelay_ingest_rejected_total{reason=\"invalid_event\"}")
            .await
            >= 4.0
    );
    assert!(
        api.metric("regrelay_ingest_rejected_total{reason=\"body_too_large\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let (broker, api) = setup("auth").await;
    let url = format!("{}/api/v1/events", api.base);
    let event = fixture("harbor/PUSH_ARTIFACT.default.json");
    for auth in [None, Some("Bearer wrong-token"), Some("Basic dGVzdDp0ZXN0")] {
        let mut request = api
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(event.clone());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
    assert_eq!(broker.depth(&broker.topology.events_queue()).await, 0);
    assert_eq!(
        api.metric("regrelay_ingest_rejected_total{reason=\"unauthorized\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn unreachable_broker_gives_503_and_not_ready() {
    let topology = Topology::new(regrelay_testkit::unique_prefix("down")).unwrap();
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", unused_port());
    let api = TestApi::start(dead, topology, DatabaseChoice::Unreachable).await;

    let (status, body) = api
        .post_json(&fixture("harbor/PUSH_ARTIFACT.default.json"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0]["code"], "SERVICE_UNAVAILABLE");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was accepted"));
    // The password in the URL never reaches a client.
    assert!(!body.to_string().contains("guest:guest"));

    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(
        api.metric("regrelay_ingest_rejected_total{reason=\"broker_unavailable\"}")
            .await
            >= 1.0
    );
    assert!(
        api.metric("regrelay_broker_connects_total{outcome=\"failure\",role=\"publish\"}")
            .await
            >= 1.0
    );
}

/// A broker that drops the connection and refuses for a while: ingest answers 503 meanwhile, then
/// reconnects by itself; every event that got a 202 is on the queue.
#[tokio::test]
async fn producer_survives_a_lost_connection() {
    let broker = TestBroker::new("reconnect").await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let api = TestApi::start(
        url,
        broker.topology.clone(),
        DatabaseChoice::Fresh("reconnect"),
    )
    .await;
    let event = fixture("harbor/PUSH_ARTIFACT.default.json");

    let mut accepted = Vec::new();
    let (status, body) = api.post_json(&event).await;
    assert_eq!(status, 202, "{body}");
    accepted.extend(ids(&body));
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");

    proxy.set_refusing(true);
    proxy.sever();
    let (status, body) = api.post_json(&event).await;
    assert_eq!(status, 503, "while the broker is away: {body}");
    let (status, _) = api.get("/readyz").await;
    assert_eq!(status, 503);

    proxy.set_refusing(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = api.post_json(&event).await;
        if status == 202 {
            accepted.extend(ids(&body));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let messages = broker
        .take(&broker.topology.events_queue(), 10, Duration::from_secs(2))
        .await;
    let got: Vec<String> = messages
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, accepted);
    assert!(
        api.metric("regrelay_broker_connects_total{outcome=\"success\",role=\"publish\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let (_broker, api) = setup("health").await;
    let (status, body) = api.get("/healthz").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = api.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "regrelay_events_received_total",
        "regrelay_events_published_total",
        "regrelay_ingest_rejected_total",
        "regrelay_publish_confirm_duration_seconds",
        "regrelay_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let (status, body) = api.get("/no/such/path").await;
    assert_eq!(status, 404);
    assert!(body.contains("NOT_FOUND"));
}

/// Harbor allows project names of up to 255 characters, and a Distribution namespace may be as
/// long: every length up to that is accepted and published under a routing key that fits AMQP's
/// 255 bytes; one character more is a 422 with Harbor's error body, and nothing is published.
#[tokio::test]
async fn the_longest_project_names_are_routed_and_longer_ones_refused() {
    let (broker, api) = setup("long-project").await;
    let queue = broker.topology.events_queue();
    let event = |project: &str| {
        format!(
            r#"{{"type":"PUSH_ARTIFACT","occur_at":1680501893,"operator":"admin","event_data":{{"resources":[{{"digest":"sha256:00","tag":"v1"}}],"repository":{{"name":"app","namespace":"{project}","repo_full_name":"{project}/app","repo_type":"private"}}}}}}"#
        )
    };
    let envelope = |namespace: &str| {
        format!(
            r#"{{"events":[{{"id":"long-{}","timestamp":"2026-11-23T10:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaa","repository":"{namespace}/app","tag":"1.0"}}}}]}}"#,
            namespace.len()
        )
    };
    let longest = "p".repeat(255);
    // 236 characters was the first length that overflowed `event.PUSH_ARTIFACT.<project>`.
    let overflowing = "q".repeat(236);

    let batch = format!(
        "[{},{},{}]",
        event("short"),
        event(&overflowing),
        event(&longest)
    );
    let (status, body) = api.post_json(&batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3);
    let (status, body) = api
        .post(
            Some("application/vnd.docker.distribution.events.v2+json"),
            envelope(&longest),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let messages = broker.take(&queue, 4, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 4);
    let keys: Vec<&str> = messages
        .iter()
        .map(|m| m.delivery.routing_key.as_str())
        .collect();
    assert_eq!(keys[0], "event.PUSH_ARTIFACT.short");
    for (message, project) in messages[1..].iter().zip([&overflowing, &longest, &longest]) {
        let key = message.delivery.routing_key.as_str();
        assert!(key.len() <= 255, "{}", key.len());
        assert_eq!(
            key,
            regrelay_producer::topology::routing_key(
                regrelay_events::EventType::PushArtifact,
                project
            )
        );
        assert!(key.starts_with(&format!("event.PUSH_ARTIFACT.{}", &project[..200])));
        assert_eq!(header_str(message, "x-regrelay-project"), *project);
    }
    // The same project always gets the same key (bindings keep matching).
    assert_eq!(
        messages[2].delivery.routing_key,
        messages[3].delivery.routing_key
    );

    let too_long = "p".repeat(256);
    let (status, body) = api
        .post_json(&format!("[{},{}]", event("short"), event(&too_long)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNPROCESSABLE_ENTITY", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "event 1: project name (event_data.repository.namespace) is 256 characters long; at most 255 are allowed"
    );
    let (status, body) = api
        .post(
            Some("application/vnd.docker.distribution.events.v2+json"),
            envelope(&too_long),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNPROCESSABLE_ENTITY", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("target.repository"),
        "{body}"
    );
    assert_eq!(
        broker.depth(&queue).await,
        0,
        "nothing of a refused request"
    );

    // The API still answers on the same connection pool: nothing panicked.
    let (status, body) = api.post_json(&event("after")).await;
    assert_eq!(status, 202, "{body}");
}
