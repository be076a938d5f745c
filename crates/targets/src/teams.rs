//! Microsoft Teams through a Workflows (Power Automate) webhook.
//!
//! Request: `POST {address}` with an Adaptive Card 1.4 in the message envelope
//! `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive",
//! "contentUrl":null,"content":{...}}]}`; the flow's default template loops over `attachments`
//! and fails without them. The card is a bold `TextBlock` title and a `FactSet` of the facts
//! (built-in), or one wrapping `TextBlock` with the template's text (custom).
//!
//! Outcome: 200 or 202 (Workflows answers `202 Accepted` with an empty body) delivered; 429
//! retried after `Retry-After`; 5xx retried; 413 `message_too_long`; other 4xx dead-lettered.
//! A 202 means the flow accepted the request, not that it posted: a later failure inside the
//! flow is invisible to regrelay (docs/targets.md).
//!
//! Limits: Teams refuses messages over about 28 KB; the body is kept within
//! [`MAX_BODY_BYTES`]. No published rate limit for Workflows; none is applied by default.

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};

use crate::escape::teams as esc;
use crate::outcome::{body_excerpt, by_status, Answer, Outcome};
use crate::settings::{Field, TargetSettings};
use crate::shorten::{self, Measure, MARKER};
use crate::{
    json_request, message, Content, PrepareError, RateLimit, Request, Summary, Target, TargetKind,
    Vendor,
};

/// The largest body sent, in bytes (Teams' limit is about 28 KB for the whole message).
pub const MAX_BODY_BYTES: usize = 24_000;

/// The Teams (Workflows) target type.
pub struct Teams;

impl Vendor for Teams {
    fn kind(&self) -> TargetKind {
        TargetKind::Teams
    }

    fn fields(&self) -> &'static [Field] {
        &[Field::Template, Field::RateLimit]
    }

    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        _now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let body = match content {
            Content::Builtin(summary) => message::fit(summary, builtin_card, fits),
            Content::Custom(text) => {
                // The JSON encoding of the text may grow it (quotes, escapes): leave room.
                let text = shorten::text(text, MAX_BODY_BYTES / 2, Measure::Bytes, MARKER);
                envelope(vec![
                    json!({"type": "TextBlock", "text": text, "wrap": true}),
                ])
            }
        };
        Ok(json_request(
            Method::POST,
            target.address().clone(),
            &body,
            Vec::new(),
        ))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        by_status(answer, body_excerpt(answer.body))
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        Vec::new()
    }
}

fn fits(body: &Value) -> bool {
    body.to_string().len() <= MAX_BODY_BYTES
}

/// The built-in card: the headline in bold, then the facts.
pub fn builtin_card(summary: &Summary) -> Value {
    let facts: Vec<Value> = summary
        .facts
        .iter()
        .map(|f| json!({"title": esc(&f.label), "value": esc(&f.value)}))
        .collect();
    envelope(vec![
        json!({
            "type": "TextBlock",
            "text": esc(&summary.headline()),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": true,
        }),
        json!({"type": "FactSet", "facts": facts}),
    ])
}

/// An Adaptive Card 1.4 with `body`, in the message envelope Workflows expects.
pub fn envelope(body: Vec<Value>) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::test_util::*;
    use crate::{DeadLetterReason as D, RetryReason as R};

    #[test]
    fn outcome_table() {
        let table = vec![
            (answer(202, &[], ""), delivered()),
            (answer(200, &[], "1"), delivered()),
            (
                answer(429, &[("retry-after", "12")], ""),
                retry(R::RateLimited, Some(12.0), None),
            ),
            (answer(500, &[], ""), retry(R::ServerError, None, None)),
            (
                answer(413, &[], "Request Entity Too Large"),
                dead(D::MessageTooLong, Some("Request Entity Too Large")),
            ),
            (
                answer(
                    400,
                    &[],
                    r#"{"error":{"code":"TriggerInputSchemaMismatch"}}"#,
                ),
                dead(
                    D::Rejected,
                    Some(r#"{"error":{"code":"TriggerInputSchemaMismatch"}}"#),
                ),
            ),
            (
                answer(
                    401,
                    &[],
                    r#"{"error":{"code":"DirectApiAuthorizationRequired"}}"#,
                ),
                dead(
                    D::Unauthorized,
                    Some(r#"{"error":{"code":"DirectApiAuthorizationRequired"}}"#),
                ),
            ),
            (answer(404, &[], ""), dead(D::NotFound, None)),
        ];
        check(|a| Teams.outcome(a), table);
    }
}
