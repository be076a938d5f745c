//! regrelay's own operational events, in Harbor's event shape so policies, filters, payload
//! formats and chat messages treat them like registry events.
//!
//! `REGRELAY_TARGET_DISABLED`: a policy target was disabled because its circuit stayed open for
//! `auto_disable_after`. `event_data.repository.namespace` is the policy's project (matched like
//! any event of that project; system-wide policies see them all); `event_data.target` says which
//! target, why, and since when. No credential: the address is redacted by the caller.

use serde_json::json;

use crate::{EventError, EventType, RegistryEvent};

/// The operator regrelay's own events name.
pub const OPERATOR: &str = "regrelay";

/// What a `REGRELAY_TARGET_DISABLED` event says.
#[derive(Debug, Clone)]
pub struct TargetDisabled<'a> {
    /// The policy's project; a system-wide policy's events name `system`.
    pub project: &'a str,
    pub policy_id: i64,
    pub policy_name: &'a str,
    /// The target's `type` (`http`, `telegram`, ...).
    pub target_type: &'a str,
    /// Redacted as the policy API shows it.
    pub target_address: &'a str,
    /// Unix seconds.
    pub circuit_opened_at: i64,
    pub consecutive_failures: i32,
    pub last_failure: Option<&'a str>,
    /// `auto_disable_after`, as configured (`5days`).
    pub disabled_after: &'a str,
    /// Unix seconds.
    pub occur_at: i64,
}

/// The event, validated like one a registry sent.
pub fn target_disabled(t: &TargetDisabled<'_>) -> Result<RegistryEvent, EventError> {
    let event = json!({
        "type": EventType::RegrelayTargetDisabled.as_str(),
        "occur_at": t.occur_at,
        "operator": OPERATOR,
        "event_data": {
            // Empty name fields, so a template written for registry events still renders.
            "repository": {"namespace": t.project, "name": "", "repo_full_name": ""},
            "target": {
                "policy_id": t.policy_id,
                "policy_name": t.policy_name,
                "type": t.target_type,
                "address": t.target_address,
                "circuit_opened_at": t.circuit_opened_at,
                "consecutive_failures": t.consecutive_failures,
                "last_failure": t.last_failure,
                "disabled_after": t.disabled_after,
            },
        },
    });
    RegistryEvent::from_json(&event.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_reads_back_as_a_registry_event_of_its_project() {
        let event = target_disabled(&TargetDisabled {
            project: "library",
            policy_id: 7,
            policy_name: "ci",
            target_type: "telegram",
            target_address: "https://api.telegram.org",
            circuit_opened_at: 1_764_000_000,
            consecutive_failures: 42,
            last_failure: Some("HTTP 401 (telegram: Unauthorized)"),
            disabled_after: "5days",
            occur_at: 1_764_432_000,
        })
        .unwrap();
        assert_eq!(event.event_type(), EventType::RegrelayTargetDisabled);
        assert_eq!(event.project(), "library");
        assert_eq!(event.operator(), OPERATOR);
        assert!(event.raw_json().contains("\"consecutive_failures\":42"));
    }
}
