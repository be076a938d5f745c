//! The wire contract of one event message on the events exchange.
//!
//! Design constraints:
//! - The body is the event's Default-format JSON exactly as received, so an operator reading a queue in
//!   the management UI sees the event itself, and the consumer sends it on without re-serialising.
//! - Everything else travels in AMQP properties and headers, versioned by [`SCHEMA_VERSION`]:
//!   `message_id` is the stable event id, `type` the event type, `timestamp` when regrelay accepted it,
//!   and the `x-regrelay-*` headers below. A consumer refuses (dead-letters) a version it does not know
//!   instead of guessing.
//! - Messages are persistent (`delivery_mode` 2) and published with `mandatory`, so an unroutable
//!   message comes back as an error instead of vanishing.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use regrelay_events::{EventType, RegistryEvent};
use uuid::Uuid;

/// Version of the message layout described in this module.
pub const SCHEMA_VERSION: i64 = 1;

/// Header names of an event message.
pub mod header {
    /// Layout version of the message ([`super::SCHEMA_VERSION`]).
    pub const SCHEMA: &str = "x-regrelay-schema";
    /// The event type, e.g. `PUSH_ARTIFACT` (also in the `type` property).
    pub const EVENT_TYPE: &str = "x-regrelay-event-type";
    /// The Harbor project (namespace) the event belongs to.
    pub const PROJECT: &str = "x-regrelay-project";
    /// Where the event came from: `harbor` (Default JSON) or `distribution` (a registry notification).
    pub const SOURCE: &str = "x-regrelay-source";
    /// The registry's own event id, for events mapped from a Distribution notification.
    pub const SOURCE_EVENT_ID: &str = "x-regrelay-source-event-id";
    /// The id of the ingest request that accepted the event (CloudEvents `requestid`).
    pub const REQUEST_ID: &str = "x-regrelay-request-id";
    /// The policy store's generation when the event was accepted: the consumer that matches the
    /// event first brings its policy copy at least this far (docs/delivery.md, "Policy changes").
    pub const POLICY_GENERATION: &str = "x-regrelay-policy-generation";
}

const CONTENT_TYPE: &str = "application/json";
const APP_ID: &str = "regrelay";
const PERSISTENT: u8 = 2;

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// Harbor's Default JSON, posted by Harbor itself or by any producer.
    Harbor,
    /// Mapped from a CNCF Distribution notification; `source_event_id` is the registry's event id.
    Distribution { source_event_id: String },
}

impl EventSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventSource::Harbor => "harbor",
            EventSource::Distribution { .. } => "distribution",
        }
    }
}

/// One accepted event with the metadata that travels with it through the broker.
#[derive(Debug, Clone)]
pub struct EventMessage {
    /// Stable event id: the AMQP `message_id`, the same wherever this event is redelivered.
    pub id: Uuid,
    pub event: RegistryEvent,
    pub source: EventSource,
    /// The ingest request that accepted the event.
    pub request_id: String,
    /// When regrelay accepted the event, in milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// The policy store's generation read after the event arrived (`None`: unknown, e.g. the
    /// store could not be read). The event is matched against that generation or a later one.
    pub policy_generation: Option<i64>,
}

/// Why a message from the broker is not a usable event message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no {0} header")]
    MissingHeader(&'static str),
    #[error("unknown schema version {0}; this regrelay understands version {SCHEMA_VERSION}")]
    UnknownSchema(i64),
    #[error("message has no message_id")]
    MissingId,
    #[error("message_id {0:?} is not a UUID")]
    BadId(String),
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is not a valid event: {0}")]
    BadEvent(#[from] regrelay_events::EventError),
}

impl EventMessage {
    /// A message for an event received just now.
    pub fn new(event: RegistryEvent, source: EventSource, request_id: impl Into<String>) -> Self {
        let id = match &source {
            // A registry resends a notification with the same event id until it is delivered; deriving our
            // id from it gives every resend the same id, so downstream receivers can drop the duplicates.
            EventSource::Distribution { source_event_id } => {
                Uuid::new_v5(&DISTRIBUTION_NAMESPACE, source_event_id.as_bytes())
            }
            EventSource::Harbor => Uuid::new_v4(),
        };
        let accepted_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            id,
            event,
            source,
            request_id: request_id.into(),
            accepted_at_ms,
            policy_generation: None,
        }
    }

    /// Stamps the policy generation the event must be matched against (at least).
    pub fn with_policy_generation(mut self, generation: Option<i64>) -> Self {
        self.policy_generation = generation;
        self
    }

    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    pub fn routing_key(&self) -> String {
        crate::topology::routing_key(self.event.event_type(), self.event.project())
    }

    pub fn body(&self) -> &[u8] {
        self.event.raw_json().as_bytes()
    }

    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            header::SCHEMA.into(),
            AMQPValue::LongLongInt(SCHEMA_VERSION),
        );
        headers.insert(
            header::EVENT_TYPE.into(),
            long_string(self.event_type().as_str()),
        );
        headers.insert(header::PROJECT.into(), long_string(self.event.project()));
        headers.insert(header::SOURCE.into(), long_string(self.source.as_str()));
        if let EventSource::Distribution { source_event_id } = &self.source {
            headers.insert(header::SOURCE_EVENT_ID.into(), long_string(source_event_id));
        }
        headers.insert(header::REQUEST_ID.into(), long_string(&self.request_id));
        if let Some(generation) = self.policy_generation {
            headers.insert(
                header::POLICY_GENERATION.into(),
                AMQPValue::LongLongInt(generation),
            );
        }
        BasicProperties::default()
            .with_message_id(self.id.to_string().into())
            .with_type(self.event_type().as_str().into())
            .with_content_type(CONTENT_TYPE.into())
            .with_app_id(APP_ID.into())
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(self.accepted_at_ms / 1000)
            .with_headers(headers)
    }

    /// Reads a message back from the broker. Checks the schema version first, so a message written by a
    /// newer regrelay is refused with a clear reason rather than misread.
    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Self, DecodeError> {
        let headers = properties.headers().clone().unwrap_or_default();
        let schema = match headers.inner().get(header::SCHEMA) {
            Some(value) => integer(value).ok_or(DecodeError::MissingHeader(header::SCHEMA))?,
            None => return Err(DecodeError::MissingHeader(header::SCHEMA)),
        };
        if schema != SCHEMA_VERSION {
            return Err(DecodeError::UnknownSchema(schema));
        }
        let id = properties
            .message_id()
            .as_ref()
            .ok_or(DecodeError::MissingId)?
            .as_str();
        let id = Uuid::parse_str(id).map_err(|_| DecodeError::BadId(id.to_owned()))?;
        let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
        let event = RegistryEvent::from_json(text)?;
        let source = match string(&headers, header::SOURCE).as_deref() {
            Some("distribution") => EventSource::Distribution {
                source_event_id: string(&headers, header::SOURCE_EVENT_ID).unwrap_or_default(),
            },
            _ => EventSource::Harbor,
        };
        Ok(Self {
            id,
            event,
            source,
            request_id: string(&headers, header::REQUEST_ID).unwrap_or_default(),
            accepted_at_ms: properties.timestamp().unwrap_or(0).saturating_mul(1000),
            policy_generation: headers
                .inner()
                .get(header::POLICY_GENERATION)
                .and_then(integer),
        })
    }
}

/// Namespace of the UUIDv5 ids derived from Distribution event ids (a fixed, random UUID).
const DISTRIBUTION_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_93b4_4d0a_9a4e_5c1d_7b2f_8e61);

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

fn string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &str = r#"{"type":"PUSH_ARTIFACT","occur_at":1680501893,"operator":"admin","event_data":{"resources":[{"digest":"sha256:1","tag":"v1","resource_url":"h/lib/app:v1"}],"repository":{"name":"app","namespace":"lib","repo_full_name":"lib/app","repo_type":"private"}}}"#;

    #[test]
    fn round_trips_through_properties() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let msg = EventMessage::new(
            event,
            EventSource::Distribution {
                source_event_id: "abc".into(),
            },
            "req-1",
        );
        let back = EventMessage::decode(&msg.properties(), msg.body()).unwrap();
        assert_eq!(back.id, msg.id);
        assert_eq!(back.source, msg.source);
        assert_eq!(back.request_id, "req-1");
        assert_eq!(back.event.raw_json(), PUSH);
        assert_eq!(back.policy_generation, None);
        assert_eq!(msg.routing_key(), "event.PUSH_ARTIFACT.lib");
        let stamped = msg.clone().with_policy_generation(Some(42));
        let back = EventMessage::decode(&stamped.properties(), stamped.body()).unwrap();
        assert_eq!(back.policy_generation, Some(42));
    }

    #[test]
    fn distribution_ids_are_stable_and_harbor_ids_unique() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let src = || EventSource::Distribution {
            source_event_id: "same".into(),
        };
        let a = EventMessage::new(event.clone(), src(), "r");
        let b = EventMessage::new(event.clone(), src(), "r");
        assert_eq!(a.id, b.id);
        let c = EventMessage::new(event.clone(), EventSource::Harbor, "r");
        let d = EventMessage::new(event, EventSource::Harbor, "r");
        assert_ne!(c.id, d.id);
    }

    #[test]
    fn unknown_schema_is_refused() {
        let event = RegistryEvent::from_json(PUSH).unwrap();
        let msg = EventMessage::new(event, EventSource::Harbor, "r");
        let mut headers = msg.properties().headers().clone().unwrap();
        headers.insert(header::SCHEMA.into(), AMQPValue::LongLongInt(99));
        let props = msg.properties().with_headers(headers);
        assert!(matches!(
            EventMessage::decode(&props, msg.body()),
            Err(DecodeError::UnknownSchema(99))
        ));
        let bare = BasicProperties::default();
        assert!(matches!(
            EventMessage::decode(&bare, msg.body()),
            Err(DecodeError::MissingHeader(_))
        ));
    }
}
