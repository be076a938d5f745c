//! [`PolicyError`], why a policy is invalid (the API's messages, Harbor's where Harbor has one),
//! and [`echo`], how a message quotes a caller's text.

use std::borrow::Cow;

use regrelay_events::UnknownEventType;

use super::limits::{
    ECHO_MAX_CHARS, MAX_ADDRESS_CHARS, MAX_DESCRIPTION_CHARS, MAX_FILTER_PATTERNS,
    MAX_FILTER_PATTERN_CHARS, MAX_HEADERS, MAX_HEADER_NAME_CHARS, MAX_HEADER_VALUE_BYTES,
    MAX_NAME_CHARS, MAX_OPTION_BYTES, MAX_TARGETS, MAX_TEMPLATE_BYTES,
};

/// Why a policy (or a part of one) is invalid. The `Display` text is the message the API returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("name is required")]
    NameRequired,
    #[error("name is too long: at most {MAX_NAME_CHARS} characters")]
    NameTooLong,
    #[error("empty event type")]
    EmptyEventTypes,
    /// `unsupported event type X` (the event model's own error, Harbor's message).
    #[error(transparent)]
    UnknownEventType(#[from] UnknownEventType),
    #[error("empty notification target with policy {0}")]
    EmptyTargets(String),
    #[error("invalid scheme: {}", echo(.0))]
    InvalidScheme(String),
    #[error("invalid address {:?}: {reason}", echo(.address))]
    InvalidAddress { address: String, reason: String },
    #[error("unsupported target type")]
    UnsupportedTargetType,
    #[error("set payload format is not allowed for slack")]
    PayloadFormatForSlack,
    #[error("unsupported payload format type: {}", echo(.0))]
    UnsupportedPayloadFormat(String),
    #[error("invalid header name {:?}", echo(.0))]
    InvalidHeaderName(String),
    /// The value is not echoed: it may be a credential.
    #[error(
        "invalid value for header {0}: header values must be visible ASCII without line breaks"
    )]
    InvalidHeaderValue(String),
    #[error("header {0} is set by regrelay and cannot be overridden by a custom header")]
    ReservedHeader(String),
    #[error("header {0} is set more than once (header names are case-insensitive)")]
    DuplicateHeader(String),
    #[error("header {0} conflicts with auth_header, which is sent as Authorization; set only one")]
    AuthorizationConflict(String),
    #[error("invalid repository filter {:?}: {reason}", echo(.pattern))]
    InvalidRepositoryFilter { pattern: String, reason: String },
    #[error("invalid tag filter {:?}: {reason}", echo(.pattern))]
    InvalidTagFilter { pattern: String, reason: String },
    /// `field` names the field, never its value.
    #[error("{0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("description is too long: at most {MAX_DESCRIPTION_CHARS} characters")]
    DescriptionTooLong,
    #[error("too many targets: at most {MAX_TARGETS}")]
    TooManyTargets,
    #[error("address is too long: at most {MAX_ADDRESS_CHARS} characters")]
    AddressTooLong,
    /// The value is not echoed: it is a credential.
    #[error("invalid auth_header: header values must be visible ASCII without line breaks")]
    InvalidAuthHeader,
    #[error("auth_header is too long: at most {MAX_HEADER_VALUE_BYTES} bytes")]
    AuthHeaderTooLong,
    #[error("secret is too long: at most {MAX_HEADER_VALUE_BYTES} bytes")]
    SecretTooLong,
    #[error("too many headers on a target: at most {MAX_HEADERS}")]
    TooManyHeaders,
    #[error("header name {:?} is too long: at most {MAX_HEADER_NAME_CHARS} characters", echo(.0))]
    HeaderNameTooLong(String),
    #[error("the value of header {} is too long: at most {MAX_HEADER_VALUE_BYTES} bytes", echo(.0))]
    HeaderValueTooLong(String),
    #[error("too many {0} filters: at most {MAX_FILTER_PATTERNS}")]
    TooManyFilterPatterns(&'static str),
    #[error("a {0} filter is too long: at most {MAX_FILTER_PATTERN_CHARS} characters")]
    FilterPatternTooLong(&'static str),
    /// A credential in the sealed form (`enc:v1:`) that is neither this policy's stored value nor
    /// opens for its place (see `sealing`). Names the field, never the value.
    #[error("{0} cannot begin with enc:v1: (the form of credentials sealed at rest)")]
    SealedLookingValue(&'static str),
    #[error("template is too long: at most {MAX_TEMPLATE_BYTES} bytes")]
    TemplateTooLong,
    /// Names the field, never its value (`bot_token` is a credential).
    #[error("{0} is too long: at most {MAX_OPTION_BYTES} bytes")]
    OptionTooLong(&'static str),
    /// A chat or template type's settings refused by its type's rules (`regrelay_targets`): a
    /// missing `bot_token` or `chat_id`, a template that does not compile, a field that does not
    /// belong to the type. The messages never repeat a credential.
    #[error(transparent)]
    TargetSettings(#[from] regrelay_targets::SettingsError),
    /// A regrelay option set on one of Harbor's types (`bot_token` on an `http` target).
    #[error("set {field} is not allowed for {kind}")]
    OptionNotAllowed {
        field: &'static str,
        kind: &'static str,
    },
    /// The cipher refused to seal a credential (never for a value within the maxima).
    #[error("a credential cannot be sealed")]
    Unsealable,
}

/// A caller's text as an error message or a log line may quote it: at most [`ECHO_MAX_CHARS`]
/// characters (cut on a character boundary, `…` added) and control characters replaced by `�`,
/// so a quote can neither grow a message without bound nor break a log line.
pub fn echo(text: &str) -> Cow<'_, str> {
    clip(text, ECHO_MAX_CHARS)
}

/// [`echo`] with another length: at most `max_chars` characters of `text`, control characters
/// replaced. Borrowed when nothing had to change.
pub fn clip(text: &str, max_chars: usize) -> Cow<'_, str> {
    let mut chars = text.char_indices();
    let cut = chars.nth(max_chars).map(|(index, _)| index);
    let kept = cut.map_or(text, |index| &text[..index]);
    if cut.is_none() && !kept.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out: String = kept
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if cut.is_some() {
        out.push('…');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_on_character_boundaries_and_replaces_control_characters() {
        assert!(matches!(echo("short"), Cow::Borrowed("short")));
        let exact = "é".repeat(ECHO_MAX_CHARS);
        assert_eq!(echo(&exact), exact);
        // Two-, three- and four-byte characters: a byte-index cut would panic or split one.
        for c in ['é', '€', '🦀'] {
            let long = c.to_string().repeat(ECHO_MAX_CHARS + 1);
            let cut = echo(&long);
            assert_eq!(cut.chars().count(), ECHO_MAX_CHARS + 1, "{cut}");
            assert!(cut.ends_with('…'));
            assert!(cut.chars().take(ECHO_MAX_CHARS).all(|x| x == c));
        }
        assert_eq!(
            echo("a\nb\u{0}c\u{1b}[31m"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}[31m"
        );
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("", 3), "");
        assert_eq!(clip("abc", 0), "…");
        // Quoted text in messages goes through it.
        let address = format!("ftp://{}", "a".repeat(1000));
        let message = PolicyError::InvalidAddress {
            address: address.clone(),
            reason: "x".into(),
        }
        .to_string();
        assert!(message.chars().count() < 200, "{message}");
    }
}
