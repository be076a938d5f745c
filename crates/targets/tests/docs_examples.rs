//! docs/targets.md shows each chat type's built-in message for Harbor's PUSH_ARTIFACT example
//! (and Telegram's for SCANNING_COMPLETED too), rendered by this crate: this test keeps the docs in step.

use chrono::DateTime;
use regrelay_events::samples::harbor_example;
use regrelay_events::{EventType, RegistryEvent};
use regrelay_targets::{DeliveryContext, Target, TargetKind, TargetSettings};

/// The example bodies, as docs/targets.md shows them (pretty-printed JSON).
pub fn examples() -> Vec<(TargetKind, EventType, String)> {
    let now = DateTime::from_timestamp(1_680_502_375, 0).unwrap_or_default();
    let context = DeliveryContext {
        policy_id: 1,
        policy_name: "notify".into(),
        project_id: Some(1),
        delivery_id: "d".into(),
        event_id: "e".into(),
        target_type: "t".into(),
    };
    let mut out = Vec::new();
    for kind in TargetKind::CHAT {
        let settings = match kind {
            TargetKind::Telegram => TargetSettings {
                bot_token: Some("123456:ABC".into()),
                chat_id: Some("-1001234567890".into()),
                ..Default::default()
            },
            TargetKind::DingTalk => TargetSettings {
                address: Some("https://oapi.dingtalk.com/robot/send?access_token=t".into()),
                ..Default::default()
            },
            TargetKind::WeCom => TargetSettings {
                address: Some("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k".into()),
                ..Default::default()
            },
            _ => TargetSettings {
                address: Some("https://example.invalid/hook".into()),
                ..Default::default()
            },
        };
        let target = Target::new(kind, settings).unwrap();
        let types: &[EventType] = if kind == TargetKind::Telegram {
            &[EventType::PushArtifact, EventType::ScanningCompleted]
        } else {
            &[EventType::PushArtifact]
        };
        for &event_type in types {
            let event = RegistryEvent::from_json(harbor_example(event_type).unwrap()).unwrap();
            let request = target.prepare(&event, &context, now).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            out.push((
                kind,
                event_type,
                serde_json::to_string_pretty(&body).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn docs_show_what_the_code_renders() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/targets.md"
    ))
    .unwrap();
    if let Ok(dir) = std::env::var("REGRELAY_WRITE_EXAMPLES") {
        for (kind, event_type, body) in examples() {
            std::fs::write(format!("{dir}/{kind}.{event_type}.json"), body).unwrap();
        }
        return;
    }
    for (kind, event_type, body) in examples() {
        assert!(
            docs.contains(&body),
            "docs/targets.md lacks the {kind} {event_type} example:\n{body}"
        );
    }
}

/// The template examples of docs/targets.md render for every event type.
#[test]
fn docs_template_examples_render() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/targets.md"
    ))
    .unwrap();
    let templates: Vec<&str> = docs
        .split("```jinja\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .collect();
    assert_eq!(templates.len(), 2);
    let context = DeliveryContext {
        policy_id: 1,
        policy_name: "notify".into(),
        project_id: None,
        delivery_id: "d".into(),
        event_id: "e".into(),
        target_type: "t".into(),
    };
    for source in templates {
        let template = regrelay_targets::compile(source).unwrap();
        let json = source.starts_with("{\"");
        for event_type in EventType::ALL {
            let artifact_event = !matches!(
                event_type,
                EventType::Replication
                    | EventType::TagRetention
                    | EventType::QuotaExceed
                    | EventType::QuotaWarning
                    | EventType::RegrelayTargetDisabled
            );
            if !json && !artifact_event {
                continue;
            }
            let event = regrelay_events::samples::sample_event(event_type, "p", 1).unwrap();
            let vars = regrelay_targets::Variables::new(&event, &context);
            let out = regrelay_targets::render(&template, &vars)
                .unwrap_or_else(|e| panic!("{event_type}: {e}\n{source}"));
            if json {
                serde_json::from_str::<serde_json::Value>(&out).unwrap();
            } else {
                regrelay_testkit::vendors::telegram::parse_markdown_v2(&out)
                    .unwrap_or_else(|e| panic!("{e}: {out}"));
            }
        }
    }
}
