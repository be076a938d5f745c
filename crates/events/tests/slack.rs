//! Slack rendering of every fixture, and truncation of a huge event.

mod common;

use regrelay_events::slack::{self, MAX_SECTION_TEXT, TRUNCATION_MARKER};
use regrelay_events::{EventType, RegistryEvent};
use serde_json::Value;

use common::{default_fixture, types_with_default_fixture};

/// The six section texts of a rendered body, checking the block structure on the way.
fn section_texts(body: &[u8]) -> Vec<String> {
    let body: Value = serde_json::from_slice(body).expect("Slack body must be valid JSON");
    let blocks = body["blocks"].as_array().expect("a blocks array");
    assert_eq!(blocks.len(), 6);
    assert_eq!(body.as_object().unwrap().len(), 1, "only `blocks`");
    blocks
        .iter()
        .map(|block| {
            assert_eq!(block["type"], "section");
            assert_eq!(block["text"]["type"], "mrkdwn");
            block["text"]["text"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn every_fixture_renders_six_sections() {
    for event_type in types_with_default_fixture() {
        let event = RegistryEvent::from_json(&default_fixture(event_type)).unwrap();
        let texts = section_texts(&slack::render(&event));

        assert_eq!(texts[0], "*Harbor webhook events*");
        assert_eq!(texts[1], format!("*event_type:* {event_type}"));
        assert!(
            texts[2].starts_with(&format!(
                "*occur_at:* <!date^{}^{{date}} at {{time}}|",
                event.occur_at()
            )),
            "{}",
            texts[2]
        );
        assert_eq!(texts[3], format!("*operator:* {}", event.operator()));
        assert_eq!(texts[4], "*event_data:*");

        let code = texts[5]
            .strip_prefix("```\n")
            .and_then(|t| t.strip_suffix("\n```"))
            .unwrap_or_else(|| panic!("{event_type}: not a code block: {}", texts[5]));
        // The fixtures hold no `&`, `<` or `>`, so the block is plain pretty JSON of event_data.
        let data: Value = serde_json::from_str(code).unwrap();
        let want: Value = serde_json::from_str(event.event_data_json()).unwrap();
        assert_eq!(data, want, "{event_type}");
        assert!(code.contains("\n    \""), "4-space indent: {code}");
        assert!(texts[5].chars().count() <= MAX_SECTION_TEXT);
    }
}

#[test]
fn push_example_matches_harbor_exactly() {
    let event = RegistryEvent::from_json(&default_fixture(EventType::PushArtifact)).unwrap();
    let texts = section_texts(&slack::render(&event));
    assert_eq!(
        texts[2],
        "*occur_at:* <!date^1680501893^{date} at {time}|2023-04-03 06:04:53 UTC>"
    );
    assert_eq!(texts[3], "*operator:* harbor-jobservice");
    // Key order as received, 4-space indent as in Harbor's documentation.
    assert_eq!(
        texts[5],
        r#"```
{
    "resources": [
        {
            "digest": "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
            "tag": "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
            "resource_url": "localhost/harbor/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"
        }
    ],
    "repository": {
        "date_created": 1680501893,
        "name": "alpine",
        "namespace": "harbor",
        "repo_full_name": "harbor/alpine",
        "repo_type": "private"
    }
}
```"#
    );
}

#[test]
fn body_is_strict_json_with_escaped_newlines() {
    let event = RegistryEvent::from_json(&default_fixture(EventType::TagRetention)).unwrap();
    let body = String::from_utf8(slack::render(&event)).unwrap();
    assert!(!body.contains('\n'), "raw newline in {body}");
    assert!(body.contains(r#"\n"#));
}

#[test]
fn slack_control_characters_are_escaped() {
    let event = RegistryEvent::from_json(
        r#"{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"<@U123> & co","event_data":{"repository":{"namespace":"p","name":"<!channel>"}}}"#,
    )
    .unwrap();
    let texts = section_texts(&slack::render(&event));
    assert_eq!(texts[3], "*operator:* &lt;@U123&gt; &amp; co");
    assert!(
        texts[5].contains(r#""name": "&lt;!channel&gt;""#),
        "{}",
        texts[5]
    );
}

#[test]
fn huge_event_is_truncated_to_slacks_limit() {
    // A scan report with thousands of entries, as a large image produces.
    let vulnerabilities: Vec<Value> = (0..2000)
        .map(|i| serde_json::json!({ "id": format!("CVE-2024-{i:05}"), "severity": "High" }))
        .collect();
    let text = serde_json::json!({
        "type": "SCANNING_COMPLETED",
        "occur_at": 1680502375,
        "operator": "auto",
        "event_data": {
            "resources": [{ "digest": "sha256:abc", "vulnerabilities": vulnerabilities }],
            "repository": { "name": "alpine", "namespace": "harbor", "repo_full_name": "harbor/alpine" }
        }
    })
    .to_string();
    let event = RegistryEvent::from_json(&text).unwrap();
    let body = slack::render(&event);
    let texts = section_texts(&body);

    let code = &texts[5];
    assert!(
        code.chars().count() <= MAX_SECTION_TEXT,
        "{}",
        code.chars().count()
    );
    assert!(
        code.chars().count() > MAX_SECTION_TEXT - 100,
        "cut far too early"
    );
    assert!(code.starts_with("```\n{\n    \"resources\": ["));
    assert!(
        code.ends_with(&format!("\n{TRUNCATION_MARKER}\n```")),
        "{}",
        &code[code.len() - 80..]
    );
    // Cut at a line boundary: the line before the marker is a whole pretty-printed line.
    let lines: Vec<&str> = code.lines().collect();
    let last_data_line = lines[lines.len() - 3];
    assert!(
        last_data_line.ends_with(',')
            || last_data_line.ends_with('{')
            || last_data_line.ends_with('"'),
        "{last_data_line}"
    );
    // The other sections are untouched.
    assert_eq!(texts[1], "*event_type:* SCANNING_COMPLETED");
}
