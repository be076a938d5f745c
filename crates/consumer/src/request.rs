//! The request for one target: the rendered payload, its signing key and the HTTP attempt, and what
//! the answer means. The one request builder, shared by deliveries (`delivery`) and test
//! deliveries (`test_delivery`), so a test sends exactly what a delivery would.
//!
//! Design constraints:
//! - The seam for "a kind of target": Harbor's types (`http`, `slack`) render here with
//!   `regrelay_events`' formats and are judged by [`classify`]; every other type is a
//!   `regrelay_targets::Target`, which builds its request and reads its answer itself. Nothing
//!   else in the delivery code matches on a chat vendor: a new vendor is a file and a table row in
//!   `regrelay_targets`.
//! - A credential the store could not decrypt is never sent as the credential: the request is
//!   [`Unsendable`] (`bad_secret`), and the delivery is dead-lettered with that reason. So is a
//!   template that cannot be rendered (`unrenderable`, with the template's error).
//! - Pure up to [`send_prepared`]: [`prepare`] renders and readies the key without I/O.
//! - The vendor's words reach history and dead letters scrubbed of every credential of the
//!   target and the request (`regrelay_targets::Target::outcome`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use regrelay_dead_letters::DeadLetterReason;
use regrelay_events::cloudevents::CloudEventContext;
use regrelay_history::policy::{PayloadFormat, Target, TargetKind};
use reqwest::header::HeaderMap;

use crate::attempt::{send_with_report, AttemptReport, AttemptRequest};
use crate::classify::{classify, from_vendor, AttemptResult, DeliveryOutcome};
use crate::http_client::HttpClients;
use crate::render::{render_payload, PayloadKind};
use crate::signing::SigningKey;

/// A chat or template target, validated and its template compiled: built once per policy
/// target by the policy cache (or per test delivery).
pub(crate) type VendorTarget = Arc<regrelay_targets::Target>;

/// Builds the [`VendorTarget`] of `target`; `None` for Harbor's types. The error is the policy
/// API's message (a stored policy that no longer validates).
pub(crate) fn vendor_target(target: &Target) -> Option<Result<VendorTarget, String>> {
    Some(
        target
            .vendor_target()?
            .map(Arc::new)
            .map_err(|e| e.to_string()),
    )
}

/// What a request is for, besides the event: names for the template variables and the
/// CloudEvents attributes.
pub(crate) struct RequestContext<'a> {
    pub cloud: CloudEventContext,
    pub policy_name: &'a str,
    pub event_id: uuid::Uuid,
}

/// A request ready to send to one target.
pub(crate) struct PreparedRequest {
    method: reqwest::Method,
    /// `None`: the target's address.
    url: Option<String>,
    pub body: Vec<u8>,
    content_type: String,
    signing: Option<SigningKey>,
    vendor: Option<VendorCall>,
}

/// What a chat or template request needs after it is sent: its target (to read the answer) and
/// the request's own headers and credentials.
struct VendorCall {
    target: VendorTarget,
    /// The request with its body taken out (its credentials scrub the vendor's message).
    request: regrelay_targets::Request,
}

/// Why a request cannot be made at all (no attempt is possible; the delivery is dead-lettered).
pub(crate) struct Unsendable {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// Renders the payload the target's kind and format ask for, and readies its signing key.
/// `compiled` is the target's [`VendorTarget`] when the caller keeps one.
pub(crate) fn prepare(
    target: &Target,
    compiled: Option<&VendorTarget>,
    event: &regrelay_events::RegistryEvent,
    context: &RequestContext<'_>,
) -> Result<PreparedRequest, Unsendable> {
    // A credential the store could not decrypt is still sealed: never send it as the credential.
    if let Some(field) = target.unreadable_credential() {
        return Err(Unsendable {
            reason: DeadLetterReason::BadSecret,
            detail: format!("the target's stored {field} cannot be decrypted with the configured secrets_key (see the consumer's log)"),
        });
    }
    let signing = match target.secret.as_deref().filter(|s| !s.is_empty()) {
        // DingTalk's and Feishu's secrets sign their own way (in `regrelay_targets`).
        Some(secret) if signs_standard_webhooks(target) => {
            Some(SigningKey::from_secret(secret).map_err(|error| Unsendable {
                reason: DeadLetterReason::BadSecret,
                detail: format!("the target's signing secret is unusable: {error}"),
            })?)
        }
        _ => None,
    };
    let kind = match (target.kind, target.payload_format) {
        (TargetKind::Slack, _) => PayloadKind::Slack,
        (TargetKind::Http, PayloadFormat::CloudEvents) => PayloadKind::CloudEvents,
        (TargetKind::Http, PayloadFormat::Default) => PayloadKind::Default,
        (TargetKind::Vendor(_), _) => {
            return prepare_vendor(target, compiled, event, context, signing);
        }
    };
    let rendered = render_payload(event, kind, &context.cloud).map_err(|error| Unsendable {
        reason: DeadLetterReason::Unrenderable,
        detail: format!("cannot render the payload: {error}"),
    })?;
    Ok(PreparedRequest {
        method: reqwest::Method::POST,
        url: None,
        body: rendered.body,
        content_type: rendered.content_type.to_owned(),
        signing,
        vendor: None,
    })
}

/// Whether the target's `secret` is a Standard Webhooks key (Harbor's types and `template`).
fn signs_standard_webhooks(target: &Target) -> bool {
    match target.kind.vendor() {
        None => true,
        Some(kind) => kind == regrelay_targets::TargetKind::Template,
    }
}

fn prepare_vendor(
    target: &Target,
    compiled: Option<&VendorTarget>,
    event: &regrelay_events::RegistryEvent,
    context: &RequestContext<'_>,
    signing: Option<SigningKey>,
) -> Result<PreparedRequest, Unsendable> {
    let unrenderable = |detail: String| Unsendable {
        reason: DeadLetterReason::Unrenderable,
        detail,
    };
    let vendor = match compiled {
        Some(vendor) => vendor.clone(),
        None => match vendor_target(target) {
            Some(Ok(vendor)) => vendor,
            Some(Err(error)) => return Err(unrenderable(format!("invalid target: {error}"))),
            None => return Err(unrenderable("not a chat or template target".into())),
        },
    };
    let variables = regrelay_targets::DeliveryContext {
        policy_id: context.cloud.policy_id,
        policy_name: context.policy_name.to_owned(),
        project_id: (context.cloud.project_id != 0).then_some(context.cloud.project_id),
        delivery_id: context.cloud.id.to_string(),
        event_id: context.event_id.to_string(),
        target_type: target.kind.as_str().to_owned(),
    };
    let mut request = vendor
        .prepare(event, &variables, Utc::now())
        .map_err(|error| unrenderable(error.to_string()))?;
    let body = std::mem::take(&mut request.body);
    let content_type = request.content_type().to_owned();
    request.headers.remove(reqwest::header::CONTENT_TYPE);
    Ok(PreparedRequest {
        method: request.method.clone(),
        url: Some(request.url.to_string()),
        body,
        content_type,
        signing: signing.filter(|_| request.standard_webhooks),
        vendor: Some(VendorCall {
            target: vendor,
            request,
        }),
    })
}

/// An attempt made, with what is needed to judge its answer.
pub(crate) struct Sent {
    pub report: AttemptReport,
    vendor: Option<VendorCall>,
}

/// What an attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub outcome: DeliveryOutcome,
    /// What a chat vendor said, credentials scrubbed (for history and the dead letter).
    pub vendor_message: Option<String>,
    /// How long the vendor asked to hold the next request to this target (Discord).
    pub pause: Option<Duration>,
}

impl Sent {
    /// The verdict: a vendor's own rules for its answers, [`classify`] for everything else
    /// (transport failures of every type, and answers of Harbor's types).
    pub(crate) fn verdict(&self) -> Verdict {
        let result = &self.report.result;
        if let (Some(vendor), AttemptResult::Response { status, .. }, Some(answer)) =
            (&self.vendor, result, self.report.answer.as_ref())
        {
            let answer = regrelay_targets::Answer {
                status: *status,
                headers: &answer.headers,
                body: answer.text.as_bytes(),
            };
            let outcome = vendor.target.outcome(&vendor.request, &answer);
            return Verdict {
                outcome: from_vendor(&outcome),
                vendor_message: outcome.vendor_message().map(str::to_owned),
                pause: vendor.target.pause_after(&answer),
            };
        }
        Verdict {
            outcome: classify(result),
            vendor_message: None,
            pause: None,
        }
    }

    /// The attempt in words, with the vendor's message when it said something: `HTTP 200
    /// (Telegram: Bad Request: chat not found)`.
    pub(crate) fn describe(&self, verdict: &Verdict) -> String {
        let result = self.report.result.describe();
        match (&self.vendor, &verdict.vendor_message) {
            (Some(vendor), Some(message)) => {
                format!("{result} ({}: {message})", vendor.target.kind())
            }
            _ => result,
        }
    }
}

/// Makes one attempt of a prepared request to `target`.
pub(crate) async fn send_prepared(
    clients: &HttpClients,
    target: &Target,
    prepared: PreparedRequest,
    delivery_id: uuid::Uuid,
    allow_private: bool,
) -> Sent {
    let delivery_id = delivery_id.to_string();
    let no_headers = BTreeMap::new();
    let PreparedRequest {
        method,
        url,
        body,
        content_type,
        signing,
        vendor,
    } = prepared;
    let (headers, auth_header, vendor_headers, credentials): (_, _, Option<&HeaderMap>, &[String]) =
        match &vendor {
            // The vendor's request carries the template type's auth and custom headers itself.
            Some(call) => (
                &no_headers,
                None,
                Some(&call.request.headers),
                &call.request.credentials,
            ),
            None => (
                &target.headers,
                match target.kind {
                    TargetKind::Http => target.auth_header.as_deref().filter(|h| !h.is_empty()),
                    // Harbor sends no auth header to Slack.
                    TargetKind::Slack | TargetKind::Vendor(_) => None,
                },
                None,
                &[],
            ),
        };
    let report = send_with_report(AttemptRequest {
        client: clients.for_target(target.skip_cert_verify),
        method,
        url: url.as_deref().unwrap_or(&target.address),
        body,
        content_type: &content_type,
        vendor_headers,
        credentials,
        auth_header,
        headers,
        delivery_id: &delivery_id,
        signing: signing.as_ref(),
        allow_private,
    })
    .await;
    Sent { report, vendor }
}
