//! `parse_harbor_body`: the seed 002 array, the bad-input table, and unknown fields kept.

mod common;

use regrelay_events::cloudevents::{render as render_cloudevent, CloudEventContext};
use regrelay_events::{parse_harbor_body, EventError, EventType, InvalidReason};
use serde_json::Value;

use common::{default_fixture, fixture};

/// A valid push event with one field replaced (or added) at the top level.
fn push_with(field: &str, value: &str) -> String {
    let mut event: serde_json::Map<String, Value> =
        serde_json::from_str(&default_fixture(EventType::PushArtifact)).unwrap();
    event.insert(field.to_owned(), serde_json::from_str(value).unwrap());
    Value::Object(event).to_string()
}

fn push_without(field: &str) -> String {
    let mut event: serde_json::Map<String, Value> =
        serde_json::from_str(&default_fixture(EventType::PushArtifact)).unwrap();
    event.remove(field);
    Value::Object(event).to_string()
}

#[test]
fn telegram_article_array() {
    let text = fixture("telegram-article/array.json");
    let events = parse_harbor_body(text.as_bytes()).unwrap();
    let digest = "sha256:280b85260a6613bf08bd1234512341234123412341234123412gvsdfgdf";
    let want: [(EventType, &str, &str, &[&str]); 4] = [
        (EventType::ScanningStopped, "auto", "repo", &["1.1.1"]),
        (
            EventType::PullArtifact,
            "robot$repo+Trivy-16c5e31b-2b09-11f0-87be-0242ac180003",
            "repo",
            &[digest],
        ),
        (EventType::ScanningCompleted, "auto", "repo", &["1.1.1"]),
        (EventType::DeleteArtifact, "Admin", "repo", &["1.0.0"]),
    ];
    assert_eq!(events.len(), want.len());

    let elements: Vec<Value> = serde_json::from_str(&text).unwrap();
    for (i, (event, (event_type, operator, project, tags))) in events.iter().zip(want).enumerate() {
        assert_eq!(event.event_type(), event_type, "event {i}");
        assert_eq!(event.operator(), operator, "event {i}");
        assert_eq!(event.project(), project, "event {i}");
        assert_eq!(event.repository(), Some("repo/repo_image"), "event {i}");
        assert_eq!(event.tags(), tags, "event {i}");
        // Each element keeps its own exact text: a slice of the body, JSON-equal to the element.
        assert!(text.contains(event.raw_json()), "event {i}");
        assert_eq!(
            serde_json::from_str::<Value>(event.raw_json()).unwrap(),
            elements[i]
        );
    }
    assert_eq!(events[0].occur_at(), 1746597835);
}

#[test]
fn single_object_body_is_one_event() {
    let text = default_fixture(EventType::PushArtifact);
    let events = parse_harbor_body(text.as_bytes()).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].raw_json(), text.trim_end());
}

/// How a bad body must be refused.
#[derive(Debug)]
enum Want {
    /// 400, with this text in the message.
    Malformed(&'static str),
    /// 422 at this index with this exact message.
    Invalid(Option<usize>, &'static str),
}

#[test]
fn bad_bodies() {
    let push = default_fixture(EventType::PushArtifact);
    let unknown_type = push_with("type", r#""FOO""#);
    let three_then_bad = format!("[{push},{push},{unknown_type},{push}]");
    let replication_remote_only = default_fixture(EventType::Replication).replace(
        r#""registry_type": "harbor""#,
        r#""registry_type": "docker-registry""#,
    );
    let retention_no_project = default_fixture(EventType::TagRetention)
        .replace(r#""project_name": "harbor""#, r#""project_name": """#);

    let cases: Vec<(&str, String, Want)> = vec![
        ("not JSON", "{not json".into(), Want::Malformed("malformed JSON: ")),
        ("empty body", "".into(), Want::Malformed("EOF")),
        ("trailing garbage", format!("{push} x"), Want::Malformed("trailing")),
        ("not UTF-8", "\u{0}".into(), Want::Malformed("")),
        ("number", "42".into(), Want::Malformed("found a number")),
        ("string", r#""PUSH_ARTIFACT""#.into(), Want::Malformed("found a string")),
        ("null", "null".into(), Want::Malformed("found null")),
        (
            "unknown type",
            unknown_type.clone(),
            Want::Invalid(None, "unsupported event type FOO"),
        ),
        (
            "lower-case type",
            push_with("type", r#""push_artifact""#),
            Want::Invalid(None, "unsupported event type push_artifact"),
        ),
        (
            "type not a string",
            push_with("type", "1"),
            Want::Invalid(None, "field `type` must be a string"),
        ),
        ("missing type", push_without("type"), Want::Invalid(None, "missing field `type`")),
        (
            "missing occur_at",
            push_without("occur_at"),
            Want::Invalid(None, "missing field `occur_at`"),
        ),
        (
            "occur_at as string",
            push_with("occur_at", r#""1680501893""#),
            Want::Invalid(None, "field `occur_at` must be an integer"),
        ),
        (
            "occur_at in milliseconds",
            push_with("occur_at", "1680501893000"),
            Want::Invalid(
                None,
                "field `occur_at` must be unix seconds between 0 and 253402300799, got 1680501893000",
            ),
        ),
        (
            "operator not a string",
            push_with("operator", "null"),
            Want::Invalid(None, "field `operator` must be a string"),
        ),
        (
            "missing event_data",
            push_without("event_data"),
            Want::Invalid(None, "missing field `event_data`"),
        ),
        (
            "event_data not an object",
            push_with("event_data", "[]"),
            Want::Invalid(None, "field `event_data` must be an object"),
        ),
        (
            "missing namespace",
            push.replace(r#""namespace": "harbor","#, ""),
            Want::Invalid(
                None,
                "cannot tell the event's project: missing event_data.repository.namespace",
            ),
        ),
        (
            "empty namespace",
            push.replace(r#""namespace": "harbor""#, r#""namespace": """#),
            Want::Invalid(
                None,
                "cannot tell the event's project: missing event_data.repository.namespace",
            ),
        ),
        (
            "TAG_RETENTION with empty project_name",
            retention_no_project,
            Want::Invalid(
                None,
                "cannot tell the event's project: missing event_data.retention.project_name",
            ),
        ),
        (
            "REPLICATION with neither side harbor",
            replication_remote_only,
            Want::Invalid(
                None,
                "cannot tell the event's project: neither event_data.replication.src_resource \
                 nor event_data.replication.dest_resource has registry_type \"harbor\"",
            ),
        ),
        ("empty array", "[]".into(), Want::Invalid(None, "empty batch: the array holds no events")),
        (
            "array with a bad element at index 2",
            three_then_bad,
            Want::Invalid(Some(2), "event 2: unsupported event type FOO"),
        ),
        (
            "array with a number in it",
            format!("[{push},7]"),
            Want::Invalid(Some(1), "event 1: an event must be a JSON object"),
        ),
        (
            "array of arrays",
            format!("[[{push}]]"),
            Want::Invalid(Some(0), "event 0: an event must be a JSON object"),
        ),
    ];

    for (name, body, want) in cases {
        let body = if name == "not UTF-8" {
            vec![b'"', 0xff, b'"']
        } else {
            body.into_bytes()
        };
        let err = match parse_harbor_body(&body) {
            Ok(events) => panic!("{name}: accepted {} events", events.len()),
            Err(err) => err,
        };
        match (&err, &want) {
            (EventError::Malformed(_), Want::Malformed(part)) => {
                assert!(err.is_malformed());
                assert!(err.to_string().contains(part), "{name}: {err}");
            }
            (EventError::Invalid { index, .. }, Want::Invalid(want_index, message)) => {
                assert!(!err.is_malformed());
                assert_eq!(index, want_index, "{name}");
                assert_eq!(err.to_string(), *message, "{name}");
            }
            _ => panic!("{name}: got {err:?}, want {want:?}"),
        }
    }
}

#[test]
fn bad_element_reason_is_structured() {
    let push = default_fixture(EventType::PushArtifact);
    let body = format!("[{push},{}]", push_without("occur_at"));
    match parse_harbor_body(body.as_bytes()) {
        Err(EventError::Invalid { index, reason }) => {
            assert_eq!(index, Some(1));
            assert_eq!(reason, InvalidReason::MissingField("occur_at"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn operator_may_be_missing() {
    let events = parse_harbor_body(push_without("operator").as_bytes()).unwrap();
    assert_eq!(events[0].operator(), "");
}

#[test]
fn unknown_fields_are_kept() {
    // Odd spacing and key order on purpose: they must survive too.
    let text = r#"{"occur_at": 1680501893, "type":"PUSH_ARTIFACT","operator":"admin","x_regrelay_trace": {"hop": 1},
  "event_data": {"resources":[{"digest":"sha256:abc","tag":"v1","resource_url":"r.local/p/app:v1","x_size": 12345}],
  "repository": {"name":"app","namespace":"p","repo_full_name":"p/app","repo_type":"private"},"x_extra": [true, null, 1.5]}}"#;
    let events = parse_harbor_body(text.as_bytes()).unwrap();
    let event = &events[0];
    assert_eq!(event.raw_json(), text);
    assert_eq!(event.tags(), ["v1"]);

    let ctx = CloudEventContext {
        id: uuid::Uuid::nil(),
        project_id: 1,
        policy_id: 1,
        request_id: "r".to_owned(),
    };
    let body = render_cloudevent(event, &ctx).unwrap();
    let rendered: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        rendered["data"]["x_extra"],
        serde_json::json!([true, null, 1.5])
    );
    assert_eq!(rendered["data"]["resources"][0]["x_size"], 12345);
    // Unknown top-level fields belong to the Default payload, not to the CloudEvent's data.
    assert!(rendered.get("x_regrelay_trace").is_none());
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains(event.event_data_json()));
}
