//! Publishing dead letters from the stages: the `dead-letter.v1` body is
//! [`regrelay_dead_letters::DeadLetterBody`] (one type for writer and reader); here it is published
//! patiently, counted and logged.
//!
//! Design constraints:
//! - A dead letter is published and confirmed before the message it replaces is acked; an outage
//!   is waited out for `outage_hold`, then the message is parked (`stage::settle`).
//! - Every reason is a [`DeadLetterReason`]: the metric's label set is closed and pre-registered.

use regrelay_dead_letters::DeadLetterBody;
use serde::Serialize;

use crate::context::DeliveryContext;
use crate::stage::{Settlement, StageError};

/// Publishes `letter` and waits for the broker's confirm, waiting out an outage for
/// `outage_hold` (a deleted dead-letter queue is declared again).
pub(crate) async fn publish<T: Serialize>(
    ctx: &DeliveryContext,
    letter: &DeadLetterBody<T>,
) -> Result<(), StageError> {
    let message = letter
        .to_message()
        .map_err(|error| StageError::Bug("cannot encode a dead letter", error))?;
    ctx.publish_patiently("publish_dead_letter", || ctx.queue.dead_letter(&message))
        .await?;
    ctx.metrics
        .dead_letters
        .with_label_values(&[letter.reason.as_str()])
        .inc();
    tracing::warn!(
        message = "Delivery dead-lettered.",
        dead_letter_id = %letter.id,
        reason = letter.reason.as_str(),
        detail = %letter.detail,
        attempts = letter.attempts,
        policy_id = letter.policy.as_ref().map(|p| p.id),
        target = letter.target.as_ref().map(|t| t.address.as_str()),
    );
    Ok(())
}

/// Publishes the dead letter; the message it replaces is then acked, or parked when the broker
/// could not take it.
pub(crate) async fn publish_and_settle<T: Serialize>(
    ctx: &DeliveryContext,
    letter: &DeadLetterBody<T>,
) -> Settlement {
    match publish(ctx, letter).await {
        Ok(()) => Settlement::Ack,
        Err(error) => Settlement::Requeue(error),
    }
}
