//! The templated custom webhook (`template` type): any http(s) receiver, with the body written
//! by the policy's template (JFrog's "custom webhooks", seed 003).
//!
//! Request: `{method} {address}` (`POST` by default; `PUT` or `PATCH`), `Content-Type` the
//! target's `content_type` (default `application/json`), the body the template's output as is,
//! `Authorization` the target's `auth_header` verbatim, the target's custom `headers`, and with
//! a `secret` the Standard Webhooks signature headers like an `http` target
//! ([`Request::standard_webhooks`]; the consumer signs).
//!
//! Outcome: the HTTP target's rules (SPEC §3): 2xx delivered; 408, 429 and 5xx retried
//! (`Retry-After` on 429 and 503); 3xx and other 4xx dead-lettered.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::outcome::{body_excerpt, by_status, Answer, Outcome};
use crate::settings::{Field, SettingsError, TargetSettings};
use crate::{Content, PrepareError, RateLimit, Request, Target, TargetKind, Vendor};

/// The default `Content-Type`.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Headers a target's custom `headers` cannot set: the body's type, the client's name and the
/// signature are regrelay's.
const RESERVED: [&str; 6] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
];

/// The templated webhook target type.
pub struct TemplateWebhook;

impl Vendor for TemplateWebhook {
    fn kind(&self) -> TargetKind {
        TargetKind::Template
    }

    fn fields(&self) -> &'static [Field] {
        &[
            Field::Template,
            Field::ContentType,
            Field::Method,
            Field::AuthHeader,
            Field::Headers,
            Field::Secret,
            Field::RateLimit,
        ]
    }

    fn required(&self) -> &'static [Field] {
        &[Field::Template]
    }

    fn check(&self, settings: &TargetSettings) -> Result<(), SettingsError> {
        method(settings)?;
        if let Some(content_type) = settings.get(Field::ContentType) {
            let valid = HeaderValue::from_str(content_type).is_ok()
                && content_type.contains('/')
                && !content_type.chars().any(char::is_control);
            if !valid {
                return Err(SettingsError::InvalidContentType);
            }
        }
        if let Some(auth) = settings.get(Field::AuthHeader) {
            if HeaderValue::from_str(auth).is_err() {
                return Err(SettingsError::InvalidHeader(
                    "auth_header".into(),
                    "not a valid header value",
                ));
            }
        }
        for (name, value) in &settings.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(SettingsError::InvalidHeader(
                    name.clone(),
                    "not a valid header name",
                ));
            }
            if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(SettingsError::InvalidHeader(
                    name.clone(),
                    "regrelay sets this header itself",
                ));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(SettingsError::InvalidHeader(
                    name.clone(),
                    "not a valid header value",
                ));
            }
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
        let body = match content {
            Content::Custom(text) => text.as_bytes().to_vec(),
            // Validation requires a template, so there is no built-in body; the event itself is
            // the sensible fallback should one ever be asked for.
            Content::Builtin(_) => {
                return Err(PrepareError::Build(
                    "a template target needs a template".into(),
                ))
            }
        };
        let build = |what: &str| PrepareError::Build(format!("invalid {what}"));
        let mut headers = HeaderMap::new();
        let content_type = settings
            .get(Field::ContentType)
            .unwrap_or(DEFAULT_CONTENT_TYPE);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).map_err(|_| build("content_type"))?,
        );
        let mut credentials = Vec::new();
        if let Some(auth) = settings.get(Field::AuthHeader) {
            let mut value = HeaderValue::from_str(auth).map_err(|_| build("auth_header"))?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
            credentials.push(auth.to_owned());
        }
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| build("header"))?;
            let mut value = HeaderValue::from_str(value).map_err(|_| build("header"))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        Ok(Request {
            method: method(settings).map_err(|e| PrepareError::Build(e.to_string()))?,
            url: target.address().clone(),
            headers,
            body,
            standard_webhooks: settings.get(Field::Secret).is_some(),
            credentials,
        })
    }

    fn outcome(&self, answer: &Answer<'_>) -> Outcome {
        by_status(answer, body_excerpt(answer.body))
    }

    fn default_rate_limits(&self, _settings: &TargetSettings) -> Vec<RateLimit> {
        Vec::new()
    }
}

/// `POST` (default), `PUT` or `PATCH`, case-insensitive.
fn method(settings: &TargetSettings) -> Result<Method, SettingsError> {
    match settings
        .get(Field::Method)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("POST") => Ok(Method::POST),
        Some("PUT") => Ok(Method::PUT),
        Some("PATCH") => Ok(Method::PATCH),
        Some(_) => Err(SettingsError::UnsupportedMethod(
            settings.get(Field::Method).unwrap_or("").to_owned(),
        )),
    }
}
