//! CNCF Distribution notification envelopes, shaped as the registry sends them.

use regrelay_events::distribution::{parse_envelope, DistributionOutcome, IgnoreReason};
use regrelay_events::{EventError, EventType, RegistryEvent};
use serde_json::{json, Value};

const DIGEST: &str = "sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d5";

/// The `request`, `actor` and `source` blocks every event carries.
fn event(id: &str, action: &str, target: Value) -> Value {
    json!({
        "id": id,
        "timestamp": "2016-03-09T14:44:26.402973972-08:00",
        "action": action,
        "target": target,
        "request": {
            "id": "asdfasdf",
            "addr": "client.local",
            "host": "registrycluster.local",
            "method": "PUT",
            "useragent": "test/0.1"
        },
        "actor": { "name": "test-actor" },
        "source": { "addr": "hostname.local:port", "instanceID": "b2c1e7a4-5a0e-4c2d-9f3e-1d2c3b4a5f60" }
    })
}

fn manifest_push() -> Value {
    event(
        "push-0",
        "push",
        json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 708,
            "digest": DIGEST,
            "length": 708,
            "repository": "library/test",
            "url": format!("http://example.com/v2/library/test/manifests/{DIGEST}"),
            "tag": "latest"
        }),
    )
}

fn pull_by_digest() -> Value {
    let mut pull = event(
        "pull-0",
        "pull",
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 708,
            "digest": DIGEST,
            "length": 708,
            "repository": "team/app",
            "url": format!("https://registry.example.com:5000/v2/team/app/manifests/{DIGEST}")
        }),
    );
    pull["request"]["method"] = json!("GET");
    pull
}

fn manifest_delete() -> Value {
    // Distribution's delete event: repository and digest only, no mediaType, url or tag.
    let mut delete = event(
        "delete-0",
        "delete",
        json!({ "digest": DIGEST, "repository": "library/test" }),
    );
    delete["request"]["method"] = json!("DELETE");
    delete["actor"] = json!({});
    delete
}

fn blob_push() -> Value {
    event(
        "blob-0",
        "push",
        json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 2802957,
            "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
            "length": 2802957,
            "repository": "library/test",
            "url": "http://example.com/v2/library/test/blobs/sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
        }),
    )
}

fn blob_mount() -> Value {
    event(
        "mount-0",
        "mount",
        json!({
            "mediaType": "application/octet-stream",
            "size": 2802957,
            "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
            "length": 2802957,
            "repository": "library/copy",
            "fromRepository": "library/test",
            "url": "http://example.com/v2/library/copy/blobs/sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
        }),
    )
}

fn envelope(events: &[Value]) -> Vec<u8> {
    json!({ "events": events }).to_string().into_bytes()
}

fn one(body: &[u8]) -> DistributionOutcome {
    let mut outcomes = parse_envelope(body).unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

fn expect_event(outcome: DistributionOutcome) -> (String, RegistryEvent) {
    match outcome {
        DistributionOutcome::Event { source_id, event } => (source_id, event),
        other => panic!("expected an event, got {other:?}"),
    }
}

fn expect_ignored(outcome: DistributionOutcome) -> (String, String, IgnoreReason) {
    match outcome {
        DistributionOutcome::Ignored {
            source_id,
            action,
            reason,
        } => (source_id, action, reason),
        other => panic!("expected ignored, got {other:?}"),
    }
}

fn default_json(event: &RegistryEvent) -> Value {
    serde_json::from_str(event.raw_json()).unwrap()
}

#[test]
fn the_registrys_own_example_envelope() {
    // The example envelope as the registry sends it, byte for byte.
    let body = br#"{"events":[{"id":"asdf-asdf-asdf-asdf-0","timestamp":"2006-01-02T15:04:05Z","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:0123456789abcdef0","length":1,"repository":"library/test","url":"http://example.com/v2/library/test/manifests/sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d5","tag":"latest"},"request":{"id":"asdfasdf","addr":"client.local","host":"registrycluster.local","method":"PUT","useragent":"test/0.1"},"actor":{"name":"test-actor"},"source":{"addr":"hostname.local:port","instanceID":"..."}}]}"#;
    let (source_id, event) = expect_event(one(body));
    assert_eq!(source_id, "asdf-asdf-asdf-asdf-0");
    assert_eq!(event.occur_at(), 1136214245);
    assert_eq!(
        default_json(&event),
        json!({
            "type": "PUSH_ARTIFACT",
            "occur_at": 1136214245,
            "operator": "test-actor",
            "event_data": {
                "resources": [{
                    "digest": "sha256:0123456789abcdef0",
                    "tag": "latest",
                    "resource_url": "example.com/library/test:latest"
                }],
                "repository": {
                    "name": "test",
                    "namespace": "library",
                    "repo_full_name": "library/test",
                    "repo_type": "private"
                }
            }
        })
    );
    // Key order of the built event follows Harbor's.
    assert!(event
        .raw_json()
        .starts_with(r#"{"type":"PUSH_ARTIFACT","occur_at":1136214245,"operator":"test-actor","event_data":{"resources":[{"digest":"#));
}

#[test]
fn manifest_push_with_a_tag() {
    let (source_id, event) = expect_event(one(&envelope(&[manifest_push()])));
    assert_eq!(source_id, "push-0");
    assert_eq!(event.event_type(), EventType::PushArtifact);
    // Nanoseconds dropped, offset applied: 2016-03-09T22:44:26Z.
    assert_eq!(event.occur_at(), 1457563466);
    assert_eq!(event.operator(), "test-actor");
    assert_eq!(event.project(), "library");
    assert_eq!(event.repository(), Some("library/test"));
    assert_eq!(event.tags(), ["latest"]);
    let data = default_json(&event);
    assert_eq!(
        data["event_data"]["resources"][0]["resource_url"],
        "example.com/library/test:latest"
    );
    assert_eq!(data["event_data"]["resources"][0]["digest"], DIGEST);
}

#[test]
fn pull_by_digest_uses_the_digest_as_tag() {
    let (_, event) = expect_event(one(&envelope(&[pull_by_digest()])));
    assert_eq!(event.event_type(), EventType::PullArtifact);
    assert_eq!(event.project(), "team");
    assert_eq!(event.tags(), [DIGEST]);
    let resource = &default_json(&event)["event_data"]["resources"][0];
    assert_eq!(resource["tag"], DIGEST);
    assert_eq!(
        resource["resource_url"],
        format!("registry.example.com:5000/team/app@{DIGEST}")
    );
}

#[test]
fn delete_with_a_digest_only() {
    let (source_id, event) = expect_event(one(&envelope(&[manifest_delete()])));
    assert_eq!(source_id, "delete-0");
    assert_eq!(event.event_type(), EventType::DeleteArtifact);
    assert_eq!(event.operator(), "", "actor without a name");
    assert_eq!(event.project(), "library");
    // No url: the host comes from the request.
    let resource = &default_json(&event)["event_data"]["resources"][0];
    assert_eq!(
        resource["resource_url"],
        format!("registrycluster.local/library/test@{DIGEST}")
    );
}

#[test]
fn resource_url_is_left_out_without_a_host() {
    let mut delete = manifest_delete();
    delete.as_object_mut().unwrap().remove("request");
    let (_, event) = expect_event(one(&envelope(&[delete])));
    let resource = &default_json(&event)["event_data"]["resources"][0];
    assert!(resource.get("resource_url").is_none(), "{resource}");
    assert_eq!(resource["digest"], DIGEST);
}

#[test]
fn ignored_events() {
    let tag_delete = event(
        "tagdel-0",
        "delete",
        json!({ "repository": "library/test", "tag": "latest" }),
    );
    let blob_pull = {
        let mut pull = blob_push();
        pull["id"] = json!("blobpull-0");
        pull["action"] = json!("pull");
        pull
    };
    let config_push = event(
        "config-0",
        "push",
        json!({
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:1234",
            "repository": "library/test"
        }),
    );
    let unknown = event("what-0", "rename", json!({ "repository": "library/test" }));
    let cases = [
        (blob_push(), "blob-0", "push", IgnoreReason::Blob),
        (blob_pull, "blobpull-0", "pull", IgnoreReason::Blob),
        (config_push, "config-0", "push", IgnoreReason::Blob),
        (blob_mount(), "mount-0", "mount", IgnoreReason::Mount),
        (
            tag_delete,
            "tagdel-0",
            "delete",
            IgnoreReason::DeleteWithoutDigest,
        ),
        (unknown, "what-0", "rename", IgnoreReason::UnknownAction),
    ];
    for (event, want_id, want_action, want_reason) in cases {
        let (source_id, action, reason) = expect_ignored(one(&envelope(&[event])));
        assert_eq!(source_id, want_id);
        assert_eq!(action, want_action, "{want_id}");
        assert_eq!(reason, want_reason, "{want_id}");
    }
}

#[test]
fn multi_event_envelope_keeps_order() {
    let body = envelope(&[
        blob_push(),
        blob_mount(),
        manifest_push(),
        pull_by_digest(),
        manifest_delete(),
    ]);
    let outcomes = parse_envelope(&body).unwrap();
    let summary: Vec<(String, Result<EventType, IgnoreReason>)> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            DistributionOutcome::Event { source_id, event } => (source_id, Ok(event.event_type())),
            DistributionOutcome::Ignored {
                source_id, reason, ..
            } => (source_id, Err(reason)),
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("blob-0".to_owned(), Err(IgnoreReason::Blob)),
            ("mount-0".to_owned(), Err(IgnoreReason::Mount)),
            ("push-0".to_owned(), Ok(EventType::PushArtifact)),
            ("pull-0".to_owned(), Ok(EventType::PullArtifact)),
            ("delete-0".to_owned(), Ok(EventType::DeleteArtifact)),
        ]
    );
}

#[test]
fn repository_names_map_to_namespace_and_name() {
    let cases = [
        ("alpine", "library", "alpine", "library/alpine"),
        ("library/test", "library", "test", "library/test"),
        ("team/app/api", "team", "app/api", "team/app/api"),
    ];
    for (repository, namespace, name, full) in cases {
        let mut push = manifest_push();
        push["target"]["repository"] = json!(repository);
        push["target"]["url"] = json!(format!(
            "https://reg.local/v2/{repository}/manifests/{DIGEST}"
        ));
        let (_, event) = expect_event(one(&envelope(&[push])));
        assert_eq!(event.project(), namespace, "{repository}");
        assert_eq!(event.repository(), Some(full), "{repository}");
        let data = default_json(&event);
        let repo = &data["event_data"]["repository"];
        assert_eq!(repo["namespace"], namespace);
        assert_eq!(repo["name"], name);
        assert_eq!(repo["repo_full_name"], full);
        assert_eq!(repo["repo_type"], "private");
        // The URL is the registry's real, pullable path.
        assert_eq!(
            data["event_data"]["resources"][0]["resource_url"],
            format!("reg.local/{repository}:latest")
        );
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let mut push = manifest_push();
    push["target"]["references"] = json!([{ "digest": "sha256:1", "mediaType": "x" }]);
    push["target"]["annotations"] = json!({ "a": "b" });
    push["extra"] = json!(42);
    let body = json!({ "events": [push], "envelopeExtra": true }).to_string();
    let (_, event) = expect_event(one(body.as_bytes()));
    assert_eq!(event.event_type(), EventType::PushArtifact);
}

#[test]
fn empty_envelope_is_accepted_as_nothing() {
    assert!(parse_envelope(br#"{"events":[]}"#).unwrap().is_empty());
}

#[test]
fn bad_envelopes() {
    let without = |field: &str| {
        let mut push = manifest_push();
        push.as_object_mut().unwrap().remove(field);
        push
    };
    let without_repository = {
        let mut push = manifest_push();
        push["target"].as_object_mut().unwrap().remove("repository");
        push
    };
    let bad_timestamp = {
        let mut push = manifest_push();
        push["timestamp"] = json!("yesterday");
        push
    };
    let malformed: [(&str, Vec<u8>); 5] = [
        ("not JSON", b"events: []".to_vec()),
        ("missing events key", br#"{"event":[]}"#.to_vec()),
        ("events not an array", br#"{"events":{}}"#.to_vec()),
        ("an array at the top", b"[]".to_vec()),
        ("truncated", br#"{"events":[{"id":"x""#.to_vec()),
    ];
    for (name, body) in malformed {
        let err = parse_envelope(&body).unwrap_err();
        assert!(err.is_malformed(), "{name}: {err}");
    }

    let invalid = [
        (
            "missing timestamp",
            without("timestamp"),
            "event 1: missing field `timestamp`",
        ),
        ("missing id", without("id"), "event 1: missing field `id`"),
        (
            "missing action",
            without("action"),
            "event 1: missing field `action`",
        ),
        (
            "missing target",
            without("target"),
            "event 1: missing field `target`",
        ),
        (
            "missing target.repository",
            without_repository,
            "event 1: missing field `target.repository`",
        ),
        (
            "bad timestamp",
            bad_timestamp,
            "event 1: field `timestamp` must be an RFC 3339 date-time",
        ),
        (
            "not an object",
            json!("push"),
            "event 1: an event must be a JSON object",
        ),
    ];
    for (name, bad, message) in invalid {
        // A good event first, so the error must name index 1 and nothing is half-accepted.
        let body = envelope(&[manifest_push(), bad]);
        let err = parse_envelope(&body).unwrap_err();
        match &err {
            EventError::Invalid { index, .. } => assert_eq!(*index, Some(1), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(err.to_string(), message, "{name}");
    }
}
