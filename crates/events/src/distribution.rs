//! CNCF Distribution notifications (SPEC §1): the `{"events":[...]}` envelope every
//! Distribution-based registry sends, turned into Harbor Default events.
//!
//! # Design constraints
//!
//! - The registry retries a refused envelope forever, in order, from memory: one event we refuse
//!   stalls all its later notifications. So only an envelope we cannot read at all, or an event
//!   without the fields every registry sends (`id`, `timestamp`, `action`,
//!   `target.repository`), is refused; anything readable that is not an artifact event is
//!   [`DistributionOutcome::Ignored`] with a reason, and accepted.
//! - The event we build is Harbor's Default JSON and goes through
//!   [`RegistryEvent::from_json`] like any other, so the rest of regrelay sees one event model.

use std::fmt;

use chrono::DateTime;
use serde_json::{json, Map, Value};

use crate::error::{EventError, InvalidReason};
use crate::event::RegistryEvent;
use crate::event_type::EventType;

/// Media type of Distribution's notification envelope, version 1.
pub const MEDIA_TYPE_V1: &str = "application/vnd.docker.distribution.events.v1+json";
/// Media type of Distribution's notification envelope, version 2 (same envelope shape).
pub const MEDIA_TYPE_V2: &str = "application/vnd.docker.distribution.events.v2+json";

/// What became of one event in an envelope.
#[derive(Debug, Clone)]
pub enum DistributionOutcome {
    /// Became a registry event. `source_id` is the registry's own event id (stable across the
    /// registry's resends).
    Event {
        source_id: String,
        event: RegistryEvent,
    },
    /// Not an artifact event, and why.
    Ignored {
        source_id: String,
        action: String,
        reason: IgnoreReason,
    },
}

/// Why a Distribution event is not an artifact event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// A push, pull or delete of a blob (layer or config), or of a target not recognisable as a
    /// manifest: Harbor sends no webhook for those.
    Blob,
    /// A cross-repository blob mount: a blob, and no new artifact.
    Mount,
    /// A delete with no digest (newer registries send one when only a tag is removed): it
    /// names no artifact.
    DeleteWithoutDigest,
    /// An action other than push, pull, mount and delete.
    UnknownAction,
}

impl IgnoreReason {
    /// A short, fixed name, safe to use as a metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::Blob => "blob",
            IgnoreReason::Mount => "mount",
            IgnoreReason::DeleteWithoutDigest => "delete_without_digest",
            IgnoreReason::UnknownAction => "unknown_action",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IgnoreReason::Blob => "a blob event, not an artifact event",
            IgnoreReason::Mount => "a blob mount, not an artifact event",
            IgnoreReason::DeleteWithoutDigest => "a delete without a digest names no artifact",
            IgnoreReason::UnknownAction => "an unknown action",
        })
    }
}

/// Parse `{"events":[...]}` (one or many events).
///
/// Malformed JSON, or no `events` array → [`EventError::Malformed`]; an event missing a required
/// field (`id`, `timestamp`, `action`, `target.repository`) or with an unreadable timestamp →
/// [`EventError::Invalid`] naming its index. All or nothing, like Harbor bodies. An empty
/// `events` array is not an error here: the registry sent nothing to act on and must not retry.
pub fn parse_envelope(body: &[u8]) -> Result<Vec<DistributionOutcome>, EventError> {
    let envelope: Value =
        serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
    let events = envelope
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            EventError::Malformed(
                "expected a Distribution notification envelope: an object with an `events` array"
                    .to_owned(),
            )
        })?;
    events
        .iter()
        .enumerate()
        .map(|(i, event)| convert(event).map_err(|e| e.at_index(i)))
        .collect()
}

/// How a target is classified; Distribution only notifies about manifests and blobs.
#[derive(Debug, PartialEq, Eq)]
enum TargetKind {
    Manifest,
    Blob,
}

fn convert(event: &Value) -> Result<DistributionOutcome, EventError> {
    let event = event
        .as_object()
        .ok_or(EventError::invalid(InvalidReason::NotAnObject))?;
    let source_id = required_str(event.get("id"), "id")?.to_owned();
    let timestamp = required_str(event.get("timestamp"), "timestamp")?;
    let action = required_str(event.get("action"), "action")?;
    let target = event
        .get("target")
        .ok_or(EventError::invalid(InvalidReason::MissingField("target")))?
        .as_object()
        .ok_or(EventError::invalid(InvalidReason::WrongType {
            field: "target",
            expected: "an object",
        }))?;
    let repository = required_str(target.get("repository"), "target.repository")?;
    let occur_at = DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| {
            EventError::invalid(InvalidReason::WrongType {
                field: "timestamp",
                expected: "an RFC 3339 date-time",
            })
        })?
        .timestamp();

    let digest = opt_str(target.get("digest"));
    let ignored = |reason| {
        Ok(DistributionOutcome::Ignored {
            source_id: source_id.clone(),
            action: action.to_owned(),
            reason,
        })
    };
    let event_type = match (action, classify(target)) {
        ("mount", _) => return ignored(IgnoreReason::Mount),
        ("push" | "pull" | "delete", TargetKind::Blob) => return ignored(IgnoreReason::Blob),
        ("push", TargetKind::Manifest) => EventType::PushArtifact,
        ("pull", TargetKind::Manifest) => EventType::PullArtifact,
        // Distribution's manifest delete carries only the repository and the digest (no media
        // type, no url), exactly like its blob delete, so a delete with a digest is taken as an
        // artifact delete unless the target says it is a blob.
        ("delete", TargetKind::Manifest) if digest.is_some() => EventType::DeleteArtifact,
        ("delete", TargetKind::Manifest) => return ignored(IgnoreReason::DeleteWithoutDigest),
        _ => return ignored(IgnoreReason::UnknownAction),
    };

    let operator = event
        .get("actor")
        .and_then(|a| opt_str(a.get("name")))
        .unwrap_or("");
    let host = target
        .get("url")
        .and_then(Value::as_str)
        .and_then(url_authority)
        .or_else(|| event.get("request").and_then(|r| opt_str(r.get("host"))));
    let tag = opt_str(target.get("tag"));

    // Checked here too, so the message names the field the registry sent.
    let (namespace, _) = split_repository(repository);
    crate::event::check_project(namespace, "first segment of target.repository")
        .map_err(EventError::invalid)?;
    let default_json = harbor_default(
        event_type, occur_at, operator, repository, digest, tag, host,
    );
    let event = RegistryEvent::from_json(&default_json)?;
    Ok(DistributionOutcome::Event { source_id, event })
}

/// Manifest or blob. The url path is the surest sign (`/v2/<name>/manifests/<ref>` or
/// `/v2/<name>/blobs/<digest>`), then the media type. A target that says neither (a delete)
/// counts as a manifest when it has a tag or no media type at all, since blobs never have tags
/// and blob media types are always sent with blob pushes and pulls.
fn classify(target: &Map<String, Value>) -> TargetKind {
    let url = opt_str(target.get("url")).unwrap_or("");
    if url.contains("/manifests/") {
        return TargetKind::Manifest;
    }
    if url.contains("/blobs/") {
        return TargetKind::Blob;
    }
    match opt_str(target.get("mediaType")) {
        Some(media_type) if is_manifest_media_type(media_type) => TargetKind::Manifest,
        Some(_) if opt_str(target.get("tag")).is_some() => TargetKind::Manifest,
        Some(_) => TargetKind::Blob,
        None => TargetKind::Manifest,
    }
}

/// Docker and OCI manifest and index media types (`...manifest.v2+json`,
/// `...manifest.list.v2+json`, `...manifest.v1+prettyjws`, `...image.manifest.v1+json`,
/// `...image.index.v1+json`). Layers (`...layer...`, `application/octet-stream`) and configs
/// (`...container.image.v1+json`, `...image.config.v1+json`) are blobs.
fn is_manifest_media_type(media_type: &str) -> bool {
    let media_type = media_type.to_ascii_lowercase();
    media_type.contains("manifest") || media_type.contains("image.index")
}

/// The Harbor Default JSON for an artifact event from a Distribution registry.
fn harbor_default(
    event_type: EventType,
    occur_at: i64,
    operator: &str,
    repository: &str,
    digest: Option<&str>,
    tag: Option<&str>,
    host: Option<&str>,
) -> String {
    let (namespace, name) = split_repository(repository);

    let mut resource = Map::new();
    if let Some(digest) = digest {
        resource.insert("digest".into(), json!(digest));
    }
    // As Harbor does: an artifact pulled or pushed by digest has the digest as its "tag".
    let reference = tag.map(|t| (':', t)).or(digest.map(|d| ('@', d)));
    if let Some((_, tag_or_digest)) = reference {
        resource.insert("tag".into(), json!(tag_or_digest));
    }
    // No scheme, as in Harbor; the path is the registry's own, so the URL stays pullable.
    if let (Some(host), Some((sep, reference))) = (host, reference) {
        resource.insert(
            "resource_url".into(),
            json!(format!("{host}/{repository}{sep}{reference}")),
        );
    }

    json!({
        "type": event_type.as_str(),
        "occur_at": occur_at,
        "operator": operator,
        "event_data": {
            "resources": [resource],
            "repository": {
                "name": name,
                "namespace": namespace,
                "repo_full_name": format!("{namespace}/{name}"),
                // Distribution has no notion of public or private repositories; "private" is
                // the safe claim, and receivers that care can look the project up.
                "repo_type": "private",
            },
        },
    })
    .to_string()
}

/// `(namespace, name)` of a repository: Harbor names a repository `<project>/<rest>`; a plain
/// registry's `alpine` is Docker Hub's `library/alpine`, so that is the project Harbor users would
/// expect.
fn split_repository(repository: &str) -> (&str, &str) {
    repository
        .split_once('/')
        .unwrap_or(("library", repository))
}

/// The `host[:port]` of an absolute URL, without any `user:password@`.
fn url_authority(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(host).filter(|h| !h.is_empty())
}

fn required_str<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a str, EventError> {
    match value {
        None | Some(Value::Null) => Err(EventError::invalid(InvalidReason::MissingField(field))),
        Some(v) => v
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(EventError::invalid(InvalidReason::WrongType {
                field,
                expected: "a non-empty string",
            })),
    }
}

fn opt_str(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority() {
        let cases = [
            (
                "http://example.com/v2/library/test/manifests/x",
                Some("example.com"),
            ),
            (
                "https://reg.local:5000/v2/a/blobs/x",
                Some("reg.local:5000"),
            ),
            ("https://user:pw@reg.local/v2/", Some("reg.local")),
            ("https://reg.local", Some("reg.local")),
            ("https://reg.local?x", Some("reg.local")),
            ("/v2/a/manifests/x", None),
            ("http:///v2", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_authority(url), want, "{url}");
        }
    }

    #[test]
    fn namespace_up_to_harbors_project_limit() {
        let push = |repository: &str| {
            let body = json!({"events": [{
                "id": "e1",
                "timestamp": "2023-04-03T06:04:53Z",
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:00",
                    "repository": repository,
                    "tag": "v1",
                },
            }]});
            parse_envelope(body.to_string().as_bytes())
        };
        let longest = "n".repeat(crate::event::MAX_PROJECT_CHARS);
        match push(&format!("{longest}/app")).unwrap().as_slice() {
            [DistributionOutcome::Event { event, .. }] => assert_eq!(event.project(), longest),
            other => panic!("{other:?}"),
        }
        let err = push(&format!("{longest}n/app")).unwrap_err();
        assert!(!err.is_malformed());
        assert_eq!(
            err.to_string(),
            "event 0: project name (first segment of target.repository) is 256 characters long; at most 255 are allowed"
        );
    }

    #[test]
    fn manifest_media_types() {
        let cases = [
            ("application/vnd.docker.distribution.manifest.v2+json", true),
            (
                "application/vnd.docker.distribution.manifest.list.v2+json",
                true,
            ),
            (
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                true,
            ),
            ("application/vnd.oci.image.manifest.v1+json", true),
            ("application/vnd.oci.image.index.v1+json", true),
            ("application/octet-stream", false),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", false),
            ("application/vnd.oci.image.layer.v1.tar+gzip", false),
            ("application/vnd.docker.container.image.v1+json", false),
            ("application/vnd.oci.image.config.v1+json", false),
        ];
        for (media_type, want) in cases {
            assert_eq!(is_manifest_media_type(media_type), want, "{media_type}");
        }
    }

    #[test]
    fn ignore_reason_labels() {
        let cases = [
            (IgnoreReason::Blob, "blob"),
            (IgnoreReason::Mount, "mount"),
            (IgnoreReason::DeleteWithoutDigest, "delete_without_digest"),
            (IgnoreReason::UnknownAction, "unknown_action"),
        ];
        for (reason, label) in cases {
            assert_eq!(reason.as_str(), label);
            assert!(!reason.to_string().is_empty());
        }
    }
}
