//! "Delivered?": the pure decision that turns a vendor's answer into an [`Outcome`], per vendor,
//! like the consumer's `classify` for HTTP targets.
//!
//! Design constraints:
//! - Several vendors answer HTTP 200 with an error in the body (DingTalk, WeCom, Feishu): the
//!   body decides, not the status. Each vendor file holds its own table; the helpers here are
//!   the rules they share (status classes, `Retry-After`, scrubbing).
//! - The reasons are closed enums whose `as_str` values are metric labels (bounded, known in
//!   advance: [`RetryReason::ALL`], [`DeadLetterReason::ALL`]). The vendor's own words go in
//!   `vendor_message`, free text for the dead letter and the task log, never a label.
//! - No credential reaches a message: [`scrub`] replaces every credential the request carried
//!   (bot token, URL key, signature, secret) before the message is capped, so a cut can never
//!   leave half a token behind.
//! - Transport failures (timeouts, refused connections, the SSRF guard) are the consumer's
//!   `classify`; this module only sees answers.

use std::time::Duration;

use http::HeaderMap;

/// A vendor's answer to one request.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// What to do with a delivery after the vendor answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The vendor took the message.
    Delivered,
    /// Try again later; `after` is the vendor's wish (the schedule clamps it).
    Retry {
        after: Option<Duration>,
        reason: RetryReason,
        /// What the vendor said, scrubbed, for the task log.
        vendor_message: Option<String>,
    },
    /// Trying again cannot help.
    DeadLetter {
        reason: DeadLetterReason,
        /// What the vendor said, scrubbed, for the dead letter and the task log.
        vendor_message: Option<String>,
    },
}

/// Why a delivery is retried. A metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// HTTP 429, or the vendor's rate-limit code (DingTalk 130101, WeCom 45009, Feishu 11232).
    RateLimited,
    /// HTTP 5xx.
    ServerError,
    /// The vendor said it is busy (DingTalk and WeCom `-1`).
    VendorBusy,
    /// HTTP 408.
    RequestTimeout,
}

/// Why a delivery is dead-lettered. A metric label and the dead letter's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The vendor refused this message (a 4xx or an error code not listed below).
    Rejected,
    /// The credential is wrong: Telegram 401, a bad DingTalk token, a bad WeCom key.
    Unauthorized,
    /// The bot may not post there (Telegram 403: kicked or blocked), or a keyword or IP check
    /// failed (DingTalk 310000, Feishu 19022/19024).
    Forbidden,
    /// The webhook or bot does not exist (404, Discord 10015).
    NotFound,
    /// The signature did not match or its timestamp is too old (DingTalk 310000 "sign", Feishu
    /// 19021).
    BadSignature,
    /// The Telegram group became a supergroup: the message names the new chat id.
    ChatMigrated,
    /// The vendor refused the message's length (WeCom 40058, Discord 50035 max length, 413).
    MessageTooLong,
    /// Telegram could not parse the message's MarkdownV2 ("can't parse entities").
    ParseError,
    /// A 3xx: redirects are not followed.
    Redirect,
    /// A status outside 200..=599 or a 1xx.
    UnexpectedStatus,
    /// A 2xx whose body is not the vendor's success answer (a proxy page, an unknown shape).
    UnexpectedAnswer,
}

impl RetryReason {
    pub const ALL: [RetryReason; 4] = [
        RetryReason::RateLimited,
        RetryReason::ServerError,
        RetryReason::VendorBusy,
        RetryReason::RequestTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ServerError => "server_error",
            RetryReason::VendorBusy => "vendor_busy",
            RetryReason::RequestTimeout => "request_timeout",
        }
    }
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 11] = [
        DeadLetterReason::Rejected,
        DeadLetterReason::Unauthorized,
        DeadLetterReason::Forbidden,
        DeadLetterReason::NotFound,
        DeadLetterReason::BadSignature,
        DeadLetterReason::ChatMigrated,
        DeadLetterReason::MessageTooLong,
        DeadLetterReason::ParseError,
        DeadLetterReason::Redirect,
        DeadLetterReason::UnexpectedStatus,
        DeadLetterReason::UnexpectedAnswer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Unauthorized => "unauthorized",
            DeadLetterReason::Forbidden => "forbidden",
            DeadLetterReason::NotFound => "not_found",
            DeadLetterReason::BadSignature => "bad_signature",
            DeadLetterReason::ChatMigrated => "chat_migrated",
            DeadLetterReason::MessageTooLong => "message_too_long",
            DeadLetterReason::ParseError => "parse_error",
            DeadLetterReason::Redirect => "redirect",
            DeadLetterReason::UnexpectedStatus => "unexpected_status",
            DeadLetterReason::UnexpectedAnswer => "unexpected_answer",
        }
    }
}

impl Outcome {
    /// The vendor's message, when there is one.
    pub fn vendor_message(&self) -> Option<&str> {
        match self {
            Outcome::Delivered => None,
            Outcome::Retry { vendor_message, .. } | Outcome::DeadLetter { vendor_message, .. } => {
                vendor_message.as_deref()
            }
        }
    }

    /// The reason label, `None` when delivered.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Delivered => None,
            Outcome::Retry { reason, .. } => Some(reason.as_str()),
            Outcome::DeadLetter { reason, .. } => Some(reason.as_str()),
        }
    }

    /// The same outcome with its message scrubbed of `credentials` and capped.
    pub fn scrubbed(self, credentials: &[String]) -> Outcome {
        let clean = |m: Option<String>| m.map(|m| scrub(&m, credentials));
        match self {
            Outcome::Delivered => Outcome::Delivered,
            Outcome::Retry {
                after,
                reason,
                vendor_message,
            } => Outcome::Retry {
                after,
                reason,
                vendor_message: clean(vendor_message),
            },
            Outcome::DeadLetter {
                reason,
                vendor_message,
            } => Outcome::DeadLetter {
                reason,
                vendor_message: clean(vendor_message),
            },
        }
    }
}

/// The longest vendor message kept, in characters (after scrubbing).
pub const MAX_VENDOR_MESSAGE_CHARS: usize = 1024;

/// The replacement of a credential in a message.
pub const REDACTED: &str = "********";

/// `message` with every credential replaced by [`REDACTED`], as written and URL-encoded (a
/// signature travels encoded in a query), the longest first so one that contains another is
/// replaced whole; then capped at [`MAX_VENDOR_MESSAGE_CHARS`]. Credentials shorter than 4
/// bytes are left alone: replacing them would garble the message and hide nothing.
pub fn scrub(message: &str, credentials: &[String]) -> String {
    let mut forms: Vec<String> = credentials
        .iter()
        .filter(|c| c.len() >= 4)
        .flat_map(|c| {
            [
                c.clone(),
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect(),
            ]
        })
        .collect();
    forms.sort_by_key(|c| std::cmp::Reverse(c.len()));
    forms.dedup();
    let mut out = message.to_owned();
    for credential in forms {
        out = out.replace(credential.as_str(), REDACTED);
    }
    crate::shorten::chars(&out, MAX_VENDOR_MESSAGE_CHARS)
}

/// `Retry-After` in seconds (integer or fractional); an HTTP date is not worth a clock here,
/// and a vendor that sends one gets the schedule's own delay.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    seconds(text.trim())
}

/// A non-negative, finite number of seconds.
pub(crate) fn seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// The shared rule for an answer that carries no vendor verdict of its own: 2xx delivered,
/// 3xx redirect, 408/429/5xx retried (`Retry-After` honoured on 429 and 503), 401 unauthorized,
/// 403 forbidden, 404/410 not found, 413 too long, other 4xx rejected.
pub fn by_status(answer: &Answer<'_>, vendor_message: Option<String>) -> Outcome {
    let retry = |reason, after| Outcome::Retry {
        after,
        reason,
        vendor_message: vendor_message.clone(),
    };
    let dead = |reason| Outcome::DeadLetter {
        reason,
        vendor_message: vendor_message.clone(),
    };
    match answer.status {
        200..=299 => Outcome::Delivered,
        300..=399 => dead(DeadLetterReason::Redirect),
        408 => retry(RetryReason::RequestTimeout, None),
        429 => retry(RetryReason::RateLimited, retry_after(answer.headers)),
        401 => dead(DeadLetterReason::Unauthorized),
        403 => dead(DeadLetterReason::Forbidden),
        404 | 410 => dead(DeadLetterReason::NotFound),
        413 => dead(DeadLetterReason::MessageTooLong),
        400..=499 => dead(DeadLetterReason::Rejected),
        503 => retry(RetryReason::ServerError, retry_after(answer.headers)),
        500..=599 => retry(RetryReason::ServerError, None),
        _ => dead(DeadLetterReason::UnexpectedStatus),
    }
}

/// What a vendor error code means, for the vendors that answer 200 with a code in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeRule {
    Retry(RetryReason, Option<Duration>),
    Dead(DeadLetterReason),
}

/// The shared rule of DingTalk, WeCom and Feishu: a non-2xx status decides by itself
/// ([`by_status`]); a 2xx is delivered only when the body's code (the first of `code_keys`
/// present) is 0, and otherwise `rule` maps the code and message. A 2xx with no code at all is
/// `unexpected_answer`. The vendor message is `<message> (code <n>)`.
pub(crate) fn by_code(
    answer: &Answer<'_>,
    code_keys: &[&str],
    message_keys: &[&str],
    rule: impl Fn(i64, &str) -> CodeRule,
) -> Outcome {
    let body = crate::json_body(answer.body);
    let code = body
        .as_ref()
        .and_then(|b| code_keys.iter().find_map(|k| b.get(*k)))
        .and_then(serde_json::Value::as_i64);
    let text = body
        .as_ref()
        .and_then(|b| message_keys.iter().find_map(|k| b.get(*k)))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    let vendor_message = match code {
        Some(code) => Some(format!("{text} (code {code})").trim_start().to_owned()),
        None => body_excerpt(answer.body),
    };
    if !(200..300).contains(&answer.status) {
        return by_status(answer, vendor_message);
    }
    match code {
        Some(0) => Outcome::Delivered,
        None => Outcome::DeadLetter {
            reason: DeadLetterReason::UnexpectedAnswer,
            vendor_message,
        },
        Some(code) => match rule(code, text) {
            CodeRule::Retry(reason, after) => Outcome::Retry {
                after,
                reason,
                vendor_message,
            },
            CodeRule::Dead(reason) => Outcome::DeadLetter {
                reason,
                vendor_message,
            },
        },
    }
}

/// A short, printable excerpt of a body for a message when it is not the vendor's JSON.
pub(crate) fn body_excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(crate::shorten::chars(&one_line, 200))
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// An answer as a table row holds it: status, headers, body.
    pub type Row = (u16, HeaderMap, Vec<u8>);

    /// A table row: an answer and the outcome it must give.
    pub fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Row {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        (status, map, body.as_bytes().to_vec())
    }

    pub fn delivered() -> Outcome {
        Outcome::Delivered
    }

    pub fn retry(reason: RetryReason, after: Option<f64>, message: Option<&str>) -> Outcome {
        Outcome::Retry {
            after: after.map(Duration::from_secs_f64),
            reason,
            vendor_message: message.map(str::to_owned),
        }
    }

    pub fn dead(reason: DeadLetterReason, message: Option<&str>) -> Outcome {
        Outcome::DeadLetter {
            reason,
            vendor_message: message.map(str::to_owned),
        }
    }

    /// Runs a vendor's outcome table.
    pub fn check(outcome: impl Fn(&Answer<'_>) -> Outcome, table: Vec<(Row, Outcome)>) {
        for ((status, headers, body), want) in table {
            let got = outcome(&Answer {
                status,
                headers: &headers,
                body: &body,
            });
            assert_eq!(
                got,
                want,
                "status {status} body {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn the_shared_status_table() {
        use DeadLetterReason as D;
        use RetryReason as R;
        let table = vec![
            (answer(200, &[], ""), delivered()),
            (answer(202, &[], ""), delivered()),
            (answer(204, &[], ""), delivered()),
            (answer(301, &[], ""), dead(D::Redirect, None)),
            (answer(408, &[], ""), retry(R::RequestTimeout, None, None)),
            (
                answer(429, &[("retry-after", "7")], ""),
                retry(R::RateLimited, Some(7.0), None),
            ),
            (
                answer(429, &[("retry-after", "0.5")], ""),
                retry(R::RateLimited, Some(0.5), None),
            ),
            (
                answer(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], ""),
                retry(R::RateLimited, None, None),
            ),
            (answer(429, &[], ""), retry(R::RateLimited, None, None)),
            (answer(400, &[], ""), dead(D::Rejected, None)),
            (answer(401, &[], ""), dead(D::Unauthorized, None)),
            (answer(403, &[], ""), dead(D::Forbidden, None)),
            (answer(404, &[], ""), dead(D::NotFound, None)),
            (answer(410, &[], ""), dead(D::NotFound, None)),
            (answer(413, &[], ""), dead(D::MessageTooLong, None)),
            (answer(422, &[], ""), dead(D::Rejected, None)),
            (
                answer(500, &[("retry-after", "9")], ""),
                retry(R::ServerError, None, None),
            ),
            (
                answer(503, &[("retry-after", "9")], ""),
                retry(R::ServerError, Some(9.0), None),
            ),
            (answer(599, &[], ""), retry(R::ServerError, None, None)),
            (answer(101, &[], ""), dead(D::UnexpectedStatus, None)),
            (answer(600, &[], ""), dead(D::UnexpectedStatus, None)),
        ];
        check(|a| by_status(a, None), table);
    }

    #[test]
    fn scrub_removes_credentials_before_capping() {
        let token = "123456:AAE-secret_token".to_owned();
        let message = format!("bad request for /bot{token}/sendMessage and {token}");
        assert_eq!(
            scrub(&message, std::slice::from_ref(&token)),
            "bad request for /bot********/sendMessage and ********"
        );
        // A long message with the token near the cut is scrubbed first, then cut.
        let long = format!("{}{token}", "x".repeat(MAX_VENDOR_MESSAGE_CHARS - 5));
        let out = scrub(&long, std::slice::from_ref(&token));
        assert!(!out.contains("123456"), "{out}");
        // The longest credential first: a key that contains another is replaced whole.
        let out = scrub("key=abcd1234", &["abcd".into(), "abcd1234".into()]);
        assert_eq!(out, "key=********");
    }

    #[test]
    fn labels_are_fixed_and_distinct() {
        let mut labels: Vec<&str> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.extend(DeadLetterReason::ALL.iter().map(|r| r.as_str()));
        let n = labels.len();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n);
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
