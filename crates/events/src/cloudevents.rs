//! CloudEvents 1.0 structured content mode (SPEC §2): one event per request, the whole event in
//! the JSON body, `Content-Type: application/cloudevents+json`, no `ce-*` headers.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::event::RegistryEvent;
use crate::event_type::EventType;

/// The `Content-Type` of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// What one delivery adds to the event: the attributes that are not in the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventContext {
    /// The CloudEvents `id`: one per delivery (policy × target), the same on every retry of it,
    /// so receivers can drop duplicates.
    pub id: uuid::Uuid,
    /// The numeric project id in `source`.
    pub project_id: i64,
    /// The numeric policy id in `source`.
    pub policy_id: i64,
    /// The `requestid` extension: the ingest request the event came in with, for tracing.
    pub request_id: String,
}

/// Why an event cannot be rendered as a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Legacy chart events have no CloudEvents type; they are delivered in Default format only.
    #[error(
        "event type {0} has no CloudEvents type; only the Default payload format can carry it"
    )]
    NotSupported(EventType),
    /// Serialising the body failed. It cannot for these attribute types, but the serializer's
    /// signature says it may, and we do not panic in library code.
    #[error("cannot serialise the CloudEvent")]
    Serialize(#[source] serde_json::Error),
}

/// The body, field for field. A struct rather than a map because serde writes struct fields in
/// declaration order, and the attribute order is part of the wire format we match.
#[derive(Serialize)]
struct StructuredEvent<'a> {
    specversion: &'static str,
    id: uuid::fmt::Hyphenated,
    source: String,
    #[serde(rename = "type")]
    ty: &'static str,
    datacontenttype: &'static str,
    time: String,
    /// `event_data` as received, embedded verbatim (no re-serialisation, unknown fields kept).
    data: &'a RawValue,
    operator: &'a str,
    requestid: &'a str,
}

/// Renders the event as a structured-mode CloudEvent JSON body.
///
/// Attributes in exactly this order: `specversion` "1.0", `id`, `source`
/// "/projects/{project_id}/webhook/policies/{policy_id}", `type`, `datacontenttype`
/// "application/json", `time` (RFC 3339 UTC, seconds precision, from `occur_at`), `data`
/// (= `event_data` exactly as received), `operator`, `requestid`.
pub fn render(event: &RegistryEvent, ctx: &CloudEventContext) -> Result<Vec<u8>, RenderError> {
    let event_type = event.event_type();
    let ty = event_type
        .cloudevents_type()
        .ok_or(RenderError::NotSupported(event_type))?;
    let body = StructuredEvent {
        specversion: "1.0",
        id: ctx.id.hyphenated(),
        source: format!(
            "/projects/{}/webhook/policies/{}",
            ctx.project_id, ctx.policy_id
        ),
        ty,
        datacontenttype: "application/json",
        time: crate::time::rfc3339(event.occur_at()),
        data: event.event_data_raw(),
        operator: event.operator(),
        requestid: &ctx.request_id,
    };
    serde_json::to_vec(&body).map_err(RenderError::Serialize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_events_are_not_supported() {
        let event = RegistryEvent::from_json(
            r#"{"type":"DELETE_CHART","occur_at":1,"operator":"a","event_data":{"repository":{"namespace":"library"}}}"#,
        )
        .unwrap();
        let ctx = CloudEventContext {
            id: uuid::Uuid::nil(),
            project_id: 1,
            policy_id: 1,
            request_id: String::new(),
        };
        let err = render(&event, &ctx).unwrap_err();
        assert!(matches!(
            err,
            RenderError::NotSupported(EventType::DeleteChart)
        ));
        assert_eq!(
            err.to_string(),
            "event type DELETE_CHART has no CloudEvents type; only the Default payload format can carry it"
        );
    }

    #[test]
    fn renders_compact_in_order_with_data_verbatim() {
        let event = RegistryEvent::from_json(
            r#"{"type":"PUSH_ARTIFACT","occur_at":1680501893,"operator":"admin","event_data":{"z": 1,"repository":{"namespace":"library"}}}"#,
        )
        .unwrap();
        let ctx = CloudEventContext {
            id: uuid::Uuid::parse_str("66e18103-09c1-41f6-982f-37df223f3eeb").unwrap(),
            project_id: 2,
            policy_id: 15,
            request_id: "req-1".into(),
        };
        let body = String::from_utf8(render(&event, &ctx).unwrap()).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"specversion":"1.0","id":"66e18103-09c1-41f6-982f-37df223f3eeb","#,
                r#""source":"/projects/2/webhook/policies/15","type":"harbor.artifact.pushed","#,
                r#""datacontenttype":"application/json","time":"2023-04-03T06:04:53Z","#,
                r#""data":{"z": 1,"repository":{"namespace":"library"}},"#,
                r#""operator":"admin","requestid":"req-1"}"#
            )
        );
    }
}
