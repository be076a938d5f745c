//! Discord webhooks.
//!
//! Request: `POST {address}` (`https://discord.com/api/webhooks/{id}/{token}`), JSON
//! `{"embeds":[{title, description}], "allowed_mentions":{"parse":[]}}` for the
//! built-in message (facts as `**Label:** value` lines of the description), or `{"content"}`
//! with a template's text. `allowed_mentions` is empty so no value can ping `@everyone`.
//!
//! Limits (Discord answers 400 `50035` over them): content 2000 characters; embed title 256,
//! description 4096, all embeds together 6000.
//!
//! Outcome: 2xx delivered; 429 retried after the body's `retry_after` (seconds, fractional) or
//! `Retry-After`; 5xx retried; 400 `50035` over a length limit `message_too_long`; 401, 403,
//! 404 (`10015` Unknown Webhook) and other 4xx dead-lettered with Discord's `message`.
//!
//! Rate: Discord publishes no fixed number; it sends the bucket's state with every answer
//! (`X-RateLimit-Remaining`, `X-RateLimit-Reset-After`), which [`Vendor::pause_after`] reads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};

use crate::escape::discord as esc;
use crate::outcome::{body_excerpt, by_status, seconds, Answer, DeadLetterReason, Outcome};
use crate::settings::{Field, TargetSettings};
use crate::shorten::{self, Measure, MARKER};
use crate::{
    json_body, json_request, message, Content, PrepareError, RateLimit, Request, RetryReason,
    Summary, Target, TargetKind, Vendor,
};

pub const MAX_CONTENT_CHARS: usize = 2000;
pub const MAX_TITLE_CHARS: usize = 256;
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
pub const MAX_EMBEDS_CHARS: usize = 6000;

/// The Discord target type.
pub struct Discord;

impl Vendor for Discord {
    fn kind(&self) -> TargetKind {
        TargetKind::Discord
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
            Content::Builtin(summary) => message::fit(summary, builtin, fits),
            Content::Custom(text) => json!({
                "content": shorten::text(text, MAX_CONTENT_CHARS, Measure::Chars, MARKER),
                "allowed_mentions": {"parse": []},
            }),
        };
        Ok(json_request(
            Method::POST,
            target.address().clone(),
            &body,
            Vec::new(),
        ))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        let body = json_body(answer.body);
        let message = body
            .as_ref()
            .and_then(|b| b.get("message"))
            .and_then(Value::as_str)
            .map(|m| {
                let code = body
                    .as_ref()
                    .and_then(|b| b.get("code"))
                    .and_then(Value::as_i64);
                match code {
                    Some(code) => format!("{m} (code {code})"),
                    None => m.to_owned(),
                }
            })
            .or_else(|| body_excerpt(answer.body));
        match answer.status {
            429 => {
                let after = body
                    .as_ref()
                    .and_then(|b| b.get("retry_after"))
                    .and_then(|v| seconds(&v.to_string()))
                    .or_else(|| crate::outcome::retry_after(answer.headers));
                Outcome::Retry {
                    after,
                    reason: RetryReason::RateLimited,
                    vendor_message: message,
                }
            }
            400 if is_length_error(body.as_ref()) => Outcome::DeadLetter {
                reason: DeadLetterReason::MessageTooLong,
                vendor_message: message,
            },
            _ => by_status(answer, message),
        }
    }

    fn pause_after(&self, answer: &Answer<'_>) -> Option<Duration> {
        let header = |name: &str| answer.headers.get(name).and_then(|v| v.to_str().ok());
        if header("x-ratelimit-remaining")?.trim() != "0" {
            return None;
        }
        seconds(header("x-ratelimit-reset-after")?.trim())
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        Vec::new()
    }
}

/// `50035 Invalid Form Body` whose errors say `BASE_TYPE_MAX_LENGTH`.
fn is_length_error(body: Option<&Value>) -> bool {
    body.is_some_and(|b| {
        b.get("code").and_then(Value::as_i64) == Some(50035)
            && b.to_string().contains("BASE_TYPE_MAX_LENGTH")
    })
}

fn fits(body: &Value) -> bool {
    let embed = &body["embeds"][0];
    let len = |key: &str| embed[key].as_str().map_or(0, |s| s.chars().count());
    len("title") <= MAX_TITLE_CHARS
        && len("description") <= MAX_DESCRIPTION_CHARS
        && len("title") + len("description") <= MAX_EMBEDS_CHARS
}

/// The built-in embed: the headline as its title, the facts as lines.
pub fn builtin(summary: &Summary) -> Value {
    let lines: Vec<String> = summary
        .facts
        .iter()
        .map(|f| format!("**{}:** {}", esc(&f.label), esc(&f.value)))
        .collect();
    json!({
        "embeds": [{
            "title": shorten::chars(&summary.headline(), MAX_TITLE_CHARS),
            "description": lines.join("\n"),
        }],
        "allowed_mentions": {"parse": []},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::test_util::*;
    use DeadLetterReason as D;
    use RetryReason as R;

    #[test]
    fn outcome_table() {
        let table = vec![
            (answer(204, &[], ""), delivered()),
            (answer(200, &[], r#"{"id":"1"}"#), delivered()),
            (
                answer(
                    429,
                    &[("retry-after", "2")],
                    r#"{"message":"You are being rate limited.","retry_after":0.75,"global":false}"#,
                ),
                retry(
                    R::RateLimited,
                    Some(0.75),
                    Some("You are being rate limited."),
                ),
            ),
            (
                answer(429, &[("retry-after", "2")], ""),
                retry(R::RateLimited, Some(2.0), None),
            ),
            (answer(503, &[], ""), retry(R::ServerError, None, None)),
            (
                answer(
                    400,
                    &[],
                    r#"{"code":50035,"errors":{"embeds":{"0":{"description":{"_errors":[{"code":"BASE_TYPE_MAX_LENGTH","message":"Must be 4096 or fewer in length."}]}}}},"message":"Invalid Form Body"}"#,
                ),
                dead(D::MessageTooLong, Some("Invalid Form Body (code 50035)")),
            ),
            (
                answer(
                    400,
                    &[],
                    r#"{"code":50006,"message":"Cannot send an empty message"}"#,
                ),
                dead(
                    D::Rejected,
                    Some("Cannot send an empty message (code 50006)"),
                ),
            ),
            (
                answer(
                    401,
                    &[],
                    r#"{"code":50027,"message":"Invalid Webhook Token"}"#,
                ),
                dead(D::Unauthorized, Some("Invalid Webhook Token (code 50027)")),
            ),
            (
                answer(
                    403,
                    &[],
                    r#"{"code":40333,"message":"internal network error"}"#,
                ),
                dead(D::Forbidden, Some("internal network error (code 40333)")),
            ),
            (
                answer(404, &[], r#"{"code":10015,"message":"Unknown Webhook"}"#),
                dead(D::NotFound, Some("Unknown Webhook (code 10015)")),
            ),
        ];
        check(|a| Discord.outcome(a), table);
    }

    #[test]
    fn pauses_when_the_bucket_is_empty() {
        let (_, headers, body) = answer(
            204,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "1.5"),
            ],
            "",
        );
        let a = Answer {
            status: 204,
            headers: &headers,
            body: &body,
        };
        assert_eq!(Discord.pause_after(&a), Some(Duration::from_millis(1500)));
        let (_, headers, body) = answer(
            204,
            &[
                ("x-ratelimit-remaining", "4"),
                ("x-ratelimit-reset-after", "1.5"),
            ],
            "",
        );
        let a = Answer {
            status: 204,
            headers: &headers,
            body: &body,
        };
        assert_eq!(Discord.pause_after(&a), None);
    }
}
