//! Sample events for test deliveries: Harbor's own documentation example of each current type
//! (the golden fixtures), moved to the user's project and to now.
//!
//! Design constraints:
//! - A test delivery must look like the real thing to the receiver, so the samples are Harbor's
//!   documented payloads, not invented ones; only `occur_at`, the project (namespace) and the
//!   operator change, so a receiver can tell a test from a real push.

use serde_json::Value;

use crate::{EventError, EventType, RegistryEvent};

/// The operator a sample event names.
pub const SAMPLE_OPERATOR: &str = "regrelay-test-delivery";

/// Harbor's documentation example for `event_type`, or `None` for the legacy chart types, which
/// current Harbor no longer sends.
pub fn harbor_example(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::PushArtifact => {
            include_str!("../tests/fixtures/harbor/PUSH_ARTIFACT.default.json")
        }
        EventType::PullArtifact => {
            include_str!("../tests/fixtures/harbor/PULL_ARTIFACT.default.json")
        }
        EventType::DeleteArtifact => {
            include_str!("../tests/fixtures/harbor/DELETE_ARTIFACT.default.json")
        }
        EventType::QuotaExceed => {
            include_str!("../tests/fixtures/harbor/QUOTA_EXCEED.default.json")
        }
        EventType::QuotaWarning => {
            include_str!("../tests/fixtures/harbor/QUOTA_WARNING.default.json")
        }
        EventType::ScanningFailed => {
            include_str!("../tests/fixtures/harbor/SCANNING_FAILED.default.json")
        }
        EventType::ScanningStopped => {
            include_str!("../tests/fixtures/harbor/SCANNING_STOPPED.default.json")
        }
        EventType::ScanningCompleted => {
            include_str!("../tests/fixtures/harbor/SCANNING_COMPLETED.default.json")
        }
        EventType::Replication => include_str!("../tests/fixtures/harbor/REPLICATION.default.json"),
        EventType::TagRetention => {
            include_str!("../tests/fixtures/harbor/TAG_RETENTION.default.json")
        }
        EventType::UploadChart
        | EventType::DownloadChart
        | EventType::DeleteChart
        | EventType::RegrelayTargetDisabled => return None,
    })
}

/// A sample event of `event_type` in `project`, occurring at `occur_at` (Unix seconds).
pub fn sample_event(
    event_type: EventType,
    project: &str,
    occur_at: i64,
) -> Result<RegistryEvent, EventError> {
    if event_type == EventType::RegrelayTargetDisabled {
        let event = crate::operational::target_disabled(&crate::operational::TargetDisabled {
            project,
            policy_id: 1,
            policy_name: "sample",
            target_type: "http",
            target_address: "https://hooks.example.com/in?token=********",
            circuit_opened_at: occur_at - 5 * 86_400,
            consecutive_failures: 1234,
            last_failure: Some("HTTP 503"),
            disabled_after: "5days",
            occur_at,
        })?;
        // The sample's operator, as for every other type.
        let mut json: Value = serde_json::from_str(event.raw_json())
            .map_err(|e| EventError::Malformed(e.to_string()))?;
        json["operator"] = Value::from(SAMPLE_OPERATOR);
        return RegistryEvent::from_json(&json.to_string());
    }
    let example = harbor_example(event_type).unwrap_or(include_str!(
        "../tests/fixtures/harbor/PUSH_ARTIFACT.default.json"
    ));
    let mut event: Value =
        serde_json::from_str(example).map_err(|e| EventError::Malformed(e.to_string()))?;
    event["type"] = Value::from(event_type.as_str());
    event["occur_at"] = Value::from(occur_at);
    event["operator"] = Value::from(SAMPLE_OPERATOR);
    if let Some(repository) = event
        .pointer_mut("/event_data/repository")
        .and_then(Value::as_object_mut)
    {
        let name = repository
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("sample")
            .to_owned();
        repository.insert("namespace".into(), Value::from(project));
        repository.insert(
            "repo_full_name".into(),
            Value::from(format!("{project}/{name}")),
        );
    }
    // Tag retention and replication name their project elsewhere (SPEC §1); replication's local
    // side is the Harbor whose endpoint is local, the destination in this example.
    for pointer in [
        "/event_data/retention/project_name",
        "/event_data/replication/dest_resource/namespace",
    ] {
        if let Some(slot) = event.pointer_mut(pointer) {
            *slot = Value::from(project);
        }
    }
    RegistryEvent::from_json(&event.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_sample_in_the_project() {
        for event_type in EventType::ALL {
            let event = sample_event(event_type, "team-a", 1_800_000_000).unwrap();
            assert_eq!(event.event_type(), event_type);
            assert_eq!(event.occur_at(), 1_800_000_000);
            assert_eq!(event.operator(), SAMPLE_OPERATOR);
            assert_eq!(event.project(), "team-a", "{event_type:?}");
        }
    }
}
