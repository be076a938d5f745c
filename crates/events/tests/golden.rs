//! Golden tests: every Harbor example from seed 000 (and a legacy chart event) parses, renders
//! back byte for byte as Default, and renders as the CloudEvent Harbor documents.

mod common;

use ::cloudevents::event::{ExtensionValue, SpecVersion};
use ::cloudevents::{AttributesReader, Data};
use regrelay_events::cloudevents::{render as render_cloudevent, CloudEventContext, RenderError};
use regrelay_events::{EventType, RegistryEvent};
use serde_json::Value;

use common::{cloudevents_fixture, default_fixture, types_with_default_fixture};

/// The attribute order SPEC §2 fixes (Harbor itself puts `requestid` second).
const ATTRIBUTE_ORDER: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "time",
    "data",
    "operator",
    "requestid",
];

fn ctx() -> CloudEventContext {
    CloudEventContext {
        id: uuid::Uuid::parse_str("01234567-89ab-4cde-8f01-23456789abcd").unwrap(),
        project_id: 2,
        policy_id: 15,
        request_id: "3f0c8b6e-2c1d-4b7a-9e8f-0a1b2c3d4e5f".to_owned(),
    }
}

/// What each fixture is about: (type, project, repository, tags).
fn expected_facts(
    event_type: EventType,
) -> (&'static str, Option<&'static str>, Vec<&'static str>) {
    const DIGEST_954B: &str =
        "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
    match event_type {
        EventType::PushArtifact | EventType::PullArtifact => {
            ("harbor", Some("harbor/alpine"), vec![DIGEST_954B])
        }
        EventType::DeleteArtifact => ("harbor", Some("harbor/alpine"), vec!["3.8"]),
        // Quota and scan examples name resources by digest only: no tags.
        EventType::QuotaExceed
        | EventType::QuotaWarning
        | EventType::ScanningFailed
        | EventType::ScanningStopped
        | EventType::ScanningCompleted => ("harbor", Some("harbor/alpine"), vec![]),
        // The replication pulled from Docker Hub into Harbor project "harbor" (dest side).
        EventType::Replication => ("harbor", None, vec![]),
        EventType::TagRetention => ("harbor", None, vec![]),
        EventType::UploadChart => ("library", Some("library/nginx"), vec!["0.1.0"]),
        other => panic!("no fixture for {other}"),
    }
}

#[test]
fn default_round_trips_byte_for_byte() {
    for event_type in types_with_default_fixture() {
        let text = default_fixture(event_type);
        let event = RegistryEvent::from_json(&text).unwrap();

        assert_eq!(event.event_type(), event_type);
        // The fixture file ends with a newline, which is not part of the JSON value.
        assert_eq!(event.raw_json(), text.trim_end(), "{event_type}");
        let reparsed: Value = serde_json::from_str(event.raw_json()).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed, original, "{event_type}");

        // event_data is an exact slice of what came in.
        assert!(text.contains(event.event_data_json()), "{event_type}");
        assert_eq!(
            serde_json::from_str::<Value>(event.event_data_json()).unwrap(),
            original["event_data"],
            "{event_type}"
        );
    }
}

#[test]
fn facts_read_from_each_fixture() {
    for event_type in types_with_default_fixture() {
        let text = default_fixture(event_type);
        let original: Value = serde_json::from_str(&text).unwrap();
        let event = RegistryEvent::from_json(&text).unwrap();
        let (project, repository, tags) = expected_facts(event_type);
        assert_eq!(event.project(), project, "{event_type}");
        assert_eq!(event.repository(), repository, "{event_type}");
        assert_eq!(event.tags(), tags, "{event_type}");
        assert_eq!(event.occur_at(), original["occur_at"].as_i64().unwrap());
        assert_eq!(event.operator(), original["operator"].as_str().unwrap());
    }
}

#[test]
fn cloudevents_match_harbors_examples() {
    for event_type in EventType::CURRENT {
        let event = RegistryEvent::from_json(&default_fixture(event_type)).unwrap();
        let body = render_cloudevent(&event, &ctx()).unwrap();
        let rendered: Value = serde_json::from_slice(&body).unwrap();
        let seed: Value = serde_json::from_str(&cloudevents_fixture(event_type)).unwrap();
        let rendered = rendered.as_object().unwrap();
        let seed = seed.as_object().unwrap();

        // Exactly the attributes Harbor sends, in regrelay's order.
        let keys: Vec<&str> = rendered.keys().map(String::as_str).collect();
        assert_eq!(keys, ATTRIBUTE_ORDER, "{event_type}");
        let mut seed_keys: Vec<&str> = seed.keys().map(String::as_str).collect();
        seed_keys.sort_unstable();
        let mut sorted = ATTRIBUTE_ORDER;
        sorted.sort_unstable();
        assert_eq!(seed_keys, sorted, "{event_type}");

        for key in [
            "specversion",
            "source",
            "type",
            "datacontenttype",
            "data",
            "operator",
        ] {
            assert_eq!(rendered[key], seed[key], "{event_type}: {key}");
        }
        let ctx = ctx();
        assert_eq!(rendered["id"], ctx.id.to_string());
        assert_eq!(rendered["requestid"], ctx.request_id);
        // The seed's `time` is not always its `occur_at`; ours always is.
        let time = rendered["time"].as_str().unwrap();
        let parsed = chrono::DateTime::parse_from_rfc3339(time).unwrap();
        assert_eq!(parsed.timestamp(), event.occur_at(), "{event_type}");
        assert!(time.ends_with('Z') && time.len() == 20, "{time}");

        // `data` is the event data text as received, not a re-serialisation.
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains(&format!(",\"data\":{},", event.event_data_json())),
            "{event_type}"
        );
    }
}

#[test]
fn cloudevents_sdk_reads_the_rendered_events() {
    for event_type in EventType::CURRENT {
        let event = RegistryEvent::from_json(&default_fixture(event_type)).unwrap();
        let body = render_cloudevent(&event, &ctx()).unwrap();
        let ce: ::cloudevents::Event = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{event_type}: cloudevents-sdk refused the body: {e}"));

        assert_eq!(ce.specversion(), SpecVersion::V10);
        assert_eq!(ce.id(), ctx().id.to_string());
        assert_eq!(ce.source().to_string(), "/projects/2/webhook/policies/15");
        assert_eq!(Some(ce.ty()), event_type.cloudevents_type());
        assert_eq!(ce.datacontenttype(), Some("application/json"));
        assert_eq!(ce.time().map(|t| t.timestamp()), Some(event.occur_at()));
        match ce.data() {
            Some(Data::Json(data)) => assert_eq!(
                data,
                &serde_json::from_str::<Value>(event.event_data_json()).unwrap()
            ),
            other => panic!("{event_type}: data is {other:?}"),
        }
        assert_eq!(
            ce.extension("operator"),
            Some(&ExtensionValue::String(event.operator().to_owned()))
        );
        assert_eq!(
            ce.extension("requestid"),
            Some(&ExtensionValue::String(ctx().request_id))
        );
    }
}

#[test]
fn chart_events_are_default_only() {
    let event = RegistryEvent::from_json(&default_fixture(EventType::UploadChart)).unwrap();
    assert!(event.event_type().is_legacy_chart());
    assert!(matches!(
        render_cloudevent(&event, &ctx()),
        Err(RenderError::NotSupported(EventType::UploadChart))
    ));
}
