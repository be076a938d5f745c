//! The webhook policy model and its validation. No I/O.
//!
//! - [`PolicySpec`]: what a client writes; [`PolicySpec::validate`] applies Harbor's rules, with
//!   Harbor's messages, and regrelay's own (custom headers, filters).
//! - [`Policy`]: a stored policy, as `api` shows it and `consumer` matches and delivers it;
//!   [`Project`], the project it belongs to.
//! - [`Target`], [`TargetKind`], [`PayloadFormat`]: where a policy delivers, and in which format.
//! - [`Filters`], [`CompiledFilters`] (module `filter`): repository and tag globs with TCR's rules.
//! - [`parse_event_types`]: event type names to [`EventType`]s, Harbor's message on an unknown one.
//! - [`echo`]: a caller's text made safe to quote in an error message or a log line.
//! - [`is_sealed`], [`SEALED_PREFIX`]: the form of a credential sealed at rest (`sealing` seals
//!   and opens it; validation needs only to recognise it).
//!
//! Design constraints:
//! - Messages are Harbor's, word for word, where Harbor has one: Harbor's API clients show them to
//!   users, and scripts match on them.
//! - Credentials (`auth_header`, `secret`, custom header values) are plain text in a [`Target`],
//!   because the consumer must send them (the store seals them at rest, see `sealing`; one that
//!   does not decrypt stays sealed, [`Target::unreadable_credential`]); `Debug` of a [`Target`]
//!   redacts them, so a logged policy leaks nothing. The API shows [`REDACTED`] in their place.
//! - A spec that passes [`PolicySpec::validate`] is deliverable: its addresses parse as http(s) URLs,
//!   its headers are valid HTTP and cannot override the headers regrelay sets, its globs compile.
//! - A spec that passes is storable: no text field holds a control character (PostgreSQL refuses
//!   NUL, and a line break in a name or address only ever causes trouble; a description may hold
//!   tabs and line breaks), and every list and text is within the maxima below (docs/delivery.md,
//!   "Limits"), so a policy's size, and the work one test delivery or one event makes, are bounded.
//! - Messages quote a caller's text through [`echo`] only: cut to [`ECHO_MAX_CHARS`], control
//!   characters replaced, so an error or a log line cannot be made huge or forged.

mod filter;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use regrelay_events::{EventType, UnknownEventType};
use serde::{Deserialize, Serialize};

pub use filter::CompiledFilters;

/// The prefix of a credential sealed at rest (`sealing`): format version 1.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// Whether a stored credential value is in the sealed form (whether or not it opens). Validation
/// lets such a value through unchecked: it was checked when it was written.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// What the API shows instead of a credential (`auth_header`, the secret, custom header values).
pub const REDACTED: &str = "********";

/// Longest policy name accepted (Harbor's column is `varchar(256)`).
pub const MAX_NAME_CHARS: usize = 256;
/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Most targets of one policy (one event makes one delivery per target).
pub const MAX_TARGETS: usize = 32;
/// Longest target address.
pub const MAX_ADDRESS_CHARS: usize = 2048;
/// Most custom headers of one target.
pub const MAX_HEADERS: usize = 32;
/// Longest custom header name.
pub const MAX_HEADER_NAME_CHARS: usize = 256;
/// Longest custom header value, `auth_header` and signing secret, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most patterns per filter list (`repositories`, `tags`).
pub const MAX_FILTER_PATTERNS: usize = 64;
/// Longest filter pattern.
pub const MAX_FILTER_PATTERN_CHARS: usize = 256;
/// Longest piece of a caller's text quoted in an error message or a log line ([`echo`]).
pub const ECHO_MAX_CHARS: usize = 128;

/// Headers regrelay sets itself on every delivery, or that frame the request or the connection
/// (which the HTTP client owns); a target's custom headers may not set them. `webhook-*` (the
/// signature headers) are refused too. The one list: the policy API refuses these when a policy
/// is written, and a delivery skips them in a policy stored before they were refused.
pub const RESERVED_HEADERS: [&str; 10] = [
    "content-type",
    "user-agent",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "proxy-connection",
];

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

/// `Err(ControlCharacter(field))` when `text` holds one.
fn no_control(text: &str, field: &'static str) -> Result<(), PolicyError> {
    if text.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacter(field));
    }
    Ok(())
}

/// How a target is called: a generic HTTP endpoint or a Slack incoming webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Http,
    Slack,
}

/// The body format of an HTTP target (Slack targets always get Slack's format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PayloadFormat {
    #[default]
    Default,
    CloudEvents,
}

/// One place a policy delivers to.
///
/// Stored as JSON (serde of this struct); the optional fields default when absent, so rows written
/// by an older version still decode.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    /// An absolute http or https URL.
    pub address: String,
    /// Sent verbatim as `Authorization` (HTTP targets only; Harbor adds no prefix).
    #[serde(default)]
    pub auth_header: Option<String>,
    #[serde(default)]
    pub skip_cert_verify: bool,
    #[serde(default)]
    pub payload_format: PayloadFormat,
    /// Signing secret (Standard Webhooks); `None` or empty: requests are not signed.
    #[serde(default)]
    pub secret: Option<String>,
    /// Custom headers sent with every request, name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Repository and tag globs (TCR's rules, see [`CompiledFilters`]). An empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A policy as a client writes it (create, or full replace on update).
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub name: String,
    pub description: String,
    pub targets: Vec<Target>,
    pub event_types: Vec<EventType>,
    pub filters: Filters,
    /// Who created it; kept unchanged by updates.
    pub creator: String,
    pub enabled: bool,
}

/// A project (Harbor's project, a Distribution namespace), as a policy names it. Stored in the
/// `projects` table (module `projects`), which keeps its id stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: i64,
    pub name: String,
}

/// A stored policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// `None`: a system-wide policy, matching events of every project.
    pub project: Option<Project>,
    pub targets: Vec<Target>,
    pub event_types: Vec<EventType>,
    pub filters: Filters,
    pub creator: String,
    pub creation_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub enabled: bool,
}

/// Parses event type names (Harbor's strings); duplicates are dropped, the first order kept.
/// An empty list is not an error here: [`PolicySpec::validate`] refuses it.
pub fn parse_event_types(names: &[String]) -> Result<Vec<EventType>, PolicyError> {
    let mut types = Vec::with_capacity(names.len());
    for name in names {
        let event_type: EventType = name.parse()?;
        if !types.contains(&event_type) {
            types.push(event_type);
        }
    }
    Ok(types)
}

impl TargetKind {
    /// `"http"` or `"slack"`, as Harbor's API names them.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "http" => Ok(TargetKind::Http),
            "slack" => Ok(TargetKind::Slack),
            _ => Err(PolicyError::UnsupportedTargetType),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Http => "http",
            TargetKind::Slack => "slack",
        }
    }
}

impl PayloadFormat {
    /// `""` or `"Default"` → Default, `"CloudEvents"` → CloudEvents (exact case, as Harbor).
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "" | "Default" => Ok(PayloadFormat::Default),
            "CloudEvents" => Ok(PayloadFormat::CloudEvents),
            other => Err(PolicyError::UnsupportedPayloadFormat(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Default => "Default",
            PayloadFormat::CloudEvents => "CloudEvents",
        }
    }
}

impl Target {
    /// The address as the API shows it: user info, query values, a fragment and a Slack webhook's
    /// path (its secret) replaced by [`REDACTED`]; everything else byte for byte as stored, so
    /// [`Target::is_redacted_address_of`] can recognise it when a client sends it back. E.g.
    /// `https://ci:pw@h.example/in?token=t&x=1` → `https://********@h.example/in?token=********&x=********`,
    /// `https://hooks.slack.com/services/T/B/X` → `https://hooks.slack.com/services/********`.
    pub fn redacted_address(&self) -> String {
        redact_address(self.kind, &self.address)
    }

    /// Whether `address`, sent by a client, is this target's address in its redacted form (and not
    /// the address itself): a `PUT` of a policy as `GET` returned it, meaning "keep the stored
    /// address", as [`REDACTED`] does for the other credentials.
    pub fn is_redacted_address_of(&self, address: &str) -> bool {
        address != self.address && address == self.redacted_address()
    }
}

/// See [`Target::redacted_address`]. Works on the text, not a parsed URL, so nothing but the
/// credentials changes; idempotent. The one address redaction: API responses, dead letters and
/// their tooling all use it.
pub fn redact_address(kind: TargetKind, address: &str) -> String {
    let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let (rest, fragment) = match rest.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(address.len());
    if !scheme.is_empty() || address.contains("://") {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str(REDACTED);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match kind {
        TargetKind::Slack if path.len() > 1 => match path.strip_prefix("/services/") {
            Some(_) => {
                out.push_str("/services/");
                out.push_str(REDACTED);
            }
            None => {
                out.push('/');
                out.push_str(REDACTED);
            }
        },
        _ => out.push_str(path),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !value.is_empty() => format!("{key}={REDACTED}"),
                Some((key, _)) => format!("{key}="),
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(REDACTED);
        }
    }
    out
}

impl fmt::Debug for Target {
    /// Credentials are shown as [`REDACTED`] when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |value: &Option<String>| value.as_ref().map(|_| REDACTED);
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), REDACTED))
            .collect();
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("address", &self.redacted_address())
            .field("auth_header", &redact(&self.auth_header))
            .field("skip_cert_verify", &self.skip_cert_verify)
            .field("payload_format", &self.payload_format)
            .field("secret", &redact(&self.secret))
            .field("headers", &headers)
            .finish()
    }
}

impl Target {
    /// Checks the address, the payload format and the custom headers.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.address.chars().count() > MAX_ADDRESS_CHARS {
            return Err(PolicyError::AddressTooLong);
        }
        // Before parsing: the URL parser drops tabs and line breaks silently, but the stored
        // address would keep them.
        no_control(&self.address, "address")?;
        validate_address(&self.address)?;
        if self.kind == TargetKind::Slack && self.payload_format != PayloadFormat::Default {
            return Err(PolicyError::PayloadFormatForSlack);
        }
        if let Some(auth_header) = self.auth_header.as_deref().filter(|h| !h.is_empty()) {
            // A sealed value kept unread (see `sealing`) was checked when it was written.
            if auth_header.len() > MAX_HEADER_VALUE_BYTES && !is_sealed(auth_header) {
                return Err(PolicyError::AuthHeaderTooLong);
            }
            // Sent as `Authorization`: a value that is not a valid header value would fail every
            // attempt.
            if auth_header.chars().any(char::is_control)
                || http::HeaderValue::from_str(auth_header).is_err()
            {
                return Err(PolicyError::InvalidAuthHeader);
            }
        }
        if let Some(secret) = self.secret.as_deref() {
            if secret.len() > MAX_HEADER_VALUE_BYTES && !is_sealed(secret) {
                return Err(PolicyError::SecretTooLong);
            }
            no_control(secret, "secret")?;
        }
        self.validate_headers()
    }

    fn validate_headers(&self) -> Result<(), PolicyError> {
        let has_auth_header = self.kind == TargetKind::Http
            && self.auth_header.as_deref().is_some_and(|h| !h.is_empty());
        if self.headers.len() > MAX_HEADERS {
            return Err(PolicyError::TooManyHeaders);
        }
        let mut seen = BTreeSet::new();
        for (name, value) in &self.headers {
            if name.chars().count() > MAX_HEADER_NAME_CHARS {
                return Err(PolicyError::HeaderNameTooLong(name.clone()));
            }
            if value.len() > MAX_HEADER_VALUE_BYTES && !is_sealed(value) {
                return Err(PolicyError::HeaderValueTooLong(name.clone()));
            }
            let parsed = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PolicyError::InvalidHeaderName(name.clone()))?;
            // `HeaderName` is lowercase.
            let lower = parsed.as_str();
            if RESERVED_HEADERS.contains(&lower) || lower.starts_with("webhook-") {
                return Err(PolicyError::ReservedHeader(name.clone()));
            }
            if lower == "authorization" && has_auth_header {
                return Err(PolicyError::AuthorizationConflict(name.clone()));
            }
            if !seen.insert(lower.to_owned()) {
                return Err(PolicyError::DuplicateHeader(name.clone()));
            }
            if value.chars().any(char::is_control) || http::HeaderValue::from_str(value).is_err() {
                return Err(PolicyError::InvalidHeaderValue(name.clone()));
            }
        }
        Ok(())
    }
}

impl PolicySpec {
    /// Harbor's checks in Harbor's order (event types, then targets), then regrelay's (headers,
    /// filters).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.name.trim().is_empty() {
            return Err(PolicyError::NameRequired);
        }
        if self.name.chars().count() > MAX_NAME_CHARS {
            return Err(PolicyError::NameTooLong);
        }
        no_control(&self.name, "name")?;
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(PolicyError::DescriptionTooLong);
        }
        // A description is free text: tabs and line breaks are fine.
        if self
            .description
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            return Err(PolicyError::ControlCharacter("description"));
        }
        if self.event_types.is_empty() {
            return Err(PolicyError::EmptyEventTypes);
        }
        if self.targets.is_empty() {
            return Err(PolicyError::EmptyTargets(self.name.clone()));
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(PolicyError::TooManyTargets);
        }
        for target in &self.targets {
            target.validate()?;
        }
        for (kind, patterns) in [
            ("repository", &self.filters.repositories),
            ("tag", &self.filters.tags),
        ] {
            if patterns.len() > MAX_FILTER_PATTERNS {
                return Err(PolicyError::TooManyFilterPatterns(kind));
            }
            for pattern in patterns {
                if pattern.chars().count() > MAX_FILTER_PATTERN_CHARS {
                    return Err(PolicyError::FilterPatternTooLong(kind));
                }
                no_control(
                    pattern,
                    if kind == "tag" {
                        "a tag filter"
                    } else {
                        "a repository filter"
                    },
                )?;
            }
        }
        CompiledFilters::compile(&self.filters)?;
        Ok(())
    }
}

/// An absolute http(s) URL with a host. The scheme check is Harbor's (`invalid scheme: x`, exact
/// case); unlike Harbor, an address without a scheme is refused rather than given `http://`, so what
/// is stored is exactly what is called.
fn validate_address(address: &str) -> Result<(), PolicyError> {
    let invalid = |reason: &str| PolicyError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if address.trim().is_empty() {
        return Err(invalid("the address is empty"));
    }
    if address.trim() != address {
        return Err(invalid("the address has leading or trailing whitespace"));
    }
    let Some((scheme, _)) = address.split_once("://") else {
        return Err(invalid("the address must start with http:// or https://"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(PolicyError::InvalidScheme(scheme.to_owned()));
    }
    let url = url::Url::parse(address).map_err(|e| invalid(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the address has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_redacted_and_recognised_when_sent_back() {
        let cases = [
            (
                TargetKind::Http,
                "https://h.example/in",
                "https://h.example/in",
            ),
            (
                TargetKind::Http,
                "https://ci:p%40ss@h.example:8443/in?token=t0k&x=&flag#frag",
                "https://********@h.example:8443/in?token=********&x=&********#********",
            ),
            (
                TargetKind::Http,
                "http://only-user@h.example",
                "http://********@h.example",
            ),
            (
                TargetKind::Slack,
                "https://hooks.slack.com/services/T000/B000/XXXX",
                "https://hooks.slack.com/services/********",
            ),
            (
                TargetKind::Slack,
                "https://chat.example/hook/XXXX?x=1",
                "https://chat.example/********?x=********",
            ),
        ];
        for (kind, address, redacted) in cases {
            let mut target = http(address);
            target.kind = kind;
            assert_eq!(target.redacted_address(), redacted, "{address}");
            assert_eq!(
                target.is_redacted_address_of(redacted),
                redacted != address,
                "{address}"
            );
            assert!(!target.is_redacted_address_of(address));
            assert!(!format!("{target:?}").contains("XXXX"), "{target:?}");
        }
    }

    fn http(address: &str) -> Target {
        Target {
            kind: TargetKind::Http,
            address: address.to_owned(),
            auth_header: None,
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: None,
            headers: BTreeMap::new(),
        }
    }

    fn spec() -> PolicySpec {
        PolicySpec {
            name: "hook".into(),
            description: String::new(),
            targets: vec![http("https://example.com/hook")],
            event_types: vec![EventType::PushArtifact],
            filters: Filters::default(),
            creator: "admin".into(),
            enabled: true,
        }
    }

    /// Applies `change` to a valid spec and checks the validation outcome: `Ok(())` or the message.
    fn check(change: impl FnOnce(&mut PolicySpec), expected: Result<(), &str>) {
        let mut spec = spec();
        change(&mut spec);
        let got = spec.validate().map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "spec: {spec:?}");
    }

    fn with_header(name: &str, value: &str) -> impl FnOnce(&mut PolicySpec) {
        let (name, value) = (name.to_owned(), value.to_owned());
        move |s| {
            s.targets[0].headers.insert(name, value);
        }
    }

    #[test]
    fn harbor_validation_messages() {
        check(|_| {}, Ok(()));
        check(|s| s.name = " ".into(), Err("name is required"));
        check(
            |s| s.name = "x".repeat(257),
            Err("name is too long: at most 256 characters"),
        );
        check(|s| s.event_types.clear(), Err("empty event type"));
        check(
            |s| s.targets.clear(),
            Err("empty notification target with policy hook"),
        );
        check(
            |s| s.targets[0].address = "ftp://example.com".into(),
            Err("invalid scheme: ftp"),
        );
        check(
            |s| s.targets[0].address = "HTTP://example.com".into(),
            Err("invalid scheme: HTTP"),
        );
        check(
            |s| {
                s.targets[0].kind = TargetKind::Slack;
                s.targets[0].payload_format = PayloadFormat::CloudEvents;
            },
            Err("set payload format is not allowed for slack"),
        );
        check(
            |s| s.targets[0].payload_format = PayloadFormat::CloudEvents,
            Ok(()),
        );
        check(|s| s.targets[0].kind = TargetKind::Slack, Ok(()));
    }

    #[test]
    fn addresses() {
        check(
            |s| s.targets[0].address = "http://127.0.0.1:9/x?a=b".into(),
            Ok(()),
        );
        check(
            |s| s.targets[0].address = "https://user:pw@example.com".into(),
            Ok(()),
        );
        check(
            |s| s.targets[0].address = "example.com/hook".into(),
            Err("invalid address \"example.com/hook\": the address must start with http:// or https://"),
        );
        check(
            |s| s.targets[0].address = String::new(),
            Err("invalid address \"\": the address is empty"),
        );
        check(
            |s| s.targets[0].address = " http://example.com".into(),
            Err("invalid address \" http://example.com\": the address has leading or trailing whitespace"),
        );
        check(
            |s| s.targets[0].address = "http://".into(),
            Err("invalid address \"http://\": empty host"),
        );
        check(
            |s| s.targets[0].address = "http://exa mple.com/".into(),
            Err("invalid address \"http://exa mple.com/\": invalid international domain name"),
        );
        check(
            |s| s.targets[0].address = "http://example.com:99999/".into(),
            Err("invalid address \"http://example.com:99999/\": invalid port number"),
        );
    }

    #[test]
    fn custom_headers() {
        check(with_header("X-Token", "abc 123"), Ok(()));
        check(with_header("Authorization", "Bearer x"), Ok(()));
        check(
            with_header("Bad Name", "x"),
            Err("invalid header name \"Bad Name\""),
        );
        check(with_header("", "x"), Err("invalid header name \"\""));
        check(
            with_header("X-Token", "line\nbreak"),
            Err("invalid value for header X-Token: header values must be visible ASCII without line breaks"),
        );
        for reserved in [
            "Content-Type",
            "user-agent",
            "Content-Length",
            "Host",
            "Keep-Alive",
            "Upgrade",
            "TE",
            "webhook-signature",
            "Webhook-Id",
        ] {
            check(
                with_header(reserved, "x"),
                Err(&format!(
                    "header {reserved} is set by regrelay and cannot be overridden by a custom header"
                )),
            );
        }
        check(
            |s| {
                s.targets[0].headers.insert("X-A".into(), "1".into());
                s.targets[0].headers.insert("x-a".into(), "2".into());
            },
            Err("header x-a is set more than once (header names are case-insensitive)"),
        );
        check(
            |s| {
                s.targets[0].auth_header = Some("Basic abc".into());
                s.targets[0].headers.insert("authorization".into(), "x".into());
            },
            Err("header authorization conflicts with auth_header, which is sent as Authorization; set only one"),
        );
    }

    #[test]
    fn filters_are_validated() {
        check(
            |s| s.filters.repositories = vec!["foo/**".into(), "{a,b}*".into()],
            Ok(()),
        );
        check(
            |s| s.filters.repositories = vec!["foo/[".into()],
            Err("invalid repository filter \"foo/[\": unclosed character class; missing ']'"),
        );
        check(
            |s| s.filters.tags = vec!["{a,b".into()],
            Err("invalid tag filter \"{a,b\": unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)"),
        );
        check(
            |s| s.filters.tags = vec![" ".into()],
            Err("invalid tag filter \" \": empty pattern"),
        );
    }

    #[test]
    fn control_characters_are_refused_where_they_would_be_stored() {
        check(
            |s| s.name = "a\u{0}b".into(),
            Err("name contains a control character"),
        );
        check(
            |s| s.name = "a\tb".into(),
            Err("name contains a control character"),
        );
        check(
            |s| s.description = "x\u{0}".into(),
            Err("description contains a control character"),
        );
        check(|s| s.description = "one\ntwo\r\n\tthree".into(), Ok(()));
        check(
            |s| s.targets[0].address = "https://exa\nmple.com/".into(),
            Err("address contains a control character"),
        );
        check(
            |s| s.targets[0].address = "https://example.com/\u{7f}".into(),
            Err("address contains a control character"),
        );
        check(
            |s| s.targets[0].secret = Some("s\u{0}".into()),
            Err("secret contains a control character"),
        );
        check(
            |s| s.filters.repositories = vec!["a\u{0}".into()],
            Err("a repository filter contains a control character"),
        );
        check(
            |s| s.filters.tags = vec!["v\u{1b}".into()],
            Err("a tag filter contains a control character"),
        );
        check(
            with_header("X-A", "tab\there"),
            Err("invalid value for header X-A: header values must be visible ASCII without line breaks"),
        );
    }

    #[test]
    fn auth_header_must_be_a_header_value() {
        for bad in ["a\nb", "a\r\nX-Injected: 1", "\u{0}", "x\u{7f}"] {
            check(
                |s| s.targets[0].auth_header = Some(bad.into()),
                Err("invalid auth_header: header values must be visible ASCII without line breaks"),
            );
        }
        check(
            |s| s.targets[0].auth_header = Some("Bearer abc.def".into()),
            Ok(()),
        );
        check(|s| s.targets[0].auth_header = Some(String::new()), Ok(()));
    }

    #[test]
    fn maxima() {
        let target = |i: usize| http(&format!("https://example.com/{i}"));
        check(
            |s| s.targets = (0..MAX_TARGETS).map(target).collect(),
            Ok(()),
        );
        check(
            |s| s.targets = (0..=MAX_TARGETS).map(target).collect(),
            Err("too many targets: at most 32"),
        );
        check(
            |s| s.targets[0].address = format!("https://example.com/{}", "a".repeat(2048)),
            Err("address is too long: at most 2048 characters"),
        );
        check(
            |s| s.description = "é".repeat(MAX_DESCRIPTION_CHARS),
            Ok(()),
        );
        check(
            |s| s.description = "d".repeat(MAX_DESCRIPTION_CHARS + 1),
            Err("description is too long: at most 4096 characters"),
        );
        check(
            |s| {
                s.targets[0].headers = (0..=MAX_HEADERS)
                    .map(|i| (format!("X-H{i}"), "v".to_owned()))
                    .collect();
            },
            Err("too many headers on a target: at most 32"),
        );
        check(
            with_header(&"X".repeat(257), "v"),
            Err(&format!(
                "header name \"{}…\" is too long: at most 256 characters",
                "X".repeat(ECHO_MAX_CHARS)
            )),
        );
        check(
            with_header("X-Big", &"v".repeat(MAX_HEADER_VALUE_BYTES)),
            Ok(()),
        );
        check(
            with_header("X-Big", &"v".repeat(MAX_HEADER_VALUE_BYTES + 1)),
            Err("the value of header X-Big is too long: at most 4096 bytes"),
        );
        check(
            |s| s.targets[0].auth_header = Some("v".repeat(MAX_HEADER_VALUE_BYTES + 1)),
            Err("auth_header is too long: at most 4096 bytes"),
        );
        check(
            |s| s.targets[0].secret = Some("v".repeat(MAX_HEADER_VALUE_BYTES + 1)),
            Err("secret is too long: at most 4096 bytes"),
        );
        check(
            |s| s.filters.tags = (0..MAX_FILTER_PATTERNS).map(|i| format!("v{i}")).collect(),
            Ok(()),
        );
        check(
            |s| s.filters.tags = (0..=MAX_FILTER_PATTERNS).map(|i| format!("v{i}")).collect(),
            Err("too many tag filters: at most 64"),
        );
        check(
            |s| s.filters.repositories = vec!["r".repeat(MAX_FILTER_PATTERN_CHARS + 1)],
            Err("a repository filter is too long: at most 256 characters"),
        );
    }

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

    #[test]
    fn kind_and_format_parsing() {
        assert_eq!(TargetKind::parse("http"), Ok(TargetKind::Http));
        assert_eq!(TargetKind::parse("slack"), Ok(TargetKind::Slack));
        for bad in ["HTTP", "", "email"] {
            assert_eq!(
                TargetKind::parse(bad).map_err(|e| e.to_string()),
                Err("unsupported target type".to_owned())
            );
        }
        assert_eq!(PayloadFormat::parse(""), Ok(PayloadFormat::Default));
        assert_eq!(PayloadFormat::parse("Default"), Ok(PayloadFormat::Default));
        assert_eq!(
            PayloadFormat::parse("CloudEvents"),
            Ok(PayloadFormat::CloudEvents)
        );
        assert_eq!(
            PayloadFormat::parse("cloudevents").map_err(|e| e.to_string()),
            Err("unsupported payload format type: cloudevents".to_owned())
        );
        for kind in [TargetKind::Http, TargetKind::Slack] {
            assert_eq!(TargetKind::parse(kind.as_str()), Ok(kind));
        }
        for format in [PayloadFormat::Default, PayloadFormat::CloudEvents] {
            assert_eq!(PayloadFormat::parse(format.as_str()), Ok(format));
        }
    }

    #[test]
    fn event_types_parse_dedup_and_keep_order() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_event_types(&names(&["PULL_ARTIFACT", "PUSH_ARTIFACT", "PULL_ARTIFACT"])),
            Ok(vec![EventType::PullArtifact, EventType::PushArtifact])
        );
        assert_eq!(parse_event_types(&[]), Ok(vec![]));
        assert_eq!(
            parse_event_types(&names(&["PUSH_ARTIFACT", "push_artifact"]))
                .map_err(|e| e.to_string()),
            Err("unsupported event type push_artifact".to_owned())
        );
    }

    #[test]
    fn target_storage_shape_and_debug_redaction() {
        let mut target = http("https://example.com");
        target.auth_header = Some("Basic c2VjcmV0".into());
        target.secret = Some("whsec_abc".into());
        target.headers.insert("X-Key".into(), "hidden-value".into());
        let json = serde_json::to_value(&target).unwrap();
        assert_eq!(json["kind"], "http");
        assert_eq!(json["payload_format"], "Default");
        let back: Target = serde_json::from_value(json).unwrap();
        assert_eq!(back, target);
        // Older rows without the optional fields still decode.
        let minimal: Target =
            serde_json::from_str(r#"{"kind":"slack","address":"https://hooks.slack.com/x"}"#)
                .unwrap();
        assert_eq!(minimal.kind, TargetKind::Slack);
        assert!(minimal.headers.is_empty());
        let debug = format!("{target:?}");
        for secret in ["c2VjcmV0", "whsec_abc", "hidden-value"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("X-Key"), "{debug}");
    }
}
