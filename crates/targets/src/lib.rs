//! Chat and templated webhook targets (issue 13): what regrelay sends to Telegram, Teams,
//! Discord, DingTalk, Feishu, WeCom and custom templated webhooks, and how it reads their
//! answers. No I/O: every function takes values (an event, settings, the time, an answer) and
//! returns values (a request, an outcome), so each rule is table-tested without a network.
//!
//! - [`escape`]: one escaper per message dialect (Telegram MarkdownV2, Slack, DingTalk, WeCom,
//!   Teams, Discord, Feishu, JSON).
//! - [`message`]: the facts of an event a message needs, and the dialect-neutral [`Summary`].
//! - [`templates`]: the sandboxed template language ([`compile`], [`render`], [`Variables`]).
//! - [`settings`]: a target's settings as plain data and their validation messages.
//! - [`outcome`]: [`Outcome`] (Delivered / Retry / DeadLetter) with closed reason sets, the
//!   shared status rules and credential scrubbing.
//! - [`rate`]: [`RateLimit`] and the `rate_limit` parser.
//! - [`signing`]: DingTalk's and Feishu's signatures.
//! - [`shorten`]: cutting text to a vendor's limit with a visible marker.
//! - One file per type: [`telegram`], [`teams`], [`discord`], [`dingtalk`], [`feishu`],
//!   [`wecom`], [`template`].
//!
//! # The seam: a kind of target
//!
//! Each type is one [`Vendor`] implementation in its own file plus one row in
//! [`TargetKind::vendor`]: adding a vendor touches nothing else. A [`Vendor`] says
//!
//! 1. which settings it takes ([`Vendor::fields`], [`Vendor::required`], [`Vendor::check`]);
//! 2. how a message becomes a request ([`Vendor::request`]: the built-in message from a
//!    [`Summary`] or a custom template's text, shortened to the vendor's limit, plus method, URL,
//!    headers, body and signature, given the time);
//! 3. what the answer means ([`Vendor::outcome`]), and when to pause after it
//!    ([`Vendor::pause_after`], Discord's rate-limit headers);
//! 4. its built-in rate limits ([`Vendor::default_rate_limits`]) and what they are counted per
//!    ([`Vendor::rate_scope`]).
//!
//! The consumer holds a validated [`Target`] (built once per policy target by [`Target::new`],
//! which also compiles its template) and calls [`Target::prepare`] per attempt and
//! [`Target::outcome`] per answer; transport failures stay with the consumer's `classify`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Method};
use regrelay_events::RegistryEvent;
use sha2::{Digest, Sha256};

pub mod dingtalk;
pub mod discord;
pub mod escape;
pub mod feishu;
pub mod message;
pub mod outcome;
pub mod rate;
pub mod settings;
pub mod shorten;
pub mod signing;
pub mod teams;
pub mod telegram;
pub mod template;
pub mod templates;
pub mod wecom;

pub use message::{Fact, Message, Summary};
pub use outcome::{Answer, DeadLetterReason, Outcome, RetryReason};
pub use rate::{RateLimit, RateLimitError};
pub use settings::{Field, SettingsError, TargetSettings};
pub use templates::{
    compile, render, DeliveryContext, RenderError, RenderErrorKind, Template, TemplateError,
    Variables,
};

/// The label of the last fact of a shortened built-in message.
pub const TRUNCATION_LABEL: &str = "…";

/// The `Content-Type` of every chat type's body.
pub const JSON: &str = "application/json";

/// The target types this crate knows, named as `targets[].type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    Telegram,
    Teams,
    Discord,
    DingTalk,
    Feishu,
    WeCom,
    Template,
}

impl TargetKind {
    pub const ALL: [TargetKind; 7] = [
        TargetKind::Telegram,
        TargetKind::Teams,
        TargetKind::Discord,
        TargetKind::DingTalk,
        TargetKind::Feishu,
        TargetKind::WeCom,
        TargetKind::Template,
    ];

    /// The chat types: those with a built-in message.
    pub const CHAT: [TargetKind; 6] = [
        TargetKind::Telegram,
        TargetKind::Teams,
        TargetKind::Discord,
        TargetKind::DingTalk,
        TargetKind::Feishu,
        TargetKind::WeCom,
    ];

    /// The policy's `type` string (also the `target_type` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Telegram => "telegram",
            TargetKind::Teams => "teams",
            TargetKind::Discord => "discord",
            TargetKind::DingTalk => "dingtalk",
            TargetKind::Feishu => "feishu",
            TargetKind::WeCom => "wecom",
            TargetKind::Template => "template",
        }
    }

    /// The name history stores as Harbor's `vendor_type` (`WEBHOOK` and `SLACK` are Harbor's).
    pub fn vendor_type(self) -> &'static str {
        match self {
            TargetKind::Telegram => "TELEGRAM",
            TargetKind::Teams => "TEAMS",
            TargetKind::Discord => "DISCORD",
            TargetKind::DingTalk => "DINGTALK",
            TargetKind::Feishu => "FEISHU",
            TargetKind::WeCom => "WECOM",
            TargetKind::Template => "TEMPLATE",
        }
    }

    /// The kind a policy's `type` names; `None` for `http`, `slack` and unknown names.
    pub fn parse(name: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The table: each kind's implementation.
    pub fn vendor(self) -> &'static dyn Vendor {
        match self {
            TargetKind::Telegram => &telegram::Telegram,
            TargetKind::Teams => &teams::Teams,
            TargetKind::Discord => &discord::Discord,
            TargetKind::DingTalk => &dingtalk::DingTalk,
            TargetKind::Feishu => &feishu::Feishu,
            TargetKind::WeCom => &wecom::WeCom,
            TargetKind::Template => &template::TemplateWebhook,
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a message says: the built-in message of the event, or a custom template's output.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    Builtin(&'a Summary),
    Custom(&'a str),
}

/// One HTTP request to a vendor, ready to send. The consumer adds `User-Agent` and, when
/// [`standard_webhooks`](Self::standard_webhooks) is set, the Standard Webhooks signature
/// headers over `body`.
#[derive(Clone)]
pub struct Request {
    pub method: Method,
    pub url: url::Url,
    /// Every header to send, `Content-Type` included.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The `template` type with a `secret`: sign like an `http` target (SPEC §3).
    pub standard_webhooks: bool,
    /// Every credential in this request (token, URL key, signature, auth header): scrubbed
    /// from anything logged, stored or shown.
    pub credentials: Vec<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.redacted_url())
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The `Content-Type` header's value.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The URL with every credential replaced, for logs and traces.
    pub fn redacted_url(&self) -> String {
        outcome::scrub(self.url.as_str(), &self.credentials)
    }
}

/// Why a request could not be made for one delivery. The consumer dead-letters it with reason
/// `unrenderable` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A value that cannot go into a header or URL (only from settings that bypassed
    /// validation).
    #[error("cannot build the request: {0}")]
    Build(String),
}

/// One kind of target. See the crate docs for the seam's design.
pub trait Vendor: Send + Sync {
    fn kind(&self) -> TargetKind;

    /// The fields this type accepts besides `address` (which every type takes).
    fn fields(&self) -> &'static [Field];

    /// The fields this type cannot do without (besides `address`, unless it has a default).
    fn required(&self) -> &'static [Field] {
        &[]
    }

    /// The address used when the policy gives none.
    fn default_address(&self) -> Option<&'static str> {
        None
    }

    /// Checks beyond presence: a chat id's shape, a method.
    fn check(&self, _settings: &TargetSettings) -> Result<(), SettingsError> {
        Ok(())
    }

    /// The request for `content`, shortened to the vendor's limits. `address` is the validated
    /// address (or the default); `now` dates signatures.
    fn request(
        &self,
        target: &Target,
        content: Content<'_>,
        now: DateTime<Utc>,
    ) -> Result<Request, PrepareError>;

    /// What the answer means. The message may still hold credentials: [`Target::outcome`]
    /// scrubs it.
    fn outcome(&self, answer: &Answer<'_>) -> Outcome;

    /// How long to hold the next request to this target after `answer`, when the vendor says
    /// (Discord's `X-RateLimit-*` headers).
    fn pause_after(&self, _answer: &Answer<'_>) -> Option<Duration> {
        None
    }

    /// The built-in rate limits, all of which apply.
    fn default_rate_limits(&self, settings: &TargetSettings) -> Vec<RateLimit>;

    /// What the limits are counted per, as text that may hold credentials (it is hashed by
    /// [`Target::rate_key`]): the webhook URL, or Telegram's bot and chat.
    fn rate_scope(&self, target: &Target) -> String {
        target.address().to_string()
    }
}

/// A validated target: settings that passed their type's checks, the address parsed and the
/// template compiled. Build one per policy target and keep it.
#[derive(Debug, Clone)]
pub struct Target {
    kind: TargetKind,
    settings: TargetSettings,
    /// The settings' address, or the type's default, parsed.
    address: url::Url,
    /// The compiled `template`, when the settings have one.
    template: Option<Template>,
    /// The limits in force: the settings' `rate_limit`, or the type's defaults.
    rate_limits: Vec<RateLimit>,
}

impl Target {
    /// Validates `settings` for `kind` (the messages are the policy API's `400`s), compiles the
    /// template and fixes the rate limits.
    pub fn new(kind: TargetKind, settings: TargetSettings) -> Result<Target, SettingsError> {
        let vendor = kind.vendor();
        for field in settings.present() {
            if field != Field::Address && !vendor.fields().contains(&field) {
                return Err(SettingsError::NotAllowed { field, kind });
            }
        }
        for field in vendor.required() {
            let present = settings.present().contains(field);
            if !present {
                return Err(SettingsError::Required {
                    field: *field,
                    kind,
                });
            }
        }
        let address = match (settings.get(Field::Address), vendor.default_address()) {
            (Some(address), _) | (None, Some(address)) => settings::parse_address(address)?,
            (None, None) => {
                return Err(SettingsError::Required {
                    field: Field::Address,
                    kind,
                })
            }
        };
        vendor.check(&settings)?;
        let template = settings.get(Field::Template).map(compile).transpose()?;
        let rate_limits = match settings.get(Field::RateLimit) {
            Some(text) => vec![text.parse::<RateLimit>()?],
            None => vendor.default_rate_limits(&settings),
        };
        Ok(Target {
            kind,
            settings,
            address,
            template,
            rate_limits,
        })
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    pub fn settings(&self) -> &TargetSettings {
        &self.settings
    }

    /// The address requests go to (the type's default when the settings have none).
    pub fn address(&self) -> &url::Url {
        &self.address
    }

    /// The custom template, when there is one.
    pub fn template(&self) -> Option<&Template> {
        self.template.as_ref()
    }

    /// The request for one delivery of `event` at `now`: the custom template's output when the
    /// target has one (a render error is [`PrepareError::Render`]), else the built-in message.
    pub fn prepare(
        &self,
        event: &RegistryEvent,
        context: &DeliveryContext,
        now: DateTime<Utc>,
    ) -> Result<Request, PrepareError> {
        let vendor = self.kind.vendor();
        let mut request = match &self.template {
            Some(template) => {
                let text = render(template, &Variables::new(event, context))?;
                // Every chat vendor refuses an empty message; say so before sending it.
                if self.kind != TargetKind::Template && text.trim().is_empty() {
                    return Err(PrepareError::Render(RenderError {
                        kind: RenderErrorKind::Other,
                        message: "the template rendered an empty message".into(),
                    }));
                }
                vendor.request(self, Content::Custom(&text), now)?
            }
            None => {
                let summary = Message::from_event(event).summary();
                vendor.request(self, Content::Builtin(&summary), now)?
            }
        };
        request.credentials.extend(self.credentials());
        Ok(request)
    }

    /// What `answer` to `request` means, its vendor message scrubbed of every credential of the
    /// target and the request.
    pub fn outcome(&self, request: &Request, answer: &Answer<'_>) -> Outcome {
        let mut credentials = self.credentials();
        credentials.extend(request.credentials.iter().cloned());
        self.kind.vendor().outcome(answer).scrubbed(&credentials)
    }

    /// How long to hold the next request to this target after `answer`, when the vendor says.
    pub fn pause_after(&self, answer: &Answer<'_>) -> Option<Duration> {
        self.kind.vendor().pause_after(answer)
    }

    /// The limits in force, all of which apply.
    pub fn rate_limits(&self) -> &[RateLimit] {
        &self.rate_limits
    }

    /// The key the limits are counted under, shared by every consumer process and every policy
    /// that reaches the same chat or webhook: `<type>:<hex>`, a hash, so no credential is
    /// stored with the counters.
    pub fn rate_key(&self) -> String {
        let scope = self.kind.vendor().rate_scope(self);
        let digest = Sha256::digest(scope.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.kind)
    }

    /// Every credential of the settings: the bot token, the secret, the auth header, custom
    /// header values, the address's query values and its long path segments (webhook ids and
    /// tokens live there).
    pub fn credentials(&self) -> Vec<String> {
        let mut out: Vec<String> = [Field::BotToken, Field::Secret, Field::AuthHeader]
            .into_iter()
            .filter_map(|f| self.settings.get(f).map(str::to_owned))
            .collect();
        out.extend(self.settings.headers.values().cloned());
        out.extend(self.address.query_pairs().map(|(_, v)| v.into_owned()));
        if let Some(segments) = self.address.path_segments() {
            out.extend(segments.filter(|s| s.len() >= 16).map(str::to_owned));
        }
        if let Some(password) = self.address.password() {
            out.push(password.to_owned());
        }
        out.retain(|c| !c.is_empty());
        out
    }
}

/// A JSON body and its headers.
pub(crate) fn json_request(
    method: Method,
    url: url::Url,
    body: &serde_json::Value,
    credentials: Vec<String>,
) -> Request {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    Request {
        method,
        url,
        headers,
        body: body.to_string().into_bytes(),
        standard_webhooks: false,
        credentials,
    }
}

/// The JSON body of an answer, when it is JSON.
pub(crate) fn json_body(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regrelay_events::samples::sample_event;
    use regrelay_events::EventType;
    use serde_json::Value;

    fn settings(address: &str) -> TargetSettings {
        TargetSettings {
            address: Some(address.into()),
            ..Default::default()
        }
    }

    fn telegram() -> TargetSettings {
        TargetSettings {
            bot_token: Some("123:abc".into()),
            chat_id: Some("-100".into()),
            ..Default::default()
        }
    }

    fn context() -> DeliveryContext {
        DeliveryContext {
            policy_id: 1,
            policy_name: "p".into(),
            project_id: None,
            delivery_id: "d".into(),
            event_id: "e".into(),
            target_type: "t".into(),
        }
    }

    #[test]
    fn validation_messages() {
        let ding = "https://oapi.dingtalk.com/robot/send?access_token=t";
        let table: Vec<(TargetKind, TargetSettings, &str)> = vec![
            (
                TargetKind::Telegram,
                TargetSettings {
                    chat_id: Some("-100".into()),
                    ..Default::default()
                },
                "bot_token is required for telegram targets",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    bot_token: Some("123:abc".into()),
                    ..Default::default()
                },
                "chat_id is required for telegram targets",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    chat_id: Some("group".into()),
                    ..telegram()
                },
                "invalid chat_id: expected a number such as -1001234567890 or @channelname",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    bot_token: Some("123:abc/../x".into()),
                    ..telegram()
                },
                "invalid bot_token: expected <bot id>:<token> as BotFather gives it",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    message_thread_id: Some(0),
                    ..telegram()
                },
                "invalid message_thread_id: expected a positive number",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    secret: Some("s".into()),
                    ..telegram()
                },
                "set secret is not allowed for telegram",
            ),
            (
                TargetKind::Telegram,
                TargetSettings {
                    address: Some("ftp://api.telegram.org".into()),
                    ..telegram()
                },
                "invalid scheme: ftp",
            ),
            (
                TargetKind::Teams,
                TargetSettings::default(),
                "address is required for teams targets",
            ),
            (
                TargetKind::Teams,
                TargetSettings {
                    bot_token: Some("123:abc".into()),
                    ..settings("https://x.logic.azure.com/w")
                },
                "set bot_token is not allowed for teams",
            ),
            (
                TargetKind::Teams,
                TargetSettings {
                    payload_format: Some("CloudEvents".into()),
                    ..settings("https://x.logic.azure.com/w")
                },
                "set payload_format is not allowed for teams",
            ),
            (
                TargetKind::Discord,
                TargetSettings {
                    auth_header: Some("Bearer x".into()),
                    ..settings("https://discord.com/api/webhooks/1/t")
                },
                "set auth_header is not allowed for discord",
            ),
            (
                TargetKind::DingTalk,
                settings("https://oapi.dingtalk.com/robot/send"),
                "invalid address: the address must carry the robot's access_token (?access_token=...)",
            ),
            (
                TargetKind::WeCom,
                settings("https://qyapi.weixin.qq.com/cgi-bin/webhook/send"),
                "invalid address: the address must carry the robot's key (?key=...)",
            ),
            (
                TargetKind::WeCom,
                TargetSettings {
                    secret: Some("s".into()),
                    ..settings("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
                },
                "set secret is not allowed for wecom",
            ),
            (
                TargetKind::DingTalk,
                TargetSettings {
                    rate_limit: Some("lots".into()),
                    ..settings(ding)
                },
                "invalid rate_limit \"lots\": no '/'; expected <count>/<unit> such as \"20/min\" or \"5/s\" (units: s, min, h)",
            ),
            (
                TargetKind::DingTalk,
                TargetSettings {
                    template: Some("{{ x ".into()),
                    ..settings(ding)
                },
                "template does not compile: syntax error: unexpected end of input, expected end of variable block (in template:1)",
            ),
            (
                TargetKind::Template,
                settings("https://hooks.example.com/x"),
                "template is required for template targets",
            ),
            (
                TargetKind::Template,
                TargetSettings {
                    template: Some("{}".into()),
                    method: Some("DELETE".into()),
                    ..settings("https://hooks.example.com/x")
                },
                "unsupported method DELETE: use POST, PUT or PATCH",
            ),
            (
                TargetKind::Template,
                TargetSettings {
                    template: Some("{}".into()),
                    content_type: Some("json".into()),
                    ..settings("https://hooks.example.com/x")
                },
                "invalid content_type: expected a media type such as application/json",
            ),
            (
                TargetKind::Template,
                TargetSettings {
                    template: Some("{}".into()),
                    headers: [("Content-Type".to_owned(), "text/plain".to_owned())].into(),
                    ..settings("https://hooks.example.com/x")
                },
                "invalid header Content-Type: regrelay sets this header itself",
            ),
            (
                TargetKind::Template,
                TargetSettings {
                    template: Some("{}".into()),
                    bot_token: Some("123:abc".into()),
                    ..settings("https://hooks.example.com/x")
                },
                "set bot_token is not allowed for template",
            ),
        ];
        for (kind, settings, want) in table {
            let err = Target::new(kind, settings).unwrap_err();
            assert_eq!(err.to_string(), want, "{kind}");
        }
        // Valid ones, including Telegram's default address.
        let target = Target::new(TargetKind::Telegram, telegram()).unwrap();
        assert_eq!(target.address().as_str(), "https://api.telegram.org/");
        assert!(Target::new(TargetKind::DingTalk, settings(ding)).is_ok());
    }

    #[test]
    fn kinds_round_trip_and_know_their_vendor() {
        for kind in TargetKind::ALL {
            assert_eq!(TargetKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.vendor_type(), kind.as_str().to_uppercase());
            assert_eq!(kind.vendor().kind(), kind);
        }
        assert_eq!(TargetKind::parse("http"), None);
        assert_eq!(TargetKind::parse("slack"), None);
    }

    #[test]
    fn requests() {
        let event = sample_event(EventType::PushArtifact, "team-a", 1_800_000_000).unwrap();
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();

        let target = Target::new(
            TargetKind::Telegram,
            TargetSettings {
                address: Some("http://127.0.0.1:8081/".into()),
                message_thread_id: Some(7),
                ..telegram()
            },
        )
        .unwrap();
        let request = target.prepare(&event, &context(), now).unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(
            request.url.as_str(),
            "http://127.0.0.1:8081/bot123:abc/sendMessage"
        );
        assert_eq!(
            request.redacted_url(),
            "http://127.0.0.1:8081/bot********/sendMessage"
        );
        assert_eq!(request.content_type(), "application/json");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["chat_id"], -100);
        assert_eq!(body["message_thread_id"], 7);
        assert!(body["text"]
            .as_str()
            .unwrap()
            .starts_with("📦 *Artifact pushed*\n*Repository:* team\\-a/alpine\n"));

        // DingTalk signs in the query, Feishu in the body.
        let ding = Target::new(
            TargetKind::DingTalk,
            TargetSettings {
                secret: Some("SEC000000000000000000000".into()),
                ..settings("https://oapi.dingtalk.com/robot/send?access_token=tok123")
            },
        )
        .unwrap();
        let request = ding.prepare(&event, &context(), now).unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=tok123&timestamp=1700000000000&sign=1zJ%2Fw34EOSVAYr7cu7Vo8LnebmK2%2FGrCgegtr8mQrqM%3D"
        );
        assert!(!request.redacted_url().contains("tok123"));
        assert!(!request.redacted_url().contains("1zJ"));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(body["markdown"]["title"], "📦 Artifact pushed");

        let feishu = Target::new(
            TargetKind::Feishu,
            TargetSettings {
                secret: Some("demo-secret".into()),
                ..settings("https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-aaaa-bbbb-cccc")
            },
        )
        .unwrap();
        let request = feishu.prepare(&event, &context(), now).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA=");
        assert_eq!(body["msg_type"], "interactive");

        // The templated webhook: method, content type, auth header, custom headers, signing.
        let hook = Target::new(
            TargetKind::Template,
            TargetSettings {
                template: Some(r#"{"repo": {{ repository.repo_full_name | json }}}"#.into()),
                method: Some("put".into()),
                content_type: Some("application/vnd.x+json".into()),
                auth_header: Some("Bearer s3cr3t".into()),
                headers: [("X-Team".to_owned(), "ci".to_owned())].into(),
                secret: Some("whsec_abc".into()),
                ..settings("https://hooks.example.com/in")
            },
        )
        .unwrap();
        let request = hook.prepare(&event, &context(), now).unwrap();
        assert_eq!(request.method, Method::PUT);
        assert_eq!(request.body, br#"{"repo": "team-a/alpine"}"#);
        assert_eq!(request.content_type(), "application/vnd.x+json");
        assert_eq!(request.headers["authorization"], "Bearer s3cr3t");
        assert_eq!(request.headers["x-team"], "ci");
        assert!(request.standard_webhooks);
    }

    #[test]
    fn rate_limits_and_keys() {
        let target = Target::new(TargetKind::Telegram, telegram()).unwrap();
        assert_eq!(
            target.rate_limits(),
            [RateLimit::per_second(1), RateLimit::per_minute(20)]
        );
        let key = target.rate_key();
        assert!(
            key.starts_with("telegram:") && key.len() == "telegram:".len() + 24,
            "{key}"
        );
        assert!(!key.contains("abc"));
        // The same bot and chat share a key whatever the address; another chat does not.
        let other_address = Target::new(
            TargetKind::Telegram,
            TargetSettings {
                address: Some("http://127.0.0.1:1".into()),
                ..telegram()
            },
        )
        .unwrap();
        assert_eq!(other_address.rate_key(), key);
        let other_chat = Target::new(
            TargetKind::Telegram,
            TargetSettings {
                chat_id: Some("-200".into()),
                ..telegram()
            },
        )
        .unwrap();
        assert_ne!(other_chat.rate_key(), key);

        let custom = Target::new(
            TargetKind::WeCom,
            TargetSettings {
                rate_limit: Some("5/s".into()),
                ..settings("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
            },
        )
        .unwrap();
        assert_eq!(custom.rate_limits(), [RateLimit::per_second(5)]);
        let defaults = |kind: TargetKind, address: &str| {
            Target::new(kind, settings(address))
                .unwrap()
                .rate_limits()
                .to_vec()
        };
        assert_eq!(
            defaults(TargetKind::DingTalk, "https://x/robot/send?access_token=t"),
            [RateLimit::per_minute(20)]
        );
        assert_eq!(
            defaults(TargetKind::Feishu, "https://x/open-apis/bot/v2/hook/h"),
            [RateLimit::per_second(5), RateLimit::per_minute(100)]
        );
        assert_eq!(
            defaults(TargetKind::Discord, "https://x/api/webhooks/1/t"),
            []
        );
    }

    #[test]
    fn outcomes_are_scrubbed_of_every_credential() {
        let target = Target::new(
            TargetKind::WeCom,
            settings("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"),
        )
        .unwrap();
        let event = sample_event(EventType::PushArtifact, "p", 1).unwrap();
        let request = target.prepare(&event, &context(), Utc::now()).unwrap();
        let headers = HeaderMap::new();
        let body = br#"{"errcode":93000,"errmsg":"invalid webhook url: key 693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"}"#;
        let outcome = target.outcome(
            &request,
            &Answer {
                status: 200,
                headers: &headers,
                body,
            },
        );
        assert_eq!(
            outcome.vendor_message(),
            Some("invalid webhook url: key ******** (code 93000)")
        );
    }

    #[test]
    fn an_empty_custom_message_is_a_render_error() {
        let target = Target::new(
            TargetKind::Telegram,
            TargetSettings {
                template: Some("{% if false %}x{% endif %}  ".into()),
                ..telegram()
            },
        )
        .unwrap();
        let event = sample_event(EventType::PushArtifact, "p", 1).unwrap();
        let err = target.prepare(&event, &context(), Utc::now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template cannot be rendered: the template rendered an empty message"
        );
    }
}
