//! [`DeadLetterError`]: what an operation on the dead-letter queue can fail with.

use regrelay_producer::BrokerError;

use crate::reason::UnknownReason;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    #[error("broker operation on the dead-letter queue failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    UnknownReason(#[from] UnknownReason),
    #[error("invalid dead-letter id {0:?}: expected a UUID")]
    InvalidId(String),
    #[error("invalid duration {text:?}: {message} (examples: 90s, 10m, 1h30m, 2d)")]
    InvalidDuration { text: String, message: &'static str },
}

impl DeadLetterError {
    /// The broker is down or the connection failed: try again later (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DeadLetterError::Unavailable(_) | DeadLetterError::Amqp(_)
        )
    }
}
