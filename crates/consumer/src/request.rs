//! The request for one target: the rendered payload, its signing key and the HTTP attempt. The one
//! request builder, shared by deliveries (`delivery`) and test deliveries (`test_delivery`), so a
//! test sends exactly what a delivery would.
//!
//! Design constraints:
//! - A credential the store could not decrypt is never sent as the credential: the request is
//!   [`Unsendable`] (`bad_secret`), and the delivery is dead-lettered with that reason.
//! - Pure up to [`send_prepared`]: [`prepare`] renders and readies the key without I/O.

use regrelay_dead_letters::DeadLetterReason;
use regrelay_events::cloudevents::CloudEventContext;
use regrelay_history::policy::{PayloadFormat, Target, TargetKind};

use crate::attempt::{send_with_report, AttemptReport, AttemptRequest};
use crate::http_client::HttpClients;
use crate::render::{render_payload, PayloadKind};
use crate::signing::SigningKey;

/// A request ready to send to one target.
pub(crate) struct PreparedRequest {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub signing: Option<SigningKey>,
}

/// Why a request cannot be made at all (no attempt is possible; the delivery is dead-lettered).
pub(crate) struct Unsendable {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// Renders the payload the target's kind and format ask for, and readies its signing key.
pub(crate) fn prepare(
    target: &Target,
    event: &regrelay_events::RegistryEvent,
    cloud_context: &CloudEventContext,
) -> Result<PreparedRequest, Unsendable> {
    // A credential the store could not decrypt is still sealed: never send it as the credential.
    if let Some(field) = target.unreadable_credential() {
        return Err(Unsendable {
            reason: DeadLetterReason::BadSecret,
            detail: format!("the target's stored {field} cannot be decrypted with the configured secrets_key (see the consumer's log)"),
        });
    }
    let kind = match (target.kind, target.payload_format) {
        (TargetKind::Slack, _) => PayloadKind::Slack,
        (TargetKind::Http, PayloadFormat::CloudEvents) => PayloadKind::CloudEvents,
        (TargetKind::Http, PayloadFormat::Default) => PayloadKind::Default,
    };
    let rendered = render_payload(event, kind, cloud_context).map_err(|error| Unsendable {
        reason: DeadLetterReason::Unrenderable,
        detail: format!("cannot render the payload: {error}"),
    })?;
    let signing = match target.secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) => Some(SigningKey::from_secret(secret).map_err(|error| Unsendable {
            reason: DeadLetterReason::BadSecret,
            detail: format!("the target's signing secret is unusable: {error}"),
        })?),
        None => None,
    };
    Ok(PreparedRequest {
        body: rendered.body,
        content_type: rendered.content_type,
        signing,
    })
}

/// Makes one attempt of a prepared request to `target`.
pub(crate) async fn send_prepared(
    clients: &HttpClients,
    target: &Target,
    prepared: PreparedRequest,
    delivery_id: uuid::Uuid,
    allow_private: bool,
) -> AttemptReport {
    let delivery_id = delivery_id.to_string();
    send_with_report(AttemptRequest {
        client: clients.for_target(target.skip_cert_verify),
        url: &target.address,
        body: prepared.body,
        content_type: prepared.content_type,
        auth_header: match target.kind {
            // Harbor sends no auth header to Slack.
            TargetKind::Slack => None,
            TargetKind::Http => target.auth_header.as_deref().filter(|h| !h.is_empty()),
        },
        headers: &target.headers,
        delivery_id: &delivery_id,
        signing: prepared.signing.as_ref(),
        allow_private,
    })
    .await
}
