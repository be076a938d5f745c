//! DingTalk (钉钉) custom robots.
//!
//! Request: `POST {address}` (`https://oapi.dingtalk.com/robot/send?access_token=...`), with
//! `&timestamp=<ms>&sign=<...>` added when the target has a `secret` ([`crate::signing::dingtalk`];
//! DingTalk refuses a timestamp more than an hour off). Body
//! `{"msgtype":"markdown","markdown":{"title","text"}}`: the title is what the chat list shows,
//! the text a `####` headline and one `**Label:** value` paragraph per fact.
//!
//! Outcome: DingTalk answers HTTP 200 with `{"errcode","errmsg"}`:
//!
//! | errcode | outcome |
//! |---|---|
//! | 0 | delivered |
//! | 130101 (send too fast) | retry `rate_limited` after 10 min (DingTalk throttles a robot that long) |
//! | -1 (system busy) | retry `vendor_busy` |
//! | 310000 with "sign" or "timestamp" | dead letter `bad_signature` |
//! | 310000 otherwise (keyword, IP allowlist) | dead letter `forbidden` |
//! | 300001, 300005 (token does not exist) | dead letter `unauthorized` |
//! | 460101 (message too long) | dead letter `message_too_long` |
//! | any other | dead letter `rejected` |
//!
//! A non-2xx status follows the shared status rules. Rate: 20 messages a minute per robot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::json;

use crate::escape::dingtalk as esc;
use crate::outcome::{by_code, Answer, CodeRule, DeadLetterReason, Outcome, RetryReason};
use crate::settings::{Field, SettingsError, TargetSettings};
use crate::shorten::{self, Measure, MARKER};
use crate::{
    json_request, message, signing, Content, PrepareError, RateLimit, Request, Summary, Target,
    TargetKind, Vendor,
};

/// The longest markdown text sent, in bytes. DingTalk documents no markdown limit; its SDKs and
/// users cite 20000 bytes, so this keeps under it.
pub const MAX_TEXT_BYTES: usize = 18_000;

/// The DingTalk target type.
pub struct DingTalk;

impl Vendor for DingTalk {
    fn kind(&self) -> TargetKind {
        TargetKind::DingTalk
    }

    fn fields(&self) -> &'static [Field] {
        &[Field::Secret, Field::Template, Field::RateLimit]
    }

    fn check(&self, settings: &TargetSettings) -> Result<(), SettingsError> {
        require_query(settings, "access_token", "the robot's access_token")
    }

    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let (title, text) = match content {
            Content::Builtin(summary) => (
                summary.headline(),
                message::fit(summary, text, |t| t.len() <= MAX_TEXT_BYTES),
            ),
            Content::Custom(custom) => (
                title_of(custom),
                shorten::text(custom, MAX_TEXT_BYTES, Measure::Bytes, MARKER),
            ),
        };
        let mut url = target.address().clone();
        let mut credentials = Vec::new();
        if let Some(secret) = target.settings().get(Field::Secret) {
            let timestamp = now.timestamp_millis();
            let sign = signing::dingtalk(secret, timestamp);
            url.query_pairs_mut()
                .append_pair("timestamp", &timestamp.to_string())
                .append_pair("sign", &sign);
            credentials.push(sign);
        }
        let body = json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}});
        Ok(json_request(Method::POST, url, &body, credentials))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        by_code(
            answer,
            &["errcode"],
            &["errmsg"],
            |code, message| match code {
                130101 => CodeRule::Retry(RetryReason::RateLimited, Some(Duration::from_secs(600))),
                -1 => CodeRule::Retry(RetryReason::VendorBusy, None),
                310000
                    if ["sign", "timestamp"]
                        .iter()
                        .any(|w| message.to_ascii_lowercase().contains(w)) =>
                {
                    CodeRule::Dead(DeadLetterReason::BadSignature)
                }
                310000 => CodeRule::Dead(DeadLetterReason::Forbidden),
                300001 | 300005 => CodeRule::Dead(DeadLetterReason::Unauthorized),
                460101 => CodeRule::Dead(DeadLetterReason::MessageTooLong),
                _ => CodeRule::Dead(DeadLetterReason::Rejected),
            },
        )
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        vec![RateLimit::per_minute(20)]
    }
}

/// The built-in markdown: a `####` headline, then one paragraph per fact.
pub fn text(summary: &Summary) -> String {
    let mut parts = vec![format!("#### {}", esc(&summary.headline()))];
    for fact in &summary.facts {
        parts.push(format!("**{}:** {}", esc(&fact.label), esc(&fact.value)));
    }
    parts.join("\n\n")
}

/// A custom message's title (the chat list's preview): its first line, without markup signs,
/// at most 64 characters.
pub(crate) fn title_of(text: &str) -> String {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("regrelay");
    let plain: String = first.chars().filter(|c| !"#*_`>[]".contains(*c)).collect();
    shorten::chars(plain.trim(), 64)
}

/// The address must carry `key` in its query (DingTalk's `access_token`, WeCom's `key`).
pub(crate) fn require_query(
    settings: &TargetSettings,
    key: &str,
    what: &str,
) -> Result<(), SettingsError> {
    let address = settings.get(Field::Address).unwrap_or("");
    let url = crate::settings::parse_address(address)?;
    if url.query_pairs().any(|(k, v)| k == key && !v.is_empty()) {
        Ok(())
    } else {
        Err(SettingsError::InvalidAddress(format!(
            "the address must carry {what} (?{key}=...)"
        )))
    }
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
                answer(200, &[], r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#),
                retry(R::RateLimited, Some(600.0), Some("send too fast, exceed 20 times per minute (code 130101)")),
            ),
            (
                answer(200, &[], r#"{"errcode":-1,"errmsg":"系统繁忙"}"#),
                retry(R::VendorBusy, None, Some("系统繁忙 (code -1)")),
            ),
            (
                answer(200, &[], r#"{"errcode":310000,"errmsg":"sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}"#),
                dead(D::BadSignature, Some("sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq] (code 310000)")),
            ),
            (
                answer(200, &[], r#"{"errcode":310000,"errmsg":"keywords not in content"}"#),
                dead(D::Forbidden, Some("keywords not in content (code 310000)")),
            ),
            (
                answer(200, &[], r#"{"errcode":300001,"errmsg":"token is not exist"}"#),
                dead(D::Unauthorized, Some("token is not exist (code 300001)")),
            ),
            (
                answer(200, &[], r#"{"errcode":460101,"errmsg":"message too long"}"#),
                dead(D::MessageTooLong, Some("message too long (code 460101)")),
            ),
            (
                answer(200, &[], r#"{"errcode":40035,"errmsg":"缺少参数 json"}"#),
                dead(D::Rejected, Some("缺少参数 json (code 40035)")),
            ),
            (answer(200, &[], "ok"), dead(D::UnexpectedAnswer, Some("ok"))),
            (answer(502, &[], ""), retry(R::ServerError, None, None)),
            (
                answer(429, &[("retry-after", "3")], ""),
                retry(R::RateLimited, Some(3.0), None),
            ),
        ];
        check(|a| DingTalk.outcome(a), table);
    }

    #[test]
    fn titles_of_custom_messages() {
        assert_eq!(title_of("\n### **Pushed** `x`\nmore"), "Pushed x");
        assert_eq!(title_of(""), "regrelay");
    }
}
