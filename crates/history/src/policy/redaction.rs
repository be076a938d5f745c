//! What may be shown of a target: [`REDACTED`] in place of a credential, the redacted address
//! ([`redact_address`], [`Target::redacted_address`]) and a `Debug` that shows no credential.

use std::collections::BTreeMap;
use std::fmt;

use super::model::{Target, TargetKind};

/// What the API shows instead of a credential (`auth_header`, the secret, custom header values).
pub const REDACTED: &str = "********";

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
        // Chat webhooks carry their secret in the path too (Discord's token, Feishu's hook id):
        // every long segment goes, as `regrelay_targets::Target::credentials` names them.
        TargetKind::Vendor(vendor) if vendor != regrelay_targets::TargetKind::Template => {
            let segments: Vec<&str> = path
                .split('/')
                .map(|segment| {
                    if segment.len() >= 16 {
                        REDACTED
                    } else {
                        segment
                    }
                })
                .collect();
            out.push_str(&segments.join("/"));
        }
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
            .field("bot_token", &redact(&self.options.bot_token))
            .field("chat_id", &self.options.chat_id)
            .field("template", &self.options.template.as_ref().map(String::len))
            .field("rate_limit", &self.options.rate_limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::PayloadFormat;
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
            options: Default::default(),
        }
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
