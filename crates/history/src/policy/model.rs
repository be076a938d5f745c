//! The policy model: what a client writes ([`PolicySpec`]), what is stored ([`Policy`]), where it
//! delivers ([`Target`]), and the few names Harbor's API uses for them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use regrelay_events::EventType;
use serde::{Deserialize, Serialize};

use super::error::PolicyError;

/// The prefix of a credential sealed at rest (`sealing`): format version 1.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// Whether a stored credential value is in the sealed form (whether or not it opens). Validation
/// lets such a value through unchecked: it was checked when it was written.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// How a target is called: a generic HTTP endpoint or a Slack incoming webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Http,
    Slack,
}

/// The body format of an HTTP target (Slack targets always get Slack's format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PayloadFormat {
    #[default]
    Default,
    CloudEvents,
}

/// One place a policy delivers to.
///
/// Stored as JSON (serde of this struct); the optional fields default when absent, so rows written
/// by an older version still decode.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    /// An absolute http or https URL.
    pub address: String,
    /// Sent verbatim as `Authorization` (HTTP targets only; Harbor adds no prefix).
    #[serde(default)]
    pub auth_header: Option<String>,
    #[serde(default)]
    pub skip_cert_verify: bool,
    #[serde(default)]
    pub payload_format: PayloadFormat,
    /// Signing secret (Standard Webhooks); `None` or empty: requests are not signed.
    #[serde(default)]
    pub secret: Option<String>,
    /// Custom headers sent with every request, name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Repository and tag globs (TCR's rules, see [`CompiledFilters`](super::CompiledFilters)). An empty
/// list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A policy as a client writes it (create, or full replace on update).
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub name: String,
    pub description: String,
    pub targets: Vec<Target>,
    pub event_types: Vec<EventType>,
    pub filters: Filters,
    /// Who created it; kept unchanged by updates.
    pub creator: String,
    pub enabled: bool,
}

/// A project (Harbor's project, a Distribution namespace), as a policy names it. Stored in the
/// `projects` table (module `projects`), which keeps its id stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: i64,
    pub name: String,
}

/// A stored policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// `None`: a system-wide policy, matching events of every project.
    pub project: Option<Project>,
    pub targets: Vec<Target>,
    pub event_types: Vec<EventType>,
    pub filters: Filters,
    pub creator: String,
    pub creation_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub enabled: bool,
}

/// Parses event type names (Harbor's strings); duplicates are dropped, the first order kept.
/// An empty list is not an error here: [`PolicySpec::validate`] refuses it.
pub fn parse_event_types(names: &[String]) -> Result<Vec<EventType>, PolicyError> {
    let mut types = Vec::with_capacity(names.len());
    for name in names {
        let event_type: EventType = name.parse()?;
        if !types.contains(&event_type) {
            types.push(event_type);
        }
    }
    Ok(types)
}

impl TargetKind {
    /// `"http"` or `"slack"`, as Harbor's API names them.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "http" => Ok(TargetKind::Http),
            "slack" => Ok(TargetKind::Slack),
            _ => Err(PolicyError::UnsupportedTargetType),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Http => "http",
            TargetKind::Slack => "slack",
        }
    }
}

impl PayloadFormat {
    /// `""` or `"Default"` → Default, `"CloudEvents"` → CloudEvents (exact case, as Harbor).
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "" | "Default" => Ok(PayloadFormat::Default),
            "CloudEvents" => Ok(PayloadFormat::CloudEvents),
            other => Err(PolicyError::UnsupportedPayloadFormat(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Default => "Default",
            PayloadFormat::CloudEvents => "CloudEvents",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_format_parsing() {
        assert_eq!(TargetKind::parse("http"), Ok(TargetKind::Http));
        assert_eq!(TargetKind::parse("slack"), Ok(TargetKind::Slack));
        for bad in ["HTTP", "", "email"] {
            assert_eq!(
                TargetKind::parse(bad).map_err(|e| e.to_string()),
                Err("unsupported target type".to_owned())
            );
        }
        assert_eq!(PayloadFormat::parse(""), Ok(PayloadFormat::Default));
        assert_eq!(PayloadFormat::parse("Default"), Ok(PayloadFormat::Default));
        assert_eq!(
            PayloadFormat::parse("CloudEvents"),
            Ok(PayloadFormat::CloudEvents)
        );
        assert_eq!(
            PayloadFormat::parse("cloudevents").map_err(|e| e.to_string()),
            Err("unsupported payload format type: cloudevents".to_owned())
        );
        for kind in [TargetKind::Http, TargetKind::Slack] {
            assert_eq!(TargetKind::parse(kind.as_str()), Ok(kind));
        }
        for format in [PayloadFormat::Default, PayloadFormat::CloudEvents] {
            assert_eq!(PayloadFormat::parse(format.as_str()), Ok(format));
        }
    }

    #[test]
    fn event_types_parse_dedup_and_keep_order() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_event_types(&names(&["PULL_ARTIFACT", "PUSH_ARTIFACT", "PULL_ARTIFACT"])),
            Ok(vec![EventType::PullArtifact, EventType::PushArtifact])
        );
        assert_eq!(parse_event_types(&[]), Ok(vec![]));
        assert_eq!(
            parse_event_types(&names(&["PUSH_ARTIFACT", "push_artifact"]))
                .map_err(|e| e.to_string()),
            Err("unsupported event type push_artifact".to_owned())
        );
    }
}
