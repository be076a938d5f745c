//! [`DeadLetterReason`]: every reason a message ends on `<prefix>.dead-letter`, one closed set.
//!
//! Design constraints:
//! - One vocabulary for the writer (the dead letter's `reason`), the metrics
//!   (`regrelay_dead_letters_total{reason}`, every series pre-registered from [`DeadLetterReason::ALL`]),
//!   the API's and the CLI's `reason` filter (an unknown name is a clear error listing the known
//!   ones), and the reader.
//! - The names are a wire contract (stored in dead letters that may wait on the queue for weeks):
//!   a name is never changed or reused; new reasons are added.
//! - RabbitMQ's own dead-lettering reasons (`x-first-death-reason`) are part of the set, so a
//!   message the broker moved is filtered like any other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    // Decided from an attempt's answer (`consumer::classify`).
    /// A 3xx: redirects are not followed.
    Redirect,
    /// A 4xx other than 408 and 429: the receiver refuses this request and will keep refusing it.
    ClientError,
    /// The SSRF guard refused the target's address.
    BlockedAddress,
    /// 1xx or a code outside 100..=599: nothing regrelay can interpret.
    UnexpectedStatus,
    // Decided from a chat vendor's answer (`regrelay_targets`, the vendor's words in the detail).
    /// The vendor refused this message (a 4xx or an error code with no reason of its own).
    VendorRejected,
    /// The vendor says the credential is wrong (Telegram 401, a bad DingTalk token or WeCom key).
    Unauthorized,
    /// The bot may not post there, or a keyword or IP check failed.
    Forbidden,
    /// The webhook or the bot does not exist.
    NotFound,
    /// The signature did not match, or its timestamp was too old.
    BadSignature,
    /// The Telegram group became a supergroup: the detail names the new chat id.
    ChatMigrated,
    /// The vendor refused the message's length.
    MessageTooLong,
    /// Telegram could not parse the message's formatting (a custom template's MarkdownV2).
    ParseError,
    /// A 2xx whose body is not the vendor's success answer.
    UnexpectedAnswer,
    // Decided by the delivery stage.
    /// Retryable failures until the retry schedule ran out.
    AttemptsExhausted,
    /// The policy or its target was deleted, disabled or changed since the event was matched.
    PolicyChanged,
    /// The target was disabled (its circuit stayed open for `auto_disable_after`, or a client
    /// disabled it): replay once it is enabled again.
    TargetDisabled,
    /// The payload cannot be rendered for the target.
    Unrenderable,
    /// A stored credential cannot be decrypted, or a signing secret is unusable.
    BadSecret,
    // Decided by either stage about the message itself.
    /// The message cannot be read (not a task or event message this version knows).
    Poison,
    /// The database refuses a value of the event (a project name it cannot store).
    Unstorable,
    /// A delivery task made from the event cannot be encoded.
    Unencodable,
    // RabbitMQ's own reasons (`x-first-death-reason`) for a message it moved here itself.
    /// The work queue's `x-delivery-limit` was reached.
    DeliveryLimit,
    /// Rejected or nacked without requeue by a client.
    Rejected,
    /// Its TTL expired in a queue without a further dead-letter target.
    Expired,
    /// A queue's length limit pushed it out.
    Maxlen,
    // What the reader reports for a message it cannot read as a dead letter.
    /// Neither a `dead-letter.v1` body nor a message RabbitMQ dead-lettered.
    Unreadable,
}

impl DeadLetterReason {
    /// Every reason, for pre-registering metric series and for error messages.
    pub const ALL: [DeadLetterReason; 26] = [
        DeadLetterReason::Redirect,
        DeadLetterReason::ClientError,
        DeadLetterReason::BlockedAddress,
        DeadLetterReason::UnexpectedStatus,
        DeadLetterReason::VendorRejected,
        DeadLetterReason::Unauthorized,
        DeadLetterReason::Forbidden,
        DeadLetterReason::NotFound,
        DeadLetterReason::BadSignature,
        DeadLetterReason::ChatMigrated,
        DeadLetterReason::MessageTooLong,
        DeadLetterReason::ParseError,
        DeadLetterReason::UnexpectedAnswer,
        DeadLetterReason::AttemptsExhausted,
        DeadLetterReason::PolicyChanged,
        DeadLetterReason::TargetDisabled,
        DeadLetterReason::Unrenderable,
        DeadLetterReason::BadSecret,
        DeadLetterReason::Poison,
        DeadLetterReason::Unstorable,
        DeadLetterReason::Unencodable,
        DeadLetterReason::DeliveryLimit,
        DeadLetterReason::Rejected,
        DeadLetterReason::Expired,
        DeadLetterReason::Maxlen,
        DeadLetterReason::Unreadable,
    ];

    /// The reasons regrelay itself writes (the `regrelay_dead_letters_total{reason}` series).
    pub fn is_written_by_regrelay(self) -> bool {
        !matches!(
            self,
            DeadLetterReason::DeliveryLimit
                | DeadLetterReason::Rejected
                | DeadLetterReason::Expired
                | DeadLetterReason::Maxlen
                | DeadLetterReason::Unreadable
        )
    }

    /// The stored name, the metric label and the filter value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Redirect => "redirect",
            DeadLetterReason::ClientError => "client_error",
            DeadLetterReason::BlockedAddress => "blocked_address",
            DeadLetterReason::UnexpectedStatus => "unexpected_status",
            DeadLetterReason::VendorRejected => "vendor_rejected",
            DeadLetterReason::Unauthorized => "unauthorized",
            DeadLetterReason::Forbidden => "forbidden",
            DeadLetterReason::NotFound => "not_found",
            DeadLetterReason::BadSignature => "bad_signature",
            DeadLetterReason::ChatMigrated => "chat_migrated",
            DeadLetterReason::MessageTooLong => "message_too_long",
            DeadLetterReason::ParseError => "parse_error",
            DeadLetterReason::UnexpectedAnswer => "unexpected_answer",
            DeadLetterReason::AttemptsExhausted => "attempts_exhausted",
            DeadLetterReason::PolicyChanged => "policy_changed",
            DeadLetterReason::TargetDisabled => "target_disabled",
            DeadLetterReason::Unrenderable => "unrenderable",
            DeadLetterReason::BadSecret => "bad_secret",
            DeadLetterReason::Poison => "poison",
            DeadLetterReason::Unstorable => "unstorable",
            DeadLetterReason::Unencodable => "unencodable",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Maxlen => "maxlen",
            DeadLetterReason::Unreadable => "unreadable",
        }
    }

    /// The known names, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|reason| reason.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`DeadLetterReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter reason {name:?}; known reasons: {known}", known = DeadLetterReason::names())]
pub struct UnknownReason {
    pub name: String,
}

impl FromStr for DeadLetterReason {
    type Err = UnknownReason;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == name)
            .ok_or_else(|| UnknownReason {
                name: name.to_owned(),
            })
    }
}

impl Serialize for DeadLetterReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeadLetterReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for reason in DeadLetterReason::ALL {
            assert!(seen.insert(reason.as_str()), "{reason} twice");
            assert_eq!(reason.as_str().parse::<DeadLetterReason>(), Ok(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(
                serde_json::from_str::<DeadLetterReason>(&json).unwrap(),
                reason
            );
        }
    }

    #[test]
    fn an_unknown_name_is_a_clear_error() {
        let error = "attempts_exausted".parse::<DeadLetterReason>().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("\"attempts_exausted\""), "{text}");
        assert!(text.contains("attempts_exhausted"), "{text}");
        assert!(text.contains("delivery_limit"), "{text}");
        assert!(serde_json::from_str::<DeadLetterReason>("\"nope\"").is_err());
    }

    #[test]
    fn broker_reasons_are_not_written_by_regrelay() {
        assert!(DeadLetterReason::AttemptsExhausted.is_written_by_regrelay());
        assert!(DeadLetterReason::Poison.is_written_by_regrelay());
        assert!(!DeadLetterReason::DeliveryLimit.is_written_by_regrelay());
        assert!(!DeadLetterReason::Unreadable.is_written_by_regrelay());
    }
}
