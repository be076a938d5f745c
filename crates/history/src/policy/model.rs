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

/// How a target is called: a generic HTTP endpoint, a Slack incoming webhook (Harbor's two), or
/// one of regrelay's chat and templated types (`regrelay_targets`, one file and one table row
/// each: this enum names them through [`Vendor`](TargetKind::Vendor) and never lists them).
///
/// Stored and sent as its `type` string (`"http"`, `"slack"`, `"telegram"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    Http,
    Slack,
    Vendor(regrelay_targets::TargetKind),
}

impl Serialize for TargetKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TargetKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TargetKind::parse(&name)
            .map_err(|_| serde::de::Error::custom(format!("unknown target type {name:?}")))
    }
}

/// The settings only regrelay's own types use (`regrelay_targets::TargetSettings`), plus the
/// `rate_limit` any type may set. Flattened into the target's JSON, stored and on the wire; all
/// absent for Harbor's types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOptions {
    /// Telegram: the bot's token. A credential (sealed at rest, write-only in the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<String>,
    /// Telegram: the chat, a number or `@channelname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// Telegram: the forum topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    /// A custom message (chat types) or the body (`template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `template`: the body's `Content-Type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `template`: `POST`, `PUT` or `PATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Any type: `"20/min"`, `"5/s"`, replacing the type's built-in limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// Any type: the target gets no deliveries (set by `auto_disable_after`, or by a client); a
    /// write without it enables the target again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl TargetOptions {
    /// The names of the options that are set, for "not allowed for http" messages.
    pub fn present(&self) -> Vec<&'static str> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        [
            ("bot_token", set(&self.bot_token)),
            ("chat_id", set(&self.chat_id)),
            ("message_thread_id", self.message_thread_id.is_some()),
            ("template", set(&self.template)),
            ("content_type", set(&self.content_type)),
            ("method", set(&self.method)),
            ("rate_limit", set(&self.rate_limit)),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }
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
    /// The chat and template types' settings, and `rate_limit`.
    #[serde(flatten)]
    pub options: TargetOptions,
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
    /// Every kind, Harbor's first (metric label sets are pre-registered from it).
    pub fn all() -> impl Iterator<Item = TargetKind> {
        [TargetKind::Http, TargetKind::Slack]
            .into_iter()
            .chain(regrelay_targets::TargetKind::ALL.map(TargetKind::Vendor))
    }

    /// `"http"` or `"slack"`, as Harbor's API names them, or one of regrelay's types.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "http" => Ok(TargetKind::Http),
            "slack" => Ok(TargetKind::Slack),
            other => regrelay_targets::TargetKind::parse(other)
                .map(TargetKind::Vendor)
                .ok_or(PolicyError::UnsupportedTargetType),
        }
    }

    /// The `type` string (also the `target_type` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Http => "http",
            TargetKind::Slack => "slack",
            TargetKind::Vendor(kind) => kind.as_str(),
        }
    }

    /// The chat or templated type, when it is one.
    pub fn vendor(self) -> Option<regrelay_targets::TargetKind> {
        match self {
            TargetKind::Vendor(kind) => Some(kind),
            TargetKind::Http | TargetKind::Slack => None,
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
        assert_eq!(
            TargetKind::parse("telegram"),
            Ok(TargetKind::Vendor(regrelay_targets::TargetKind::Telegram))
        );
        for kind in TargetKind::all() {
            assert_eq!(TargetKind::parse(kind.as_str()), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<TargetKind>(&json).unwrap(), kind);
        }
        for bad in ["HTTP", "", "email", "Telegram"] {
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
