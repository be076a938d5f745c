//! [`DeadLetterFilter`]: which dead letters an operation applies to, and the parsers of what an
//! operator types (ids, ages).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::DeadLetterError;
use crate::reason::DeadLetterReason;
use crate::view::DeadLetterSummary;

/// What to replay.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    /// These dead letters, by id.
    Ids(Vec<Uuid>),
    /// Every dead letter that matches (up to the scan limit).
    All(DeadLetterFilter),
}

/// Which dead letters an operation applies to. Every field that is set must match; an empty filter
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The event's project (namespace), exactly.
    pub project: Option<String>,
    /// The policy's id.
    pub policy_id: Option<i64>,
    /// The event type, e.g. `PUSH_ARTIFACT` (case-insensitive).
    pub event_type: Option<String>,
    /// The dead-letter reason.
    pub reason: Option<DeadLetterReason>,
    /// Dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    pub newer_than: Option<Duration>,
}

impl DeadLetterFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `letter` matches, its age taken at `now`.
    pub fn matches(&self, letter: &DeadLetterSummary, now: DateTime<Utc>) -> bool {
        let same = |wanted: &Option<String>, actual: &Option<String>| match wanted {
            None => true,
            Some(wanted) => actual.as_deref() == Some(wanted.as_str()),
        };
        if !same(&self.project, &letter.project) {
            return false;
        }
        if let Some(policy_id) = self.policy_id {
            if letter.policy.as_ref().map(|p| p.id) != Some(policy_id) {
                return false;
            }
        }
        if let Some(event_type) = &self.event_type {
            if !letter
                .event_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(event_type))
            {
                return false;
            }
        }
        if self.reason.is_some_and(|reason| reason != letter.reason) {
            return false;
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            // A dead letter whose time cannot be read matches no age filter.
            let Some(age) = age_at(&letter.dead_lettered_at, now) else {
                return false;
            };
            if self.older_than.is_some_and(|min| age < min) {
                return false;
            }
            if self.newer_than.is_some_and(|max| age > max) {
                return false;
            }
        }
        true
    }
}

/// Parses dead-letter ids given as text.
pub fn parse_ids<S: AsRef<str>>(ids: &[S]) -> Result<Vec<Uuid>, DeadLetterError> {
    ids.iter()
        .map(|id| {
            let id = id.as_ref().trim();
            Uuid::parse_str(id).map_err(|_| DeadLetterError::InvalidId(id.to_owned()))
        })
        .collect()
}

/// Parses an age such as `90s`, `10m`, `1h30m`, `2d`, `1w`, `500ms`, or a number of seconds.
pub fn parse_age(text: &str) -> Result<Duration, DeadLetterError> {
    let invalid = |message| DeadLetterError::InvalidDuration {
        text: text.to_owned(),
        message,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    // The configuration's own duration syntax (humantime): `90s`, `1h30m`, `1h 30m`, `2days`.
    humantime::parse_duration(trimmed).map_err(|error| DeadLetterError::InvalidDuration {
        text: text.to_owned(),
        message: match error {
            humantime::DurationError::UnknownUnit { .. } => {
                "unknown unit; use ms, s, m, h, d or w (e.g. 1h 30m)"
            }
            humantime::DurationError::NumberOverflow => "too long",
            _ => "expected a duration such as 90s, 10m or 1h 30m",
        },
    })
}

/// The time since `dead_lettered_at` (RFC 3339) at `now`.
pub(crate) fn age_at(dead_lettered_at: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = DateTime::parse_from_rfc3339(dead_lettered_at).ok()?;
    (now - at.with_timezone(&Utc))
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letter::PolicySummary;

    #[test]
    fn ages_parse() {
        let ok = |text: &str, secs: u64| {
            assert_eq!(
                parse_age(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            )
        };
        ok("90", 90);
        ok("90s", 90);
        ok("10m", 600);
        ok("1h30m", 5400);
        ok("1h 30m", 5400);
        ok("10 m", 600);
        ok("2d", 172_800);
        ok("1w", 604_800);
        assert_eq!(parse_age("500ms").unwrap(), Duration::from_millis(500));
        ok("1.5h", 5400);
        for bad in ["", "h", "10x", "-1h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    fn summary(reason: DeadLetterReason, at: &str) -> DeadLetterSummary {
        DeadLetterSummary {
            id: Uuid::new_v4(),
            reason,
            detail: String::new(),
            dead_lettered_at: at.into(),
            age_seconds: None,
            attempts: 3,
            last_status: Some(500),
            last_error: None,
            event_type: Some("PUSH_ARTIFACT".into()),
            project: Some("lib".into()),
            policy: Some(PolicySummary {
                id: 7,
                name: "p".into(),
                project: Some("lib".into()),
            }),
            target: None,
            replayable: true,
        }
    }

    #[test]
    fn filters_match_every_set_field() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let letter = summary(
            DeadLetterReason::AttemptsExhausted,
            "2024-01-01T11:00:00.000Z",
        );
        let check = |filter: DeadLetterFilter, expected: bool| {
            assert_eq!(filter.matches(&letter, now), expected, "{filter:?}")
        };
        check(DeadLetterFilter::default(), true);
        check(
            DeadLetterFilter {
                project: Some("lib".into()),
                policy_id: Some(7),
                event_type: Some("push_artifact".into()),
                reason: Some(DeadLetterReason::AttemptsExhausted),
                ..Default::default()
            },
            true,
        );
        check(
            DeadLetterFilter {
                project: Some("other".into()),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                policy_id: Some(8),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                older_than: Some(Duration::from_secs(1800)),
                ..Default::default()
            },
            true,
        );
        check(
            DeadLetterFilter {
                older_than: Some(Duration::from_secs(7200)),
                ..Default::default()
            },
            false,
        );
        check(
            DeadLetterFilter {
                newer_than: Some(Duration::from_secs(1800)),
                ..Default::default()
            },
            false,
        );
        let undated = summary(DeadLetterReason::Poison, "");
        assert!(!DeadLetterFilter {
            newer_than: Some(Duration::from_secs(1)),
            ..Default::default()
        }
        .matches(&undated, now));
    }
}
