//! Telegram Bot API `sendMessage` (the seed notifier's target).
//!
//! Request: `POST {address}/bot{bot_token}/sendMessage`, JSON `{chat_id, message_thread_id?,
//! text, parse_mode: "MarkdownV2", link_preview_options: {is_disabled: true}}`. `address` is the
//! Bot API base URL, `https://api.telegram.org` by default (a self-hosted Bot API server or a
//! test server is set there).
//!
//! Outcome (Telegram answers `{"ok": bool, "error_code", "description", "parameters":
//! {"retry_after", "migrate_to_chat_id"}}` with a matching HTTP status):
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx, `ok: true` | delivered |
//! | `parameters.migrate_to_chat_id` | dead letter `chat_migrated`, naming the new chat id |
//! | 429 | retry `rate_limited` after `parameters.retry_after` (else `Retry-After`) |
//! | 5xx | retry `server_error` |
//! | 400 "can't parse entities" | dead letter `parse_error` |
//! | 400 "message is too long" | dead letter `message_too_long` |
//! | 400 "chat not found" | dead letter `not_found` |
//! | 401 / 403 / 404 / other 4xx | dead letter `unauthorized` / `forbidden` / `not_found` / `rejected` |
//! | 2xx without `ok: true` | dead letter `unexpected_answer` |
//!
//! Limits: `text` is 1–4096 characters after entity parsing; the raw MarkdownV2 text is kept
//! within [`MAX_TEXT_UTF16`] UTF-16 code units, which is never more than that. Rate: 1 message
//! a second per chat, and 20 a minute in a group or channel (the Bot FAQ).

use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};

use crate::escape::{telegram as esc, telegram_code};
use crate::outcome::{by_status, retry_after, seconds, Answer, DeadLetterReason, Outcome};
use crate::settings::{check_bot_token, check_chat_id, Field, SettingsError, TargetSettings};
use crate::shorten::{Measure, MARKER};
use crate::{
    json_body, json_request, message, Content, PrepareError, RateLimit, Request, Summary, Target,
    TargetKind, Vendor,
};

/// The public Bot API.
pub const DEFAULT_ADDRESS: &str = "https://api.telegram.org";

/// The longest raw message text sent, in UTF-16 code units (Telegram's 4096 counts the text
/// after entity parsing, which is never longer than the raw text).
pub const MAX_TEXT_UTF16: usize = 4096;

/// The Telegram target type.
pub struct Telegram;

impl Vendor for Telegram {
    fn kind(&self) -> TargetKind {
        TargetKind::Telegram
    }

    fn fields(&self) -> &'static [Field] {
        &[
            Field::BotToken,
            Field::ChatId,
            Field::MessageThreadId,
            Field::Template,
            Field::RateLimit,
        ]
    }

    fn required(&self) -> &'static [Field] {
        &[Field::BotToken, Field::ChatId]
    }

    fn default_address(&self) -> Option<&'static str> {
        Some(DEFAULT_ADDRESS)
    }

    fn check(&self, settings: &TargetSettings) -> Result<(), SettingsError> {
        check_bot_token(settings.get(Field::BotToken).unwrap_or(""))?;
        check_chat_id(settings.get(Field::ChatId).unwrap_or(""))?;
        if settings.message_thread_id.is_some_and(|id| id <= 0) {
            return Err(SettingsError::InvalidThreadId);
        }
        Ok(())
    }

    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        _now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let settings = target.settings();
        let token = settings.get(Field::BotToken).unwrap_or("");
        let chat_id = settings.get(Field::ChatId).unwrap_or("");
        let text = match content {
            Content::Builtin(summary) => message::fit(summary, text, |t| fits(t)),
            Content::Custom(custom) => shorten_markdown_v2(custom, MAX_TEXT_UTF16),
        };
        let base = target.address().as_str().trim_end_matches('/');
        let url = url::Url::parse(&format!("{base}/bot{token}/sendMessage"))
            .map_err(|e| PrepareError::Build(format!("invalid Bot API URL: {e}")))?;
        let chat: Value = match chat_id.parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => json!(chat_id),
        };
        let mut body = json!({
            "chat_id": chat,
            "text": text,
            "parse_mode": "MarkdownV2",
            "link_preview_options": {"is_disabled": true},
        });
        if let Some(thread) = settings.message_thread_id {
            body["message_thread_id"] = json!(thread);
        }
        Ok(json_request(
            Method::POST,
            url,
            &body,
            vec![token.to_owned()],
        ))
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        let body = json_body(answer.body);
        let field = |pointer: &str| body.as_ref().and_then(|b| b.pointer(pointer));
        let description = field("/description")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if (200..300).contains(&answer.status) && field("/ok") == Some(&Value::Bool(true)) {
            return Outcome::Delivered;
        }
        if let Some(new_id) = field("/parameters/migrate_to_chat_id").and_then(Value::as_i64) {
            return Outcome::DeadLetter {
                reason: DeadLetterReason::ChatMigrated,
                vendor_message: Some(format!(
                    "the group became a supergroup: set chat_id to {new_id}{}",
                    description.map(|d| format!(" ({d})")).unwrap_or_default()
                )),
            };
        }
        let vendor_message = description.or_else(|| crate::outcome::body_excerpt(answer.body));
        match answer.status {
            200..=299 => Outcome::DeadLetter {
                reason: DeadLetterReason::UnexpectedAnswer,
                vendor_message,
            },
            429 => {
                let after = field("/parameters/retry_after")
                    .and_then(|v| seconds(&v.to_string()))
                    .or_else(|| retry_after(answer.headers));
                Outcome::Retry {
                    after,
                    reason: crate::RetryReason::RateLimited,
                    vendor_message,
                }
            }
            400 => {
                let lower = vendor_message.as_deref().unwrap_or("").to_ascii_lowercase();
                let reason = if lower.contains("can't parse entities") {
                    DeadLetterReason::ParseError
                } else if lower.contains("message is too long")
                    || lower.contains("text is too long")
                {
                    DeadLetterReason::MessageTooLong
                } else if lower.contains("chat not found") || lower.contains("thread not found") {
                    DeadLetterReason::NotFound
                } else {
                    DeadLetterReason::Rejected
                };
                Outcome::DeadLetter {
                    reason,
                    vendor_message,
                }
            }
            _ => by_status(answer, vendor_message),
        }
    }

    fn default_rate_limits(&self, settings: &TargetSettings) -> Vec<RateLimit> {
        let mut limits = vec![RateLimit::per_second(1)];
        if is_group_or_channel(settings.get(Field::ChatId).unwrap_or("")) {
            limits.push(RateLimit::per_minute(20));
        }
        limits
    }

    /// Limits are per bot and chat, whatever address the bot is reached at.
    fn rate_scope(&self, target: &Target) -> String {
        let settings = target.settings();
        format!(
            "{}\n{}",
            settings.get(Field::BotToken).unwrap_or(""),
            settings.get(Field::ChatId).unwrap_or("")
        )
    }
}

/// Groups and supergroups have negative ids; channels are named `@...` or have negative ids.
fn is_group_or_channel(chat_id: &str) -> bool {
    chat_id.starts_with('@') || chat_id.parse::<i64>().is_ok_and(|n| n < 0)
}

fn fits(text: &str) -> bool {
    Measure::Utf16.of(text) <= MAX_TEXT_UTF16
}

/// The built-in message: a bold title, then `*Label:* value` lines; digests and URLs as code.
pub fn text(summary: &Summary) -> String {
    let mut lines = vec![format!("{} *{}*", summary.emoji, esc(summary.title))];
    for fact in &summary.facts {
        let value = if fact.code {
            format!("`{}`", telegram_code(&fact.value))
        } else {
            esc(&fact.value)
        };
        lines.push(format!("*{}:* {value}", esc(&fact.label)));
    }
    lines.join("\n")
}

/// A template's MarkdownV2 text within `limit` UTF-16 code units: cut only where no entity is
/// open (so Telegram can still parse it), at a line break when one keeps at least half, and
/// marked with an escaped `… (truncated)` line.
pub fn shorten_markdown_v2(text: &str, limit: usize) -> String {
    if Measure::Utf16.of(text) <= limit {
        return text.to_owned();
    }
    let tail = format!("\n{}", esc(MARKER));
    let budget = limit.saturating_sub(Measure::Utf16.of(&tail));
    let cuts = safe_cuts(text);
    let fitting: Vec<usize> = cuts
        .into_iter()
        .filter(|&at| Measure::Utf16.of(&text[..at]) <= budget)
        .collect();
    let longest = fitting.last().copied().unwrap_or(0);
    let at_line = fitting
        .iter()
        .rev()
        .copied()
        .find(|&at| text[at..].starts_with('\n'))
        .filter(|&at| at >= longest / 2);
    let cut = at_line.unwrap_or(longest);
    format!("{}{tail}", &text[..cut]).trim_start().to_owned()
}

/// Byte offsets where MarkdownV2 text can be cut with no entity open and no escape split.
fn safe_cuts(text: &str) -> Vec<usize> {
    #[derive(PartialEq, Clone, Copy)]
    enum Open {
        Bold,
        Italic,
        Underline,
        Strike,
        Spoiler,
        LinkText,
        LinkUrl,
        Code,
        Pre,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut cuts = vec![0];
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let mut i = 0;
    let toggle = |stack: &mut Vec<Open>, e: Open| {
        if stack.last() == Some(&e) {
            stack.pop();
        } else {
            stack.push(e);
        }
    };
    while i < chars.len() {
        let c = chars[i].1;
        let mut step = 1;
        match (stack.last().copied(), c) {
            (_, '\\') => step = 2,
            (Some(Open::Code), '`') => {
                stack.pop();
            }
            (Some(Open::Pre), '`') if at(i + 1) == Some('`') && at(i + 2) == Some('`') => {
                stack.pop();
                step = 3;
            }
            (Some(Open::Code | Open::Pre), _) => {}
            (Some(Open::LinkUrl), ')') => {
                stack.pop();
            }
            (Some(Open::LinkUrl), _) => {}
            (_, '`') if at(i + 1) == Some('`') && at(i + 2) == Some('`') => {
                stack.push(Open::Pre);
                step = 3;
            }
            (_, '`') => stack.push(Open::Code),
            (_, '*') => toggle(&mut stack, Open::Bold),
            (_, '_') if at(i + 1) == Some('_') => {
                toggle(&mut stack, Open::Underline);
                step = 2;
            }
            (_, '_') => toggle(&mut stack, Open::Italic),
            (_, '~') => toggle(&mut stack, Open::Strike),
            (_, '|') if at(i + 1) == Some('|') => {
                toggle(&mut stack, Open::Spoiler);
                step = 2;
            }
            (_, '[') => stack.push(Open::LinkText),
            (Some(Open::LinkText), ']') => {
                stack.pop();
                if at(i + 1) == Some('(') {
                    stack.push(Open::LinkUrl);
                    step = 2;
                }
            }
            _ => {}
        }
        i += step;
        if stack.is_empty() {
            let offset = chars.get(i).map_or(text.len(), |(o, _)| *o);
            cuts.push(offset);
        }
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::test_util::*;
    use crate::RetryReason;

    #[test]
    fn outcome_table() {
        use DeadLetterReason as D;
        use RetryReason as R;
        let table = vec![
            (
                answer(200, &[], r#"{"ok":true,"result":{"message_id":1}}"#),
                delivered(),
            ),
            (
                answer(
                    429,
                    &[("retry-after", "99")],
                    r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35","parameters":{"retry_after":35}}"#,
                ),
                retry(R::RateLimited, Some(35.0), Some("Too Many Requests: retry after 35")),
            ),
            (
                answer(429, &[("retry-after", "4")], r#"{"ok":false}"#),
                retry(R::RateLimited, Some(4.0), Some(r#"{"ok":false}"#)),
            ),
            (
                answer(502, &[], "<html>Bad Gateway</html>"),
                retry(R::ServerError, None, Some("<html>Bad Gateway</html>")),
            ),
            (
                answer(
                    400,
                    &[],
                    r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#,
                ),
                dead(
                    D::ChatMigrated,
                    Some("the group became a supergroup: set chat_id to -1001234567890 (Bad Request: group chat was upgraded to a supergroup chat)"),
                ),
            ),
            (
                answer(
                    400,
                    &[],
                    r#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: Character '.' is reserved and must be escaped with the preceding '\\'"}"#,
                ),
                dead(
                    D::ParseError,
                    Some("Bad Request: can't parse entities: Character '.' is reserved and must be escaped with the preceding '\\'"),
                ),
            ),
            (
                answer(400, &[], r#"{"ok":false,"error_code":400,"description":"Bad Request: message is too long"}"#),
                dead(D::MessageTooLong, Some("Bad Request: message is too long")),
            ),
            (
                answer(400, &[], r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#),
                dead(D::NotFound, Some("Bad Request: chat not found")),
            ),
            (
                answer(400, &[], r#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#),
                dead(D::Rejected, Some("Bad Request: message text is empty")),
            ),
            (
                answer(401, &[], r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#),
                dead(D::Unauthorized, Some("Unauthorized")),
            ),
            (
                answer(403, &[], r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}"#),
                dead(D::Forbidden, Some("Forbidden: bot was kicked from the group chat")),
            ),
            (
                answer(404, &[], r#"{"ok":false,"error_code":404,"description":"Not Found"}"#),
                dead(D::NotFound, Some("Not Found")),
            ),
            (
                answer(200, &[], "<html>captive portal</html>"),
                dead(D::UnexpectedAnswer, Some("<html>captive portal</html>")),
            ),
            (answer(200, &[], r#"{"ok":false}"#), dead(D::UnexpectedAnswer, Some(r#"{"ok":false}"#))),
        ];
        check(|a| Telegram.outcome(a), table);
    }

    #[test]
    fn rate_limits_per_chat_kind() {
        let limits = |chat: &str| {
            Telegram.default_rate_limits(&TargetSettings {
                chat_id: Some(chat.into()),
                ..Default::default()
            })
        };
        assert_eq!(limits("12345"), vec![RateLimit::per_second(1)]);
        let group = vec![RateLimit::per_second(1), RateLimit::per_minute(20)];
        assert_eq!(limits("-1001234567890"), group);
        assert_eq!(limits("@my_channel"), group);
    }

    #[test]
    fn shortening_never_cuts_inside_an_entity() {
        let line = "*bold _italic_ text* and `code \\` span` [link](https://x/\\)) ||s||\n";
        let text = line.repeat(200);
        for limit in [50, 100, 333, 1000, 4096] {
            let out = shorten_markdown_v2(&text, limit);
            assert!(Measure::Utf16.of(&out) <= limit, "{limit}");
            assert!(out.ends_with(r"… \(truncated\)"), "{out}");
            let body = out.trim_end_matches(r"… \(truncated\)");
            assert!(
                safe_cuts(body).contains(&body.len()),
                "balanced at {limit}: {body}"
            );
        }
        // One entity longer than the limit: nothing of it is kept, only the marker.
        let one = format!("*{}*", "x".repeat(5000));
        assert_eq!(shorten_markdown_v2(&one, 100), r"… \(truncated\)");
        assert_eq!(shorten_markdown_v2("short", 100), "short");
    }
}
