//! `POST /api/v1/events`: registry events in, durably onto the broker, `202` only after every confirm.
//!
//! Design constraints:
//! - All or nothing: the whole body is parsed and validated before anything is published, so one bad
//!   event refuses the request and nothing of it reaches the broker.
//! - `202` means the broker confirmed every message. When it cannot, `503`: the sender keeps the events
//!   and resends (Harbor and Distribution registries both retry).

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use regrelay_events::distribution::{self, DistributionOutcome};
use regrelay_events::{parse_harbor_body, EventError};
use regrelay_producer::{EventMessage, EventSource};
use serde::Serialize;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::RejectReason;

/// Header carrying the request id; taken from the sender when it sends one, echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The `202` body.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// How many events were accepted (published and confirmed).
    pub accepted: usize,
    /// The stable id of each accepted event, in request order.
    pub event_ids: Vec<Uuid>,
    /// Distribution notifications that are not artifact events (blob transfers, mounts, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<IgnoredEvent>,
}

#[derive(Debug, Serialize)]
pub struct IgnoredEvent {
    pub source_event_id: String,
    pub action: String,
    pub reason: &'static str,
}

/// The body formats the endpoint understands, chosen by `Content-Type`.
enum BodyFormat {
    Harbor,
    Distribution,
}

pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = request_id(&headers);
    // The trace every accepted event continues; a child of the sender's when it sent a
    // `traceparent` (a producer that traces its own work).
    let span = tracing::debug_span!(
        "ingest",
        otel.kind = "server",
        request_id = %request_id,
        events = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(&headers))
    });
    // Err only when no OpenTelemetry layer is installed (tracing off).
    let _ = span.set_parent(parent);
    let accepted = accept(&state, &headers, body, &request_id)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    let mut response = match accepted {
        Ok(accepted) => {
            span.record("events", accepted.accepted);
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Err(error) => {
            span.record("otel.status_code", "ERROR");
            tracing::info!(
                message = "Ingest request refused.",
                status = error.status().as_u16(),
                error = %error,
                request_id = %request_id,
            );
            error.into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> Result<IngestResponse, ApiError> {
    let metrics = state.metrics();
    let format = body_format(headers).inspect_err(|_| metrics.rejected(RejectReason::MediaType))?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics.rejected(RejectReason::TooLarge);
            ApiError::PayloadTooLarge {
                limit: state.ingest().map_or(0, |i| i.max_body_bytes),
            }
        } else {
            metrics.rejected(RejectReason::Malformed);
            ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
        }
    })?;

    let mut messages = Vec::new();
    let mut ignored = Vec::new();
    match format {
        BodyFormat::Harbor => {
            for event in parse_harbor_body(&body).map_err(|e| refuse(state, e))? {
                messages.push(EventMessage::new(event, EventSource::Harbor, request_id));
            }
        }
        BodyFormat::Distribution => {
            for outcome in distribution::parse_envelope(&body).map_err(|e| refuse(state, e))? {
                match outcome {
                    DistributionOutcome::Event { source_id, event } => {
                        let source = EventSource::Distribution {
                            source_event_id: source_id,
                        };
                        messages.push(EventMessage::new(event, source, request_id));
                    }
                    DistributionOutcome::Ignored {
                        source_id,
                        action,
                        reason,
                    } => {
                        metrics.ignored(reason);
                        ignored.push(IgnoredEvent {
                            source_event_id: source_id,
                            action,
                            reason: reason.as_str(),
                        });
                    }
                }
            }
        }
    }
    for message in &messages {
        metrics.received(message.event_type());
    }

    if !messages.is_empty() {
        // Read after the request arrived: every policy write answered before it is included.
        let generation = state.policy_generation().current().await;
        for message in &mut messages {
            message.policy_generation = generation;
        }
        if let Err(error) = state.publisher().publish(&messages).await {
            metrics.rejected(RejectReason::BrokerUnavailable);
            return Err(ApiError::ServiceUnavailable(format!(
                "events not accepted: {error}; nothing was accepted, send them again"
            )));
        }
    }
    // Per request: at debug, or it is gigabytes an hour at thousands of events a second
    // (docs/benchmarks.md, "Log volume"). Refusals and failures stay at info and above.
    tracing::debug!(
        message = "Events accepted.",
        accepted = messages.len(),
        ignored = ignored.len(),
        request_id = %request_id,
    );
    Ok(IngestResponse {
        accepted: messages.len(),
        event_ids: messages.iter().map(|m| m.id).collect(),
        ignored,
    })
}

fn refuse(state: &AppState, error: EventError) -> ApiError {
    if error.is_malformed() {
        state.metrics().rejected(RejectReason::Malformed);
        ApiError::BadRequest(error.to_string())
    } else {
        state.metrics().rejected(RejectReason::Invalid);
        ApiError::Unprocessable(error.to_string())
    }
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let supported = format!(
        "application/json, {} or {}",
        distribution::MEDIA_TYPE_V1,
        distribution::MEDIA_TYPE_V2
    );
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "missing Content-Type; send {supported}"
        )));
    };
    let media_type = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(BodyFormat::Harbor),
        distribution::MEDIA_TYPE_V1 | distribution::MEDIA_TYPE_V2 => Ok(BodyFormat::Distribution),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {other:?}; send {supported}"
        ))),
    }
}

/// The sender's `X-Request-Id` when it is a sane token, else a fresh UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}
