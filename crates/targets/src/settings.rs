//! A target's settings as a policy gives them, and their validation with Harbor-style messages
//! (the policy API answers `400` with them).

use std::collections::BTreeMap;
use std::fmt;

use crate::rate::RateLimitError;
use crate::templates::TemplateError;
use crate::TargetKind;

/// The settings of one policy target, as plain data. Empty strings count as absent (Harbor's
/// clients send `"auth_header": ""` for "none").
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TargetSettings {
    /// The URL requests go to; for Telegram the Bot API base URL (default
    /// `https://api.telegram.org`).
    pub address: Option<String>,
    /// Telegram: the bot's token (`123456:ABC...`). A credential.
    pub bot_token: Option<String>,
    /// Telegram: the chat, a number (`-1001234567890`) or `@channelname`.
    pub chat_id: Option<String>,
    /// Telegram: the forum topic.
    pub message_thread_id: Option<i64>,
    /// DingTalk and Feishu: the signing secret; `template`: the Standard Webhooks secret.
    pub secret: Option<String>,
    /// A custom message (chat types) or the body (`template`), in the template language.
    pub template: Option<String>,
    /// `template`: the body's `Content-Type` (default `application/json`).
    pub content_type: Option<String>,
    /// `template`: `POST` (default), `PUT` or `PATCH`.
    pub method: Option<String>,
    /// Any type: `"20/min"`, `"5/s"`, replacing the type's built-in limits.
    pub rate_limit: Option<String>,
    /// `template`: sent verbatim as `Authorization`.
    pub auth_header: Option<String>,
    /// `template`: custom headers.
    pub headers: BTreeMap<String, String>,
    /// Harbor's `payload_format`: must be empty for every type here (as for Slack).
    pub payload_format: Option<String>,
}

impl fmt::Debug for TargetSettings {
    /// Credentials are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "********");
        f.debug_struct("TargetSettings")
            .field("address", &self.address.as_ref().map(|_| "(set)"))
            .field("bot_token", &redact(&self.bot_token))
            .field("chat_id", &self.chat_id)
            .field("message_thread_id", &self.message_thread_id)
            .field("secret", &redact(&self.secret))
            .field("template", &self.template.as_ref().map(String::len))
            .field("content_type", &self.content_type)
            .field("method", &self.method)
            .field("rate_limit", &self.rate_limit)
            .field("auth_header", &redact(&self.auth_header))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("payload_format", &self.payload_format)
            .finish()
    }
}

/// A target field, named as in the policy JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Address,
    BotToken,
    ChatId,
    MessageThreadId,
    Secret,
    Template,
    ContentType,
    Method,
    RateLimit,
    AuthHeader,
    Headers,
    PayloadFormat,
}

impl Field {
    /// The field's name in the policy JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Address => "address",
            Field::BotToken => "bot_token",
            Field::ChatId => "chat_id",
            Field::MessageThreadId => "message_thread_id",
            Field::Secret => "secret",
            Field::Template => "template",
            Field::ContentType => "content_type",
            Field::Method => "method",
            Field::RateLimit => "rate_limit",
            Field::AuthHeader => "auth_header",
            Field::Headers => "headers",
            Field::PayloadFormat => "payload_format",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a target's settings are refused. The messages follow Harbor's (`invalid scheme: x`,
/// `set payload format is not allowed for slack`) and never repeat a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("unsupported target type")]
    UnsupportedType,
    #[error("set {field} is not allowed for {kind}")]
    NotAllowed { field: Field, kind: TargetKind },
    #[error("{field} is required for {kind} targets")]
    Required { field: Field, kind: TargetKind },
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    #[error("invalid scheme: {0}")]
    InvalidScheme(String),
    #[error("invalid bot_token: expected <bot id>:<token> as BotFather gives it")]
    InvalidBotToken,
    #[error("invalid chat_id: expected a number such as -1001234567890 or @channelname")]
    InvalidChatId,
    #[error("invalid message_thread_id: expected a positive number")]
    InvalidThreadId,
    #[error("unsupported method {0}: use POST, PUT or PATCH")]
    UnsupportedMethod(String),
    #[error("invalid content_type: expected a media type such as application/json")]
    InvalidContentType,
    #[error("invalid header {0}: {1}")]
    InvalidHeader(String, &'static str),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
}

impl TargetSettings {
    /// The fields that are set (non-empty), in a fixed order.
    pub fn present(&self) -> Vec<Field> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let mut out = Vec::new();
        for (field, present) in [
            (Field::Address, set(&self.address)),
            (Field::BotToken, set(&self.bot_token)),
            (Field::ChatId, set(&self.chat_id)),
            (Field::MessageThreadId, self.message_thread_id.is_some()),
            (Field::Secret, set(&self.secret)),
            (Field::Template, set(&self.template)),
            (Field::ContentType, set(&self.content_type)),
            (Field::Method, set(&self.method)),
            (Field::RateLimit, set(&self.rate_limit)),
            (Field::AuthHeader, set(&self.auth_header)),
            (Field::Headers, !self.headers.is_empty()),
            (Field::PayloadFormat, set(&self.payload_format)),
        ] {
            if present {
                out.push(field);
            }
        }
        out
    }

    /// A string field, `None` when absent or empty.
    pub fn get(&self, field: Field) -> Option<&str> {
        let value = match field {
            Field::Address => &self.address,
            Field::BotToken => &self.bot_token,
            Field::ChatId => &self.chat_id,
            Field::Secret => &self.secret,
            Field::Template => &self.template,
            Field::ContentType => &self.content_type,
            Field::Method => &self.method,
            Field::RateLimit => &self.rate_limit,
            Field::AuthHeader => &self.auth_header,
            Field::PayloadFormat => &self.payload_format,
            Field::MessageThreadId | Field::Headers => return None,
        };
        value.as_deref().filter(|s| !s.is_empty())
    }
}

/// `chat_id`: an integer, or `@` and a public channel username (5–32 of `[A-Za-z0-9_]`).
pub(crate) fn check_chat_id(chat_id: &str) -> Result<(), SettingsError> {
    if chat_id.parse::<i64>().is_ok_and(|n| n != 0) {
        return Ok(());
    }
    match chat_id.strip_prefix('@') {
        Some(name)
            if (5..=32).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(())
        }
        _ => Err(SettingsError::InvalidChatId),
    }
}

/// `bot_token`: `<digits>:<[A-Za-z0-9_-]+>`. It goes into the URL path, so nothing else may be
/// in it (a `/` or `?` would change which URL is called).
pub(crate) fn check_bot_token(token: &str) -> Result<(), SettingsError> {
    let ok = token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(SettingsError::InvalidBotToken)
    }
}

/// An absolute http(s) URL.
pub(crate) fn parse_address(address: &str) -> Result<url::Url, SettingsError> {
    let url = url::Url::parse(address).map_err(|e| SettingsError::InvalidAddress(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(SettingsError::InvalidScheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SettingsError::InvalidAddress("no host".to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids() {
        for ok in ["-1001234567890", "12345", "@my_channel", "@abcde"] {
            assert_eq!(check_chat_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "0", "@abc", "chat", "@bad-name", "12 34", "@"] {
            assert_eq!(
                check_chat_id(bad),
                Err(SettingsError::InvalidChatId),
                "{bad}"
            );
        }
    }

    #[test]
    fn bot_tokens() {
        assert_eq!(check_bot_token("123456:ABC-DEF_ghi"), Ok(()));
        for bad in [
            "",
            "123456",
            ":abc",
            "12a:abc",
            "123:abc/../x",
            "123:a?b",
            "123:a b",
        ] {
            assert_eq!(
                check_bot_token(bad),
                Err(SettingsError::InvalidBotToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses() {
        assert!(parse_address("https://oapi.dingtalk.com/robot/send?access_token=x").is_ok());
        assert_eq!(
            parse_address("ftp://x/y").unwrap_err().to_string(),
            "invalid scheme: ftp"
        );
        assert!(parse_address("not a url")
            .unwrap_err()
            .to_string()
            .starts_with("invalid address: "));
    }

    #[test]
    fn debug_never_shows_credentials() {
        let settings = TargetSettings {
            bot_token: Some("123:SECRET".into()),
            secret: Some("SECRET".into()),
            auth_header: Some("Bearer SECRET".into()),
            address: Some("https://x/?key=SECRET".into()),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("SECRET"));
    }
}
