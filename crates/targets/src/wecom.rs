//! WeCom (企业微信) group robots.
//!
//! Request: `POST {address}` (`https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`), body
//! `{"msgtype":"markdown","markdown":{"content"}}`: a `###` headline and one `**Label:** value`
//! line per fact, at most [`MAX_CONTENT_BYTES`] bytes (WeCom refuses more with 40058).
//!
//! Outcome: WeCom answers HTTP 200 with `{"errcode","errmsg"}`:
//!
//! | errcode | outcome |
//! |---|---|
//! | 0 | delivered |
//! | 45009 (api freq out of limit) | retry `rate_limited` after a minute |
//! | -1 (system busy) | retry `vendor_busy` |
//! | 40058 (content exceeds 4096) | dead letter `message_too_long` |
//! | 93000 (invalid webhook url: bad key) | dead letter `unauthorized` |
//! | any other | dead letter `rejected` |
//!
//! Rate: 20 messages a minute per robot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::json;

use crate::escape::wecom as esc;
use crate::outcome::{by_code, Answer, CodeRule, DeadLetterReason, Outcome, RetryReason};
use crate::settings::{Field, SettingsError, TargetSettings};
use crate::shorten::{self, Measure, MARKER};
use crate::{
    json_request, message, Content, PrepareError, RateLimit, Request, Summary, Target, TargetKind,
    Vendor,
};

/// WeCom's limit on `markdown.content`, in bytes.
pub const MAX_CONTENT_BYTES: usize = 4096;

/// The WeCom target type.
pub struct WeCom;

impl Vendor for WeCom {
    fn kind(&self) -> TargetKind {
        TargetKind::WeCom
    }

    fn fields(&self) -> &'static [Field] {
        &[Field::Template, Field::RateLimit]
    }

    fn check(&self, settings: &TargetSettings) -> Result<(), SettingsError> {
        crate::dingtalk::require_query(settings, "key", "the robot's key")
    }

    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        _now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let content = match content {
            Content::Builtin(summary) => {
                message::fit(summary, text, |t| t.len() <= MAX_CONTENT_BYTES)
            }
            Content::Custom(custom) => {
                shorten::text(custom, MAX_CONTENT_BYTES, Measure::Bytes, MARKER)
            }
        };
        let body = json!({"msgtype": "markdown", "markdown": {"content": content}});
        Ok(json_request(
            Method::POST,
            target.address().clone(),
            &body,
            Vec::new(),
        ))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        by_code(answer, &["errcode"], &["errmsg"], |code, _| match code {
            45009 => CodeRule::Retry(RetryReason::RateLimited, Some(Duration::from_secs(60))),
            -1 => CodeRule::Retry(RetryReason::VendorBusy, None),
            40058 => CodeRule::Dead(DeadLetterReason::MessageTooLong),
            93000 => CodeRule::Dead(DeadLetterReason::Unauthorized),
            _ => CodeRule::Dead(DeadLetterReason::Rejected),
        })
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        vec![RateLimit::per_minute(20)]
    }
}

/// The built-in markdown: a `###` headline, then one line per fact.
pub fn text(summary: &Summary) -> String {
    let mut lines = vec![format!("### {}", esc(&summary.headline()))];
    for fact in &summary.facts {
        lines.push(format!("**{}:** {}", esc(&fact.label), esc(&fact.value)));
    }
    lines.join("\n")
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
            (answer(200, &[], r#"{"errcode":0,"errmsg":"ok"}"#), delivered()),
            (
                answer(200, &[], r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
                retry(R::RateLimited, Some(60.0), Some("api freq out of limit (code 45009)")),
            ),
            (
                answer(200, &[], r#"{"errcode":-1,"errmsg":"system busy"}"#),
                retry(R::VendorBusy, None, Some("system busy (code -1)")),
            ),
            (
                answer(200, &[], r#"{"errcode":40058,"errmsg":"markdown.content exceed max length 4096. invalid Request Parameter"}"#),
                dead(D::MessageTooLong, Some("markdown.content exceed max length 4096. invalid Request Parameter (code 40058)")),
            ),
            (
                answer(200, &[], r#"{"errcode":93000,"errmsg":"invalid webhook url, hint: [1]"}"#),
                dead(D::Unauthorized, Some("invalid webhook url, hint: [1] (code 93000)")),
            ),
            (
                answer(200, &[], r#"{"errcode":40008,"errmsg":"invalid message type"}"#),
                dead(D::Rejected, Some("invalid message type (code 40008)")),
            ),
            (answer(500, &[], ""), retry(R::ServerError, None, None)),
        ];
        check(|a| WeCom.outcome(a), table);
    }
}
