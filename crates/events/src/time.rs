//! Turning `occur_at` (unix seconds) into the text forms the payloads need.

use chrono::{DateTime, Utc};

/// `occur_at` as a UTC date-time. Events are validated to `0..=MAX_OCCUR_AT`, which chrono
/// always represents, so the epoch fallback is unreachable; it exists so this cannot panic.
fn utc(occur_at: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(occur_at, 0).unwrap_or_default()
}

/// RFC 3339, UTC, seconds precision, `Z` suffix: "2023-04-03T06:04:53Z" (CloudEvents `time`).
pub(crate) fn rfc3339(occur_at: i64) -> String {
    utc(occur_at).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The human fallback Slack shows when it cannot localise a date: "2023-04-03 06:04:53 UTC".
pub(crate) fn slack_fallback(occur_at: i64) -> String {
    utc(occur_at).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let cases = [
            (0, "1970-01-01T00:00:00Z", "1970-01-01 00:00:00 UTC"),
            (
                1680501893,
                "2023-04-03T06:04:53Z",
                "2023-04-03 06:04:53 UTC",
            ),
            (
                crate::event::MAX_OCCUR_AT,
                "9999-12-31T23:59:59Z",
                "9999-12-31 23:59:59 UTC",
            ),
        ];
        for (occur_at, rfc, slack) in cases {
            assert_eq!(rfc3339(occur_at), rfc);
            assert_eq!(slack_fallback(occur_at), slack);
        }
    }
}
