//! The body a target gets for an event (SPEC §2): Default, CloudEvents or Slack.
//!
//! The formats themselves live in `regrelay-events` (only `events` knows the payload formats);
//! this module picks one per target and pairs it with its `Content-Type`.

use regrelay_events::cloudevents::{self, CloudEventContext};
use regrelay_events::{slack, RegistryEvent};

/// `Content-Type` of the Default and Slack bodies.
pub(crate) const JSON: &str = "application/json";

/// Which body a target gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// The event JSON exactly as received.
    Default,
    /// A structured-mode CloudEvent (HTTP targets only).
    CloudEvents,
    /// Harbor's Slack Block Kit message.
    Slack,
}

/// A rendered body, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

/// Why an event cannot be rendered for a target. Not retryable: the same event renders the same
/// way every time, so the caller dead-letters it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    /// E.g. a legacy chart event for a CloudEvents target: chart events have no CloudEvents type.
    #[error(transparent)]
    CloudEvents(#[from] cloudevents::RenderError),
}

/// Renders `event` for a target of `kind`; `ctx` is used by CloudEvents only.
pub(crate) fn render_payload(
    event: &RegistryEvent,
    kind: PayloadKind,
    ctx: &CloudEventContext,
) -> Result<Rendered, RenderError> {
    Ok(match kind {
        PayloadKind::Default => Rendered {
            body: event.raw_json().as_bytes().to_vec(),
            content_type: JSON,
        },
        PayloadKind::CloudEvents => Rendered {
            body: cloudevents::render(event, ctx)?,
            content_type: cloudevents::CONTENT_TYPE,
        },
        PayloadKind::Slack => Rendered {
            body: slack::render(event),
            content_type: JSON,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &str = r#"{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"admin","x_unknown":[1, 2],"event_data":{"resources":[{"digest":"sha256:abc","tag":"v1","resource_url":"reg.local/lib/app:v1"}],"repository":{"name":"app","namespace":"lib","repo_full_name":"lib/app","repo_type":"private"}}}"#;
    const CHART: &str = r#"{"type":"UPLOAD_CHART","occur_at":1700000000,"operator":"admin","event_data":{"resources":[{"tag":"0.1.0","resource_url":"reg.local/chartrepo/lib/charts/demo-0.1.0.tgz"}],"repository":{"name":"demo","namespace":"lib","repo_type":"private"}}}"#;

    fn ctx() -> CloudEventContext {
        CloudEventContext {
            id: uuid::Uuid::from_u128(0x1234),
            project_id: 7,
            policy_id: 42,
            request_id: "req-1".into(),
        }
    }

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn default_is_the_event_as_received() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let rendered = render_payload(&event, PayloadKind::Default, &ctx()).unwrap();
        assert_eq!(
            rendered.body,
            PUSH.as_bytes(),
            "byte for byte, unknown fields kept"
        );
        assert_eq!(rendered.content_type, "application/json");
    }

    #[test]
    fn cloudevents_is_a_structured_event() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let rendered = render_payload(&event, PayloadKind::CloudEvents, &ctx()).unwrap();
        assert_eq!(rendered.content_type, "application/cloudevents+json");
        let body = json(&rendered.body);
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], "00000000-0000-0000-0000-000000001234");
        assert_eq!(body["source"], "/projects/7/webhook/policies/42");
        assert_eq!(body["type"], "harbor.artifact.pushed");
        assert_eq!(body["data"]["repository"]["namespace"], "lib");
        assert_eq!(body["requestid"], "req-1");
    }

    #[test]
    fn slack_is_a_block_kit_message() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let rendered = render_payload(&event, PayloadKind::Slack, &ctx()).unwrap();
        assert_eq!(rendered.content_type, "application/json");
        assert_eq!(json(&rendered.body)["blocks"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn legacy_chart_events_have_no_cloudevent_but_render_otherwise() {
        let event = RegistryEvent::from_json(CHART).unwrap();
        let error = render_payload(&event, PayloadKind::CloudEvents, &ctx()).unwrap_err();
        assert!(error.to_string().contains("UPLOAD_CHART"), "{error}");
        let default = render_payload(&event, PayloadKind::Default, &ctx()).unwrap();
        assert_eq!(default.body, CHART.as_bytes());
        assert!(render_payload(&event, PayloadKind::Slack, &ctx()).is_ok());
    }
}
