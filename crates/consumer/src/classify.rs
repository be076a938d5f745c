//! "Retry?": the pure decision that turns the result of one HTTP attempt into a
//! [`DeliveryOutcome`] (SPEC §3's status table).
//!
//! Design constraints:
//! - No IO and no clock: [`classify`] sees only what the attempt produced, so the whole table is
//!   tested without a network. "When?" is a separate decision ([`crate::retry::RetrySchedule`]);
//!   the delivery stage combines the two.
//! - The reasons are closed enums whose [`as_str`](RetryReason::as_str) values are metric labels,
//!   so the label sets are fixed and can be pre-registered ([`RetryReason::ALL`],
//!   [`DeadLetterReason::ALL`]); no label ever comes from a URL or an error text.
//! - Redirects are not followed (the client has no redirect policy), so a 3xx reaches this table
//!   and is final: following one would let a receiver point us at an address the SSRF guard never
//!   saw, and Harbor does not follow them either.

use std::time::Duration;

pub(crate) use regrelay_dead_letters::DeadLetterReason;

/// What one HTTP attempt produced, as far as "retry?" is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptResult {
    /// The receiver answered. `retry_after` is its `Retry-After` header, parsed, when it sent one.
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the per-attempt timeout.
    Timeout,
    /// The connection could not be made (DNS failure, refused, reset, TLS handshake, ...).
    Connect(String),
    /// The SSRF guard refused the target's address; no connection was attempted.
    Blocked(String),
    /// Any other request error: an invalid URL or header, a body or protocol error mid-request.
    Other(String),
}

impl AttemptResult {
    /// The result in words, for history and dead letters: `HTTP 503`, `timed out`, ...
    pub(crate) fn describe(&self) -> String {
        match self {
            AttemptResult::Response { status, .. } => format!("HTTP {status}"),
            AttemptResult::Timeout => "timed out".to_owned(),
            AttemptResult::Connect(error) => format!("connection failed: {error}"),
            AttemptResult::Blocked(error) => format!("address refused: {error}"),
            AttemptResult::Other(error) => format!("request failed: {error}"),
        }
    }
}

/// What to do with a delivery after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryOutcome {
    /// The receiver took it (2xx): ack, done.
    Delivered,
    /// A transient failure: try again later, if attempts remain. `retry_after` is the receiver's
    /// wish, which the schedule honours within its bounds.
    Retry {
        reason: RetryReason,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: dead-letter now.
    DeadLetter { reason: DeadLetterReason },
}

/// Why a delivery is retried. A metric label (`regrelay_delivery_retries_scheduled_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RetryReason {
    /// 408 Request Timeout.
    Status408,
    /// 429 Too Many Requests.
    Status429,
    /// Any 5xx.
    Status5xx,
    /// No answer within the per-attempt timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Another request error (body or protocol error mid-request, ...).
    RequestError,
    /// A chat vendor said it is busy (DingTalk and WeCom `-1`).
    VendorBusy,
}

#[cfg(test)]
/// The dead-letter reasons [`classify`] decides (the delivery stage adds its own, such as
/// `attempts_exhausted`); all are [`DeadLetterReason`]s, the one closed vocabulary.
pub(crate) const CLASSIFIED_DEAD_LETTER_REASONS: [DeadLetterReason; 4] = [
    DeadLetterReason::Redirect,
    DeadLetterReason::ClientError,
    DeadLetterReason::BlockedAddress,
    DeadLetterReason::UnexpectedStatus,
];

impl RetryReason {
    /// Every reason, for pre-registering metric series.
    pub(crate) const ALL: [RetryReason; 7] = [
        RetryReason::Status408,
        RetryReason::Status429,
        RetryReason::Status5xx,
        RetryReason::Timeout,
        RetryReason::Connect,
        RetryReason::RequestError,
        RetryReason::VendorBusy,
    ];

    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryReason::Status408 => "status_408",
            RetryReason::Status429 => "status_429",
            RetryReason::Status5xx => "status_5xx",
            RetryReason::Timeout => "timeout",
            RetryReason::Connect => "connect",
            RetryReason::RequestError => "request_error",
            RetryReason::VendorBusy => "vendor_busy",
        }
    }
}

/// Decides whether the attempt delivered, should be retried, or can never succeed.
///
/// `Retry-After` is carried for 429 (RFC 6585) and 503 (RFC 9110 §10.2.3), the two answers that
/// define it as "come back later"; elsewhere it is ignored.
pub(crate) fn classify(result: &AttemptResult) -> DeliveryOutcome {
    match *result {
        AttemptResult::Response {
            status,
            retry_after,
        } => classify_status(status, retry_after),
        AttemptResult::Timeout => retry(RetryReason::Timeout, None),
        AttemptResult::Connect(_) => retry(RetryReason::Connect, None),
        AttemptResult::Other(_) => retry(RetryReason::RequestError, None),
        AttemptResult::Blocked(_) => dead_letter(DeadLetterReason::BlockedAddress),
    }
}

fn classify_status(status: u16, retry_after: Option<Duration>) -> DeliveryOutcome {
    match status {
        200..=299 => DeliveryOutcome::Delivered,
        300..=399 => dead_letter(DeadLetterReason::Redirect),
        408 => retry(RetryReason::Status408, None),
        429 => retry(RetryReason::Status429, retry_after),
        400..=499 => dead_letter(DeadLetterReason::ClientError),
        503 => retry(RetryReason::Status5xx, retry_after),
        500..=599 => retry(RetryReason::Status5xx, None),
        _ => dead_letter(DeadLetterReason::UnexpectedStatus),
    }
}

/// A chat or template vendor's verdict on its answer (`regrelay_targets::Target::outcome`) in the
/// delivery stage's terms: the vendor's reasons map onto the same closed sets (rate limits are
/// `status_429` whether the vendor said so with a status or an error code).
pub(crate) fn from_vendor(outcome: &regrelay_targets::Outcome) -> DeliveryOutcome {
    use regrelay_targets::{DeadLetterReason as V, Outcome, RetryReason as R};
    match outcome {
        Outcome::Delivered => DeliveryOutcome::Delivered,
        Outcome::Retry { after, reason, .. } => retry(
            match reason {
                R::RateLimited => RetryReason::Status429,
                R::ServerError => RetryReason::Status5xx,
                R::RequestTimeout => RetryReason::Status408,
                R::VendorBusy => RetryReason::VendorBusy,
            },
            *after,
        ),
        Outcome::DeadLetter { reason, .. } => dead_letter(match reason {
            V::Rejected => DeadLetterReason::VendorRejected,
            V::Unauthorized => DeadLetterReason::Unauthorized,
            V::Forbidden => DeadLetterReason::Forbidden,
            V::NotFound => DeadLetterReason::NotFound,
            V::BadSignature => DeadLetterReason::BadSignature,
            V::ChatMigrated => DeadLetterReason::ChatMigrated,
            V::MessageTooLong => DeadLetterReason::MessageTooLong,
            V::ParseError => DeadLetterReason::ParseError,
            V::Redirect => DeadLetterReason::Redirect,
            V::UnexpectedStatus => DeadLetterReason::UnexpectedStatus,
            V::UnexpectedAnswer => DeadLetterReason::UnexpectedAnswer,
        }),
    }
}

fn retry(reason: RetryReason, retry_after: Option<Duration>) -> DeliveryOutcome {
    DeliveryOutcome::Retry {
        reason,
        retry_after,
    }
}

fn dead_letter(reason: DeadLetterReason) -> DeliveryOutcome {
    DeliveryOutcome::DeadLetter { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendor_reason_has_a_delivery_reason_of_its_own() {
        use regrelay_targets::{DeadLetterReason as V, Outcome, RetryReason as R};
        let mut seen = std::collections::HashSet::new();
        for reason in V::ALL {
            let outcome = from_vendor(&Outcome::DeadLetter {
                reason,
                vendor_message: None,
            });
            let DeliveryOutcome::DeadLetter { reason: mapped } = outcome else {
                panic!("{reason:?} is not a dead letter");
            };
            // Same name, except the vendor's generic refusal (RabbitMQ owns `rejected`).
            let want = match reason {
                V::Rejected => "vendor_rejected",
                other => other.as_str(),
            };
            assert_eq!(mapped.as_str(), want);
            assert!(seen.insert(mapped));
        }
        let after = Some(Duration::from_millis(1500));
        for (reason, want) in [
            (R::RateLimited, RetryReason::Status429),
            (R::ServerError, RetryReason::Status5xx),
            (R::RequestTimeout, RetryReason::Status408),
            (R::VendorBusy, RetryReason::VendorBusy),
        ] {
            let outcome = from_vendor(&Outcome::Retry {
                after,
                reason,
                vendor_message: None,
            });
            assert_eq!(
                outcome,
                DeliveryOutcome::Retry {
                    reason: want,
                    retry_after: after
                }
            );
        }
        assert_eq!(from_vendor(&Outcome::Delivered), DeliveryOutcome::Delivered);
    }

    fn response(status: u16) -> AttemptResult {
        AttemptResult::Response {
            status,
            retry_after: None,
        }
    }

    fn with_retry_after(status: u16, secs: u64) -> AttemptResult {
        AttemptResult::Response {
            status,
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    fn retried(reason: RetryReason) -> DeliveryOutcome {
        DeliveryOutcome::Retry {
            reason,
            retry_after: None,
        }
    }

    fn retried_after(reason: RetryReason, secs: u64) -> DeliveryOutcome {
        DeliveryOutcome::Retry {
            reason,
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    fn dead(reason: DeadLetterReason) -> DeliveryOutcome {
        DeliveryOutcome::DeadLetter { reason }
    }

    #[test]
    fn the_spec_table() {
        use DeadLetterReason as D;
        use RetryReason as R;
        let table: Vec<(AttemptResult, DeliveryOutcome)> = vec![
            // 2xx: delivered, whatever the exact code.
            (response(200), DeliveryOutcome::Delivered),
            (response(201), DeliveryOutcome::Delivered),
            (response(202), DeliveryOutcome::Delivered),
            (response(204), DeliveryOutcome::Delivered),
            (response(299), DeliveryOutcome::Delivered),
            (with_retry_after(200, 5), DeliveryOutcome::Delivered),
            // 3xx: redirects are not followed.
            (response(301), dead(D::Redirect)),
            (response(302), dead(D::Redirect)),
            (response(304), dead(D::Redirect)),
            (response(307), dead(D::Redirect)),
            (response(308), dead(D::Redirect)),
            // 408 and 429 are the retryable 4xx; only 429 carries Retry-After.
            (response(408), retried(R::Status408)),
            (with_retry_after(408, 7), retried(R::Status408)),
            (response(429), retried(R::Status429)),
            (with_retry_after(429, 7), retried_after(R::Status429, 7)),
            // Other 4xx: not retried.
            (response(400), dead(D::ClientError)),
            (response(401), dead(D::ClientError)),
            (response(403), dead(D::ClientError)),
            (response(404), dead(D::ClientError)),
            (response(410), dead(D::ClientError)),
            (response(413), dead(D::ClientError)),
            (response(422), dead(D::ClientError)),
            (response(499), dead(D::ClientError)),
            // 5xx: retried; 503 may say when.
            (response(500), retried(R::Status5xx)),
            (response(502), retried(R::Status5xx)),
            (response(503), retried(R::Status5xx)),
            (with_retry_after(503, 30), retried_after(R::Status5xx, 30)),
            (with_retry_after(500, 30), retried(R::Status5xx)),
            (response(504), retried(R::Status5xx)),
            (response(599), retried(R::Status5xx)),
            // Codes that mean nothing to us.
            (response(100), dead(D::UnexpectedStatus)),
            (response(101), dead(D::UnexpectedStatus)),
            (response(199), dead(D::UnexpectedStatus)),
            (response(0), dead(D::UnexpectedStatus)),
            (response(99), dead(D::UnexpectedStatus)),
            (response(600), dead(D::UnexpectedStatus)),
            (response(999), dead(D::UnexpectedStatus)),
            // Transport failures.
            (AttemptResult::Timeout, retried(R::Timeout)),
            (
                AttemptResult::Connect("connection refused".into()),
                retried(R::Connect),
            ),
            (
                AttemptResult::Other("body error".into()),
                retried(R::RequestError),
            ),
            (
                AttemptResult::Blocked("127.0.0.1".into()),
                dead(D::BlockedAddress),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(classify(&input), expected, "for {input:?}");
        }
    }

    #[test]
    fn label_values_are_fixed_and_distinct() {
        let retry: Vec<&str> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            retry,
            [
                "status_408",
                "status_429",
                "status_5xx",
                "timeout",
                "connect",
                "request_error",
                "vendor_busy"
            ]
        );
        let dead: Vec<&str> = CLASSIFIED_DEAD_LETTER_REASONS
            .iter()
            .map(|r| r.as_str())
            .collect();
        assert_eq!(
            dead,
            [
                "redirect",
                "client_error",
                "blocked_address",
                "unexpected_status"
            ]
        );
    }
}
