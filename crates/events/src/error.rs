//! Why an ingest body was refused, split the way the API answers: [`EventError::Malformed`] is a
//! 400 (the body is not the JSON shape we take at all), [`EventError::Invalid`] is a 422 (the
//! JSON is fine but an event in it is not one we can accept).

use std::fmt;

/// A refused ingest body. Messages are written for the person who sent it: the API puts them in
/// Harbor's `{"errors":[{"code","message"}]}` body as they are.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all, or not the expected JSON shape at the top level; callers answer HTTP 400.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Well-formed JSON that is not a valid event; callers answer HTTP 422.
    #[error("{}{reason}", IndexPrefix(*.index))]
    Invalid {
        /// The position of the offending event when the body was an array (or a Distribution
        /// envelope), so the sender can find it in a batch; `None` for a single object.
        index: Option<usize>,
        reason: InvalidReason,
    },
}

/// What is wrong with one well-formed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// Harbor's own wording for an unknown type.
    #[error("unsupported event type {0}")]
    UnknownEventType(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// `expected` reads after "must be", e.g. "an integer".
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `occur_at` is an integer but not a plausible unix time in seconds. The bounds keep every
    /// accepted event renderable as an RFC 3339 `time` (years 1970–9999), and catch senders that
    /// put milliseconds where Harbor puts seconds.
    #[error("field `occur_at` must be unix seconds between 0 and {max}, got {value}", max = crate::limits::MAX_OCCUR_AT)]
    OccurAtOutOfRange { value: i64 },
    /// The project cannot be told; `field` names where it was looked for, e.g.
    /// `event_data.repository.namespace` (an empty string counts as missing).
    #[error("cannot tell the event's project: missing {field}")]
    MissingNamespace { field: &'static str },
    /// The project's name is longer than Harbor allows (255 characters). The name itself is not
    /// echoed: it is long by definition.
    #[error("project name ({field}) is {chars} characters long; at most {max} are allowed", max = crate::limits::MAX_PROJECT_CHARS)]
    ProjectTooLong { field: &'static str, chars: usize },
    /// A REPLICATION event where neither side is the local Harbor, so no side names our project.
    #[error("cannot tell the event's project: neither event_data.replication.src_resource nor event_data.replication.dest_resource has registry_type \"harbor\"")]
    NoHarborReplicationSide,
    /// An empty array: nothing to accept, which is more likely a sender bug than intent.
    #[error("empty batch: the array holds no events")]
    EmptyBatch,
}

impl EventError {
    /// Whether the body was not the JSON shape we take at all (HTTP 400) rather than a
    /// well-formed body with an invalid event in it (HTTP 422).
    pub fn is_malformed(&self) -> bool {
        matches!(self, EventError::Malformed(_))
    }

    /// An `Invalid` error for a single event (no index).
    pub(crate) fn invalid(reason: InvalidReason) -> Self {
        EventError::Invalid {
            index: None,
            reason,
        }
    }

    /// Names the array position of the event the error is about. `Malformed` stays as it is: it
    /// is about the body, not one event.
    pub(crate) fn at_index(self, index: usize) -> Self {
        match self {
            EventError::Invalid { reason, .. } => EventError::Invalid {
                index: Some(index),
                reason,
            },
            malformed @ EventError::Malformed(_) => malformed,
        }
    }
}

/// Renders "event 2: " before the reason when the error names an array position.
struct IndexPrefix(Option<usize>);

impl fmt::Display for IndexPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(index) => write!(f, "event {index}: "),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let cases: Vec<(EventError, &str)> = vec![
            (
                EventError::Malformed("expected value at line 1 column 1".into()),
                "malformed JSON: expected value at line 1 column 1",
            ),
            (
                EventError::invalid(InvalidReason::UnknownEventType("FOO".into())),
                "unsupported event type FOO",
            ),
            (
                EventError::invalid(InvalidReason::UnknownEventType("FOO".into())).at_index(2),
                "event 2: unsupported event type FOO",
            ),
            (
                EventError::invalid(InvalidReason::MissingField("occur_at")),
                "missing field `occur_at`",
            ),
            (
                EventError::invalid(InvalidReason::WrongType {
                    field: "occur_at",
                    expected: "an integer",
                }),
                "field `occur_at` must be an integer",
            ),
            (
                EventError::invalid(InvalidReason::MissingNamespace {
                    field: "event_data.repository.namespace",
                }),
                "cannot tell the event's project: missing event_data.repository.namespace",
            ),
            (
                EventError::invalid(InvalidReason::EmptyBatch),
                "empty batch: the array holds no events",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn at_index_leaves_malformed_alone() {
        let err = EventError::Malformed("x".into()).at_index(3);
        assert!(err.is_malformed());
        assert_eq!(err.to_string(), "malformed JSON: x");
    }
}
