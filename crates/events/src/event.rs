//! The canonical registry event: Harbor's Default JSON, validated once at ingest and kept as the
//! exact text that was received.
//!
//! # Design constraints
//!
//! - The Default payload regrelay delivers is the event as received, byte for byte (SPEC §1:
//!   "unknown fields are kept"). So the event is stored as its JSON text, and the few fields we
//!   route and filter by are read out of it once; nothing re-serialises the event.
//! - Ingest is all or nothing: [`parse_harbor_body`] validates every element of an array before
//!   returning any of them, so the API never publishes half a request.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{EventError, InvalidReason};
use crate::event_type::EventType;
pub(crate) use crate::limits::MAX_OCCUR_AT;
pub use crate::limits::MAX_PROJECT_CHARS;

/// One registry event in Harbor's Default format, with the exact JSON text as received kept
/// (unknown fields and key order preserved, so the Default payload delivered is byte-for-byte
/// the event as received).
///
/// Serde: serialises as the received JSON itself and deserialises from any JSON object through
/// [`RegistryEvent::from_json`]'s validation, so it can travel inside a queue message unchanged.
#[derive(Clone, Debug)]
pub struct RegistryEvent {
    /// The event's JSON text, without surrounding whitespace: this *is* the Default payload.
    raw: Box<RawValue>,
    /// The exact text of `event_data`: the CloudEvents `data` and the Slack code block.
    event_data: Box<RawValue>,
    /// `type`, parsed; routing keys and policy matching use it.
    event_type: EventType,
    /// `occur_at`, unix seconds, within `0..=MAX_OCCUR_AT` so it always renders as a date.
    occur_at: i64,
    /// `operator`, "" when the event had none (Harbor always sends it, possibly empty).
    operator: String,
    /// The Harbor project the event belongs to; policies are scoped by it (SPEC §1 rules).
    project: String,
    /// The full repository name, for repository filters; `None` for events about no repository.
    repository: Option<String>,
    /// `resources[].tag`, for tag filters.
    tags: Vec<String>,
}

impl RegistryEvent {
    /// Parse one Default-format event object from its JSON text.
    ///
    /// Validates: must be an object; `type` a known type string; `occur_at` an integer (unix
    /// seconds); `operator` a string if present (missing is treated as ""); `event_data` an
    /// object; the project resolvable (SPEC §1). Unknown fields anywhere are allowed and kept.
    ///
    /// Whitespace around the object is not part of the event and is not kept in
    /// [`raw_json`](Self::raw_json).
    pub fn from_json(raw: &str) -> Result<RegistryEvent, EventError> {
        let raw: &RawValue = serde_json::from_str(raw).map_err(malformed)?;
        Self::from_raw(raw)
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// When the event happened, unix seconds.
    pub fn occur_at(&self) -> i64 {
        self.occur_at
    }

    /// Who caused the event; "" when Harbor (or the registry) did not say.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The Harbor project (namespace) the event belongs to.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Full repository name ("library/foo/bar") when the event has one (not for
    /// REPLICATION/TAG_RETENTION).
    pub fn repository(&self) -> Option<&str> {
        self.repository.as_deref()
    }

    /// Tags named by the event's resources (`resources[].tag`, skipping absent and empty ones).
    /// Harbor puts the digest in `tag` when an artifact has no tag, so a "tag" may be a digest.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The exact JSON text as received (what the Default format sends).
    pub fn raw_json(&self) -> &str {
        self.raw.get()
    }

    /// The exact JSON text of `event_data`.
    pub fn event_data_json(&self) -> &str {
        self.event_data.get()
    }

    /// The `event_data` as a raw JSON value, for renderers that embed it without re-serialising.
    pub(crate) fn event_data_raw(&self) -> &RawValue {
        &self.event_data
    }

    /// Validates one already well-formed JSON value. Errors carry no index; batch callers add it.
    pub(crate) fn from_raw(raw: &RawValue) -> Result<RegistryEvent, EventError> {
        let text = raw.get();
        // RawValue text starts at the value's first byte, so this tells objects from the rest
        // without parsing the value twice.
        if !text.starts_with('{') {
            return Err(EventError::invalid(InvalidReason::NotAnObject));
        }
        // Borrowed raw values: each field is looked at on its own, and only `event_data` is
        // parsed into a tree. A repeated key keeps its last value, as Harbor's Go decoder does.
        let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(malformed)?;

        let event_type = {
            let ty: String = required(&fields, "type", "a string")?;
            ty.parse::<EventType>()
                .map_err(|e| EventError::invalid(InvalidReason::UnknownEventType(e.0)))?
        };

        let occur_at: i64 = required(&fields, "occur_at", "an integer")?;
        if !(0..=MAX_OCCUR_AT).contains(&occur_at) {
            return Err(EventError::invalid(InvalidReason::OccurAtOutOfRange {
                value: occur_at,
            }));
        }

        let operator: String = match fields.get("operator") {
            None => String::new(),
            Some(v) => field_as(v, "operator", "a string")?,
        };

        let event_data_raw =
            *fields
                .get("event_data")
                .ok_or(EventError::invalid(InvalidReason::MissingField(
                    "event_data",
                )))?;
        let event_data: Value = serde_json::from_str(event_data_raw.get()).map_err(malformed)?;
        if !event_data.is_object() {
            return Err(EventError::invalid(InvalidReason::WrongType {
                field: "event_data",
                expected: "an object",
            }));
        }

        let project = resolve_project(event_type, &event_data)
            .and_then(|(project, field)| check_project(project, field))
            .map_err(EventError::invalid)?
            .to_owned();
        let repository = match event_type {
            EventType::Replication | EventType::TagRetention => None,
            _ => repository_name(&event_data),
        };
        let tags = event_data
            .get("resources")
            .and_then(Value::as_array)
            .map(|resources| {
                resources
                    .iter()
                    .filter_map(|r| non_empty_str(r.get("tag")))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();

        Ok(RegistryEvent {
            raw: raw.to_owned(),
            event_data: event_data_raw.to_owned(),
            event_type,
            occur_at,
            operator,
            project,
            repository,
            tags,
        })
    }
}

impl Serialize for RegistryEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RegistryEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        RegistryEvent::from_raw(&raw).map_err(de::Error::custom)
    }
}

/// Parse an ingest body in Harbor format: one object or a JSON array of objects.
///
/// All or nothing: every element is validated before returning; the first bad one gives an error
/// that names its index. An empty array is refused (nothing to accept). Each element keeps its
/// own exact raw text.
pub fn parse_harbor_body(body: &[u8]) -> Result<Vec<RegistryEvent>, EventError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| EventError::Malformed(format!("body is not UTF-8: {e}")))?;
    let top: &RawValue = serde_json::from_str(text).map_err(malformed)?;
    match top.get().as_bytes().first() {
        Some(b'{') => Ok(vec![RegistryEvent::from_raw(top)?]),
        Some(b'[') => {
            let elements: Vec<&RawValue> = serde_json::from_str(top.get()).map_err(malformed)?;
            if elements.is_empty() {
                return Err(EventError::invalid(InvalidReason::EmptyBatch));
            }
            elements
                .into_iter()
                .enumerate()
                .map(|(i, raw)| RegistryEvent::from_raw(raw).map_err(|e| e.at_index(i)))
                .collect()
        }
        _ => Err(EventError::Malformed(format!(
            "expected an event object or an array of event objects, found {}",
            json_kind(top.get())
        ))),
    }
}

fn malformed(e: serde_json::Error) -> EventError {
    EventError::Malformed(e.to_string())
}

/// A required top-level field, decoded as `T`.
fn required<T: serde::de::DeserializeOwned>(
    fields: &BTreeMap<String, &RawValue>,
    field: &'static str,
    expected: &'static str,
) -> Result<T, EventError> {
    let raw = fields
        .get(field)
        .ok_or(EventError::invalid(InvalidReason::MissingField(field)))?;
    field_as(raw, field, expected)
}

fn field_as<T: serde::de::DeserializeOwned>(
    raw: &RawValue,
    field: &'static str,
    expected: &'static str,
) -> Result<T, EventError> {
    serde_json::from_str(raw.get())
        .map_err(|_| EventError::invalid(InvalidReason::WrongType { field, expected }))
}

/// A project name as long as Harbor allows: at most [`MAX_PROJECT_CHARS`] characters. `field`
/// says where the name was found, for the message (which gives the length, not the name).
pub(crate) fn check_project<'a>(
    project: &'a str,
    field: &'static str,
) -> Result<&'a str, InvalidReason> {
    let chars = project.chars().count();
    if chars > MAX_PROJECT_CHARS {
        return Err(InvalidReason::ProjectTooLong { field, chars });
    }
    Ok(project)
}

/// The project an event belongs to, per SPEC §1, and the field it was read from.
fn resolve_project(
    event_type: EventType,
    data: &Value,
) -> Result<(&str, &'static str), InvalidReason> {
    let at = |pointer: &str, field: &'static str| {
        non_empty_str(data.pointer(pointer))
            .map(|project| (project, field))
            .ok_or(InvalidReason::MissingNamespace { field })
    };
    match event_type {
        EventType::TagRetention => at(
            "/retention/project_name",
            "event_data.retention.project_name",
        ),
        EventType::Replication => replication_project(data),
        _ => at("/repository/namespace", "event_data.repository.namespace"),
    }
}

/// A replication involves a remote registry and the local Harbor; the project is the local
/// side's namespace: `dest_resource` when Harbor pulled in, `src_resource` when it pushed out.
/// Harbor marks its own side `registry_type: "harbor"`. A Harbor-to-Harbor replication marks
/// both; in Harbor's documented example (seed 000) only the remote side has a `registry_name`
/// (a registry is named only when it is a configured endpoint), so a side without one is taken
/// as local, and failing that `dest_resource`.
fn replication_project(data: &Value) -> Result<(&str, &'static str), InvalidReason> {
    let replication = data
        .get("replication")
        .ok_or(InvalidReason::MissingNamespace {
            field: "event_data.replication",
        })?;
    let is_harbor =
        |side: &Value| side.get("registry_type").and_then(Value::as_str) == Some("harbor");
    let dest = replication.get("dest_resource").filter(|s| is_harbor(s));
    let src = replication.get("src_resource").filter(|s| is_harbor(s));
    let (side, field) = match (dest, src) {
        (Some(dest), Some(src))
            if dest.get("registry_name").is_some() && src.get("registry_name").is_none() =>
        {
            (src, "event_data.replication.src_resource.namespace")
        }
        (Some(dest), _) => (dest, "event_data.replication.dest_resource.namespace"),
        (None, Some(src)) => (src, "event_data.replication.src_resource.namespace"),
        (None, None) => return Err(InvalidReason::NoHarborReplicationSide),
    };
    non_empty_str(side.get("namespace"))
        .map(|project| (project, field))
        .ok_or(InvalidReason::MissingNamespace { field })
}

/// `repository.repo_full_name`, or `namespace/name` when a sender left the full name out.
fn repository_name(data: &Value) -> Option<String> {
    let repo = data.get("repository")?;
    if let Some(full) = non_empty_str(repo.get("repo_full_name")) {
        return Some(full.to_owned());
    }
    let namespace = non_empty_str(repo.get("namespace"))?;
    let name = non_empty_str(repo.get("name"))?;
    Some(format!("{namespace}/{name}"))
}

/// A string value that says something: absent, non-string and "" all count as missing.
fn non_empty_str(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The JSON kind of a well-formed value, from its first byte, for error messages.
fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replication(src: &str, dest: &str) -> String {
        format!(
            r#"{{"type":"REPLICATION","occur_at":1,"operator":"MANUAL","event_data":{{"replication":{{"src_resource":{src},"dest_resource":{dest}}}}}}}"#
        )
    }

    #[test]
    fn replication_project_is_the_local_harbor_side() {
        let cases = [
            // Pull-based: remote Docker Hub into the local Harbor.
            (
                r#"{"registry_name":"hub","registry_type":"docker-hub","namespace":"library"}"#,
                r#"{"registry_type":"harbor","namespace":"mine"}"#,
                "mine",
            ),
            // Push-based: the local Harbor out to a remote registry.
            (
                r#"{"registry_type":"harbor","namespace":"mine"}"#,
                r#"{"registry_name":"ecr","registry_type":"aws-ecr","namespace":"theirs"}"#,
                "mine",
            ),
            // Harbor to Harbor: the side without registry_name is the local one.
            (
                r#"{"registry_type":"harbor","namespace":"mine"}"#,
                r#"{"registry_name":"other","registry_type":"harbor","namespace":"theirs"}"#,
                "mine",
            ),
            (
                r#"{"registry_name":"other","registry_type":"harbor","namespace":"theirs"}"#,
                r#"{"registry_type":"harbor","namespace":"mine"}"#,
                "mine",
            ),
        ];
        for (src, dest, want) in cases {
            let event = RegistryEvent::from_json(&replication(src, dest)).unwrap();
            assert_eq!(event.project(), want, "src {src} dest {dest}");
            assert_eq!(event.repository(), None);
            assert!(event.tags().is_empty());
        }
    }

    #[test]
    fn replication_with_empty_local_namespace_names_the_field() {
        let err = RegistryEvent::from_json(&replication(
            r#"{"registry_type":"docker-hub","namespace":"x"}"#,
            r#"{"registry_type":"harbor","namespace":""}"#,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot tell the event's project: missing event_data.replication.dest_resource.namespace"
        );
    }

    #[test]
    fn repository_falls_back_to_namespace_and_name() {
        let event = RegistryEvent::from_json(
            r#"{"type":"PUSH_ARTIFACT","occur_at":1,"event_data":{"repository":{"name":"foo/bar","namespace":"library"}}}"#,
        )
        .unwrap();
        assert_eq!(event.repository(), Some("library/foo/bar"));
        assert_eq!(event.operator(), "");
    }

    #[test]
    fn occur_at_bounds() {
        let at = |occur_at: &str| {
            RegistryEvent::from_json(&format!(
                r#"{{"type":"PUSH_ARTIFACT","occur_at":{occur_at},"event_data":{{"repository":{{"namespace":"p"}}}}}}"#
            ))
        };
        assert!(at("0").is_ok());
        assert!(at("253402300799").is_ok());
        for bad in ["-1", "253402300800", "1680501893000"] {
            let err = at(bad).unwrap_err();
            assert!(!err.is_malformed());
            assert!(err.to_string().contains("unix seconds"), "{err}");
        }
        // Not an integer at all.
        for bad in [
            "1.5",
            "\"1680501893\"",
            "null",
            "1e9",
            "99999999999999999999",
        ] {
            let err = at(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "field `occur_at` must be an integer",
                "{bad}"
            );
        }
    }

    #[test]
    fn project_names_up_to_harbors_limit() {
        let push = |project: &str| {
            RegistryEvent::from_json(&format!(
                r#"{{"type":"PUSH_ARTIFACT","occur_at":1,"event_data":{{"repository":{{"namespace":"{project}"}}}}}}"#
            ))
        };
        let retention = |project: &str| {
            RegistryEvent::from_json(&format!(
                r#"{{"type":"TAG_RETENTION","occur_at":1,"event_data":{{"retention":{{"project_name":"{project}"}}}}}}"#
            ))
        };
        let longest = "p".repeat(MAX_PROJECT_CHARS);
        assert_eq!(push(&longest).unwrap().project(), longest);
        assert_eq!(retention(&longest).unwrap().project(), longest);
        // Characters, not bytes: 255 multi-byte characters are as long as Harbor allows.
        let wide = "\u{e9}".repeat(MAX_PROJECT_CHARS);
        assert_eq!(push(&wide).unwrap().project(), wide);

        let over = "p".repeat(MAX_PROJECT_CHARS + 1);
        let err = push(&over).unwrap_err();
        assert!(!err.is_malformed());
        assert_eq!(
            err.to_string(),
            "project name (event_data.repository.namespace) is 256 characters long; at most 255 are allowed"
        );
        let err = retention(&over).unwrap_err();
        assert!(
            err.to_string()
                .contains("event_data.retention.project_name"),
            "{err}"
        );
        let err = RegistryEvent::from_json(&replication(
            r#"{"registry_type":"docker-hub","namespace":"x"}"#,
            &format!(r#"{{"registry_type":"harbor","namespace":"{over}"}}"#),
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("event_data.replication.dest_resource.namespace"),
            "{err}"
        );
    }

    #[test]
    fn serde_round_trips_the_raw_text() {
        let text = r#"{"type":"PULL_ARTIFACT", "occur_at":7,"x":[1, 2],"event_data":{"repository":{"namespace":"p"}}}"#;
        #[derive(Serialize, Deserialize)]
        struct Wrapper {
            event: RegistryEvent,
        }
        let event = RegistryEvent::from_json(text).unwrap();
        let wrapped = serde_json::to_string(&Wrapper { event }).unwrap();
        assert_eq!(wrapped, format!(r#"{{"event":{text}}}"#));

        let back: Wrapper = serde_json::from_str(&wrapped).unwrap();
        assert_eq!(back.event.raw_json(), text);

        let bad = serde_json::from_str::<Wrapper>(r#"{"event":{"type":"NOPE"}}"#);
        assert!(bad.is_err());
    }
}
