//! [`PolicySpec::validate`] and [`Target::validate`]: Harbor's rules with Harbor's messages, and
//! regrelay's own (the maxima, no control characters, custom headers, filters).

use std::collections::BTreeSet;

use super::error::PolicyError;
use super::filter::CompiledFilters;
use super::limits::{
    MAX_ADDRESS_CHARS, MAX_DESCRIPTION_CHARS, MAX_FILTER_PATTERNS, MAX_FILTER_PATTERN_CHARS,
    MAX_HEADERS, MAX_HEADER_NAME_CHARS, MAX_HEADER_VALUE_BYTES, MAX_NAME_CHARS, MAX_OPTION_BYTES,
    MAX_TARGETS, MAX_TEMPLATE_BYTES,
};
use super::model::{is_sealed, PayloadFormat, PolicySpec, Target, TargetKind};

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

/// `Err(ControlCharacter(field))` when `text` holds one.
fn no_control(text: &str, field: &'static str) -> Result<(), PolicyError> {
    if text.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacter(field));
    }
    Ok(())
}

impl Target {
    /// The settings of a chat or template type as `regrelay_targets` takes them (`None` for
    /// Harbor's types). A credential still sealed (it did not open) is given as a placeholder of
    /// the right shape: it was checked when it was written, and it is never sent.
    pub fn vendor_settings(&self) -> Option<regrelay_targets::TargetSettings> {
        self.kind.vendor()?;
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let bot_token = text(&self.options.bot_token).map(|token| {
            if is_sealed(&token) {
                "0:sealed".to_owned()
            } else {
                token
            }
        });
        Some(regrelay_targets::TargetSettings {
            address: Some(self.address.clone()).filter(|a| !a.is_empty()),
            bot_token,
            chat_id: text(&self.options.chat_id),
            message_thread_id: self.options.message_thread_id,
            secret: text(&self.secret),
            template: text(&self.options.template),
            content_type: text(&self.options.content_type),
            method: text(&self.options.method),
            rate_limit: text(&self.options.rate_limit),
            auth_header: text(&self.auth_header),
            headers: self.headers.clone(),
            payload_format: match self.payload_format {
                PayloadFormat::Default => None,
                other => Some(other.as_str().to_owned()),
            },
        })
    }

    /// The chat or template target this is, validated (its template compiled): what the
    /// consumer sends through. `None` for Harbor's types.
    pub fn vendor_target(
        &self,
    ) -> Option<Result<regrelay_targets::Target, regrelay_targets::SettingsError>> {
        let kind = self.kind.vendor()?;
        let settings = self.vendor_settings()?;
        Some(regrelay_targets::Target::new(kind, settings))
    }

    /// Checks the address, the payload format and the custom headers; for regrelay's own types,
    /// also their type's rules.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let options = &self.options;
        if options
            .template
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TEMPLATE_BYTES)
        {
            return Err(PolicyError::TemplateTooLong);
        }
        for (field, value) in [
            ("bot_token", &options.bot_token),
            ("chat_id", &options.chat_id),
            ("content_type", &options.content_type),
            ("method", &options.method),
            ("rate_limit", &options.rate_limit),
        ] {
            let Some(value) = value.as_deref() else {
                continue;
            };
            if value.len() > MAX_OPTION_BYTES && !is_sealed(value) {
                return Err(PolicyError::OptionTooLong(field));
            }
            no_control(value, field)?;
        }
        if let Some(template) = options.template.as_deref() {
            // Line breaks and tabs are a template's layout; other control characters are not.
            if template
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            {
                return Err(PolicyError::ControlCharacter("template"));
            }
        }
        if let Some(result) = self.vendor_target() {
            result?;
        } else {
            // Harbor's types take none of the chat options; `rate_limit` is for every type.
            if let Some(field) = self
                .options
                .present()
                .into_iter()
                .find(|f| *f != "rate_limit")
            {
                return Err(PolicyError::OptionNotAllowed {
                    field,
                    kind: self.kind.as_str(),
                });
            }
            if let Some(limit) = self.options.rate_limit.as_deref().filter(|l| !l.is_empty()) {
                limit
                    .parse::<regrelay_targets::RateLimit>()
                    .map_err(regrelay_targets::SettingsError::from)?;
            }
        }
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
    use std::collections::BTreeMap;

    use regrelay_events::EventType;

    use super::super::limits::ECHO_MAX_CHARS;
    use super::super::model::Filters;

    fn http(address: &str) -> Target {
        Target {
            kind: TargetKind::Http,
            address: address.to_owned(),
            auth_header: None,
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: None,
            headers: BTreeMap::new(),
            options: Default::default(),
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
}
