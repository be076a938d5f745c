//! The registry event types regrelay knows: Harbor's ten current types and the three legacy
//! chart types (SPEC §1).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// One kind of registry event, named on the wire by its Harbor string (`PUSH_ARTIFACT`, ...).
///
/// The variant order is the order Harbor lists types in, so `Ord` sorts them the way a Harbor
/// user sees them, current types before the legacy chart types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    PushArtifact,
    PullArtifact,
    DeleteArtifact,
    QuotaExceed,
    QuotaWarning,
    ScanningFailed,
    ScanningStopped,
    ScanningCompleted,
    Replication,
    TagRetention,
    UploadChart,
    DownloadChart,
    DeleteChart,
    /// regrelay's own operational event: a policy target was disabled after its circuit stayed
    /// open for `auto_disable_after`. Published by the consumers on the events exchange, so a
    /// policy can route it to a chat like any registry event.
    RegrelayTargetDisabled,
}

/// A string that names no event type. Its message is Harbor's own validation message, so the API
/// can pass it through unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported event type {0}")]
pub struct UnknownEventType(pub String);

impl EventType {
    /// The ten current Harbor types, in the order Harbor lists them in `GET .../webhook/events`
    /// (SPEC §1 table order).
    pub const CURRENT: [EventType; 10] = [
        EventType::PushArtifact,
        EventType::PullArtifact,
        EventType::DeleteArtifact,
        EventType::QuotaExceed,
        EventType::QuotaWarning,
        EventType::ScanningFailed,
        EventType::ScanningStopped,
        EventType::ScanningCompleted,
        EventType::Replication,
        EventType::TagRetention,
    ];

    /// All 13, `CURRENT` first, then the legacy chart events.
    pub const ALL: [EventType; 14] = [
        EventType::PushArtifact,
        EventType::PullArtifact,
        EventType::DeleteArtifact,
        EventType::QuotaExceed,
        EventType::QuotaWarning,
        EventType::ScanningFailed,
        EventType::ScanningStopped,
        EventType::ScanningCompleted,
        EventType::Replication,
        EventType::TagRetention,
        EventType::UploadChart,
        EventType::DownloadChart,
        EventType::DeleteChart,
        EventType::RegrelayTargetDisabled,
    ];

    /// The Harbor name of the type, as it appears in the Default payload's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PushArtifact => "PUSH_ARTIFACT",
            EventType::PullArtifact => "PULL_ARTIFACT",
            EventType::DeleteArtifact => "DELETE_ARTIFACT",
            EventType::QuotaExceed => "QUOTA_EXCEED",
            EventType::QuotaWarning => "QUOTA_WARNING",
            EventType::ScanningFailed => "SCANNING_FAILED",
            EventType::ScanningStopped => "SCANNING_STOPPED",
            EventType::ScanningCompleted => "SCANNING_COMPLETED",
            EventType::Replication => "REPLICATION",
            EventType::TagRetention => "TAG_RETENTION",
            EventType::UploadChart => "UPLOAD_CHART",
            EventType::DownloadChart => "DOWNLOAD_CHART",
            EventType::DeleteChart => "DELETE_CHART",
            EventType::RegrelayTargetDisabled => "REGRELAY_TARGET_DISABLED",
        }
    }

    /// The CloudEvents `type` attribute Harbor uses for this type.
    ///
    /// `None` for the chart events: Harbor removed them (v2.8) before it added CloudEvents, so
    /// there is no name a receiver would recognise, and we do not invent one.
    pub fn cloudevents_type(self) -> Option<&'static str> {
        match self {
            EventType::PushArtifact => Some("harbor.artifact.pushed"),
            EventType::PullArtifact => Some("harbor.artifact.pulled"),
            EventType::DeleteArtifact => Some("harbor.artifact.deleted"),
            EventType::QuotaExceed => Some("harbor.quota.exceeded"),
            EventType::QuotaWarning => Some("harbor.quota.warned"),
            EventType::ScanningFailed => Some("harbor.scan.failed"),
            EventType::ScanningStopped => Some("harbor.scan.stopped"),
            EventType::ScanningCompleted => Some("harbor.scan.completed"),
            EventType::Replication => Some("harbor.replication.status.changed"),
            EventType::TagRetention => Some("harbor.tag_retention.finished"),
            EventType::RegrelayTargetDisabled => Some("regrelay.target.disabled"),
            EventType::UploadChart | EventType::DownloadChart | EventType::DeleteChart => None,
        }
    }

    /// Whether this is one of the chart events Harbor sent before v2.8 (accepted, Default only).
    pub fn is_legacy_chart(self) -> bool {
        matches!(
            self,
            EventType::UploadChart | EventType::DownloadChart | EventType::DeleteChart
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    /// Exact, case-sensitive match, as Harbor does: `push_artifact` is not a type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize` so that borrowed and owned strings both
        // work without an allocation.
        struct EventTypeVisitor;

        impl Visitor<'_> for EventTypeVisitor {
            type Value = EventType;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Harbor event type such as \"PUSH_ARTIFACT\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<EventType, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EventTypeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn all_starts_with_current_and_is_sorted() {
        assert_eq!(EventType::ALL[..10], EventType::CURRENT);
        let mut sorted = EventType::ALL;
        sorted.sort();
        assert_eq!(sorted, EventType::ALL);
    }

    #[test]
    fn only_chart_events_are_legacy_and_lack_a_cloudevents_type() {
        for t in EventType::ALL {
            assert_eq!(t.is_legacy_chart(), t.cloudevents_type().is_none(), "{t}");
            // Besides Harbor's current types: the legacy charts and regrelay's own.
            assert_eq!(
                t.is_legacy_chart() || t == EventType::RegrelayTargetDisabled,
                !EventType::CURRENT.contains(&t),
                "{t}"
            );
        }
    }

    #[test]
    fn unknown_names_are_refused_with_harbors_message() {
        for bad in ["FOO", "push_artifact", "", " PUSH_ARTIFACT"] {
            let err = bad.parse::<EventType>().unwrap_err();
            assert_eq!(err.to_string(), format!("unsupported event type {bad}"));
        }
    }

    #[test]
    fn serde_uses_the_harbor_string() {
        let json = serde_json::to_string(&EventType::ScanningCompleted).unwrap();
        assert_eq!(json, "\"SCANNING_COMPLETED\"");
        let back: EventType = serde_json::from_str(&json).unwrap();
        assert_eq!(back, EventType::ScanningCompleted);
        let err = serde_json::from_str::<EventType>("\"NOPE\"").unwrap_err();
        assert!(
            err.to_string().contains("unsupported event type NOPE"),
            "{err}"
        );
    }
}
