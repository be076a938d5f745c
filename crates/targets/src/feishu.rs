//! Feishu / Lark custom bots.
//!
//! Request: `POST {address}` (`https://open.feishu.cn/open-apis/bot/v2/hook/<id>`, or Lark's
//! domain), an `interactive` card: a header with the headline as `plain_text`, and one `div`
//! whose `lark_md` text holds the facts as `**Label:** value` lines (or the template's text).
//! With a `secret`, the body also carries `timestamp` (seconds, a string) and `sign`
//! ([`crate::signing::feishu`]: key and message the reverse of DingTalk's).
//!
//! Outcome: Feishu answers HTTP 200 with `{"code","msg"}` (older deployments
//! `{"StatusCode","StatusMessage"}`):
//!
//! | code | outcome |
//! |---|---|
//! | 0 | delivered |
//! | 11232 (frequency limited) | retry `rate_limited` after a minute |
//! | 19021 (sign match fail or timestamp over an hour off) | dead letter `bad_signature` |
//! | 19022 (IP not allowed), 19024 (keyword not found) | dead letter `forbidden` |
//! | any other (19001 param invalid, 9499 bad request, ...) | dead letter `rejected` |
//!
//! Limits: the body is at most 20 KB. Rate: 5 a second and 100 a minute per bot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};

use crate::escape::feishu as esc;
use crate::outcome::{by_code, Answer, CodeRule, DeadLetterReason, Outcome, RetryReason};
use crate::settings::{Field, TargetSettings};
use crate::shorten::{self, Measure, MARKER};
use crate::{
    json_request, message, signing, Content, PrepareError, RateLimit, Request, Summary, Target,
    TargetKind, Vendor,
};

/// The largest body sent, in bytes (Feishu's limit is 20 KB).
pub const MAX_BODY_BYTES: usize = 20_000;

/// The Feishu target type.
pub struct Feishu;

impl Vendor for Feishu {
    fn kind(&self) -> TargetKind {
        TargetKind::Feishu
    }

    fn fields(&self) -> &'static [Field] {
        &[Field::Secret, Field::Template, Field::RateLimit]
    }

    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let mut body = match content {
            Content::Builtin(summary) => message::fit(summary, builtin, |b| {
                b.to_string().len() <= MAX_BODY_BYTES - 200
            }),
            Content::Custom(text) => {
                let text = shorten::text(text, MAX_BODY_BYTES / 2, Measure::Bytes, MARKER);
                card(&crate::dingtalk::title_of(&text), &text)
            }
        };
        let mut credentials = Vec::new();
        if let Some(secret) = target.settings().get(Field::Secret) {
            let timestamp = now.timestamp();
            let sign = signing::feishu(secret, timestamp);
            body["timestamp"] = json!(timestamp.to_string());
            body["sign"] = json!(sign);
            credentials.push(sign);
        }
        Ok(json_request(
            Method::POST,
            target.address().clone(),
            &body,
            credentials,
        ))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        by_code(
            answer,
            &["code", "StatusCode"],
            &["msg", "StatusMessage"],
            |code, _| match code {
                11232 => CodeRule::Retry(RetryReason::RateLimited, Some(Duration::from_secs(60))),
                19021 => CodeRule::Dead(DeadLetterReason::BadSignature),
                19022 | 19024 => CodeRule::Dead(DeadLetterReason::Forbidden),
                _ => CodeRule::Dead(DeadLetterReason::Rejected),
            },
        )
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        vec![RateLimit::per_second(5), RateLimit::per_minute(100)]
    }
}

/// The built-in card.
pub fn builtin(summary: &Summary) -> Value {
    let lines: Vec<String> = summary
        .facts
        .iter()
        .map(|f| format!("**{}:** {}", esc(&f.label), esc(&f.value)))
        .collect();
    card(&summary.headline(), &lines.join("\n"))
}

/// An interactive card with a plain-text `title` and one `lark_md` block.
pub fn card(title: &str, lark_md: &str) -> Value {
    json!({
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": true},
            "header": {
                "title": {"tag": "plain_text", "content": title},
                "template": "blue",
            },
            "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": lark_md}}],
        },
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
            (answer(200, &[], r#"{"code":0,"msg":"success","data":{}}"#), delivered()),
            (answer(200, &[], r#"{"StatusCode":0,"StatusMessage":"success"}"#), delivered()),
            (
                answer(200, &[], r#"{"code":11232,"msg":"frequency limited psm[lark.oapi.app_platform_runtime]appID[1]"}"#),
                retry(R::RateLimited, Some(60.0), Some("frequency limited psm[lark.oapi.app_platform_runtime]appID[1] (code 11232)")),
            ),
            (
                answer(200, &[], r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#),
                dead(D::BadSignature, Some("sign match fail or timestamp is not within one hour from current time (code 19021)")),
            ),
            (
                answer(200, &[], r#"{"code":19024,"msg":"Key Words Not Found"}"#),
                dead(D::Forbidden, Some("Key Words Not Found (code 19024)")),
            ),
            (
                answer(400, &[], r#"{"code":9499,"msg":"Bad Request"}"#),
                dead(D::Rejected, Some("Bad Request (code 9499)")),
            ),
            (
                answer(200, &[], r#"{"code":19001,"msg":"param invalid: incoming webhook access token invalid"}"#),
                dead(D::Rejected, Some("param invalid: incoming webhook access token invalid (code 19001)")),
            ),
            (answer(200, &[], ""), dead(D::UnexpectedAnswer, None)),
        ];
        check(|a| Feishu.outcome(a), table);
    }
}
