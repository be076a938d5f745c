//! Waiting out a database or broker outage without looping and without losing a message.
//!
//! Design constraints:
//! - A stage never puts a message back in a loop. RabbitMQ 4.x counts every return of a quorum
//!   message against its delivery limit (20 by default) and then drops it (or dead-letters it,
//!   which regrelay's queues do): spinning on an outage would turn it into loss.
//! - A call that fails because the database or the broker is unavailable is retried in place,
//!   with capped backoff, for at most `outage_hold` (the message stays unacked meanwhile: the
//!   prefetch fills and the consumer stops taking work, which is the backpressure we want). Then
//!   the stage gives up on the message *for now*: it parks it in a delay queue (the events wait
//!   queue, or a retry bucket for tasks) and acks it, so it comes back later as a fresh message
//!   with nothing counted against it (`stage::settle`).
//! - The hold is far below RabbitMQ's `consumer_timeout` (30 min): a channel that holds a message
//!   longer is closed by the broker, which returns everything in flight.
//! - A call the database or broker *refuses* (a value that can never be stored) is not retried
//!   here: its caller dead-letters the message at once with the reason.
//! - Stopping the process ends every wait at once.

use std::future::Future;
use std::time::Duration;

use regrelay_history::StoreError;
use regrelay_producer::PublishError;

use crate::context::DeliveryContext;
use crate::settlement::StageError;

/// Whether an error is an outage worth waiting out (rather than a refusal).
pub(crate) trait Outage: std::fmt::Display {
    fn is_outage(&self) -> bool;
}

impl Outage for StoreError {
    fn is_outage(&self) -> bool {
        self.is_unavailable()
    }
}

impl Outage for PublishError {
    /// Every publish failure is the broker's state (down, confirm timeout, a nack from a queue that
    /// has no leader yet, a queue deleted under us) rather than the message's.
    fn is_outage(&self) -> bool {
        true
    }
}

/// How a patient call ended, when it did not succeed.
#[derive(Debug)]
pub(crate) enum GaveUp<E> {
    /// Refused: retrying cannot help.
    Refused(E),
    /// Still failing after the hold (or the process is stopping): the last error.
    Outlasted(E),
}

/// The first retry's delay; doubled up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

impl DeliveryContext {
    /// Runs `call` until it succeeds, is refused, or `hold` has passed while it kept failing with
    /// an outage (or the process is stopping). `what` names the call in logs and in
    /// `regrelay_outage_retries_total{what}`.
    pub(crate) async fn patiently<T, E, F, Fut>(
        &self,
        what: &'static str,
        hold: Duration,
        mut call: F,
    ) -> Result<T, GaveUp<E>>
    where
        E: Outage,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + hold;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_outage() => return Err(GaveUp::Refused(error)),
                Err(error) => error,
            };
            if self.shutdown.is_cancelled() || tokio::time::Instant::now() + delay > deadline {
                return Err(GaveUp::Outlasted(error));
            }
            self.metrics.outage_retries.with_label_values(&[what]).inc();
            tracing::warn!(message = "Waiting out an outage.", call = what, error = %error, retry_in = ?delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(GaveUp::Outlasted(error)),
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
}

impl DeliveryContext {
    /// A publish run [`Self::patiently`] for `outage_hold`; what the broker would still not take
    /// is a [`StageError::Broker`] (the stage then parks the message).
    pub(crate) async fn publish_patiently<T, F, Fut>(
        &self,
        what: &'static str,
        call: F,
    ) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PublishError>>,
    {
        self.patiently(what, self.settings.outage_hold, call)
            .await
            .map_err(|gave_up| match gave_up {
                GaveUp::Refused(error) | GaveUp::Outlasted(error) => StageError::Broker(error),
            })
    }
}
