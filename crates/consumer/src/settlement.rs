//! What a stage's handler decided about a message ([`Settlement`]), why it could not settle it now
//! ([`StageError`]), and which stage it was ([`Stage`]): plain types, so the metrics' label sets
//! and the consume loop (`stage::settle`, the one match over them) share them without a cycle.

/// Which stage a message belongs to: where it is parked, and the `stage` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Matching,
    Delivery,
}

impl Stage {
    pub(crate) const ALL: [Stage; 2] = [Stage::Matching, Stage::Delivery];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Matching => "matching",
            Stage::Delivery => "delivery",
        }
    }
}

/// What a stage's handler decided about the message it took.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Its outcome is durable (delivered, retry or dead letter confirmed, tasks confirmed): ack.
    Ack,
    /// Its outcome could not be made durable now: park it for later (or, stopping, put it back).
    Requeue(StageError),
}

/// Why a message could not be settled now. Each is a state of the world, not of the message: the
/// message is fine and is tried again later. (A message that can never be processed is
/// dead-lettered by its handler, with its reason, and acked.)
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("the database is unavailable")]
    Database(#[source] regrelay_history::StoreError),
    #[error("the broker did not take a message")]
    Broker(#[source] regrelay_producer::PublishError),
    #[error("the process is stopping")]
    ShuttingDown,
    /// Something regrelay itself cannot do (a value its own types cannot encode).
    #[error("{0}")]
    Bug(&'static str, #[source] serde_json::Error),
}

impl StageError {
    /// The `error_type` label of `regrelay_consumer_errors_total`.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            StageError::Database(_) => "database",
            StageError::Broker(_) => "broker",
            StageError::ShuttingDown => "shutdown",
            StageError::Bug(..) => "bug",
        }
    }

    pub(crate) const TYPES: [&'static str; 4] = ["database", "broker", "shutdown", "bug"];
}

/// An error with its causes, `a: b: c`, for log lines.
pub(crate) fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
