//! The webhook policy model and its validation. No I/O.
//!
//! - [`PolicySpec`]: what a client writes; [`PolicySpec::validate`] applies Harbor's rules, with
//!   Harbor's messages, and regrelay's own (custom headers, filters).
//! - [`Policy`]: a stored policy, as `api` shows it and `consumer` matches and delivers it.
//! - [`Target`], [`TargetKind`], [`PayloadFormat`]: where a policy delivers, and in which format.
//! - [`Filters`], [`CompiledFilters`] (module `filter`): repository and tag globs with TCR's rules.
//! - [`parse_event_types`]: event type names to [`EventType`]s, Harbor's message on an unknown one.
//!
//! Design constraints:
//! - Messages are Harbor's, word for word, where Harbor has one: Harbor's API clients show them to
//!   users, and scripts match on them.
//! - Credentials (`auth_header`, `secret`, custom header values) are kept as given, because the
//!   consumer must send them; `Debug` of a [`Target`] redacts them, so a logged policy leaks nothing.
//!   The API shows [`REDACTED`] in their place.
//! - A spec that passes [`PolicySpec::validate`] is deliverable: its addresses parse as http(s) URLs,
//!   its headers are valid HTTP and cannot override the headers regrelay sets, its globs compile.

mod filter;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use regrelay_events::{EventType, UnknownEventType};
use serde::{Deserialize, Serialize};

use crate::projects::Project;

pub use filter::CompiledFilters;

/// What the API shows instead of a credential (`auth_header`, the secret, custom header values).
pub const REDACTED: &str = "********";

/// Longest policy name accepted (Harbor's column is `varchar(256)`).
pub const MAX_NAME_CHARS: usize = 256;

/// Headers regrelay sets itself on every delivery, or that frame the request; a target's custom
/// headers may not replace them. `webhook-*` (the signature headers) are refused too.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "user-agent",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
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
    #[error("invalid scheme: {0}")]
    InvalidScheme(String),
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("unsupported target type")]
    UnsupportedTargetType,
    #[error("set payload format is not allowed for slack")]
    PayloadFormatForSlack,
    #[error("unsupported payload format type: {0}")]
    UnsupportedPayloadFormat(String),
    #[error("invalid header name {0:?}")]
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
    #[error("invalid repository filter {pattern:?}: {reason}")]
    InvalidRepositoryFilter { pattern: String, reason: String },
    #[error("invalid tag filter {pattern:?}: {reason}")]
    InvalidTagFilter { pattern: String, reason: String },
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
/// credentials changes.
fn redact_address(kind: TargetKind, address: &str) -> String {
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
        validate_address(&self.address)?;
        if self.kind == TargetKind::Slack && self.payload_format != PayloadFormat::Default {
            return Err(PolicyError::PayloadFormatForSlack);
        }
        self.validate_headers()
    }

    fn validate_headers(&self) -> Result<(), PolicyError> {
        let has_auth_header = self.kind == TargetKind::Http
            && self.auth_header.as_deref().is_some_and(|h| !h.is_empty());
        let mut seen = BTreeSet::new();
        for (name, value) in &self.headers {
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
            http::HeaderValue::from_str(value)
                .map_err(|_| PolicyError::InvalidHeaderValue(name.clone()))?;
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
        if self.event_types.is_empty() {
            return Err(PolicyError::EmptyEventTypes);
        }
        if self.targets.is_empty() {
            return Err(PolicyError::EmptyTargets(self.name.clone()));
        }
        for target in &self.targets {
            target.validate()?;
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
