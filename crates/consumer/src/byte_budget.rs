//! [`ByteBudget`]: bounds the bytes of message bodies a stage holds, not only their count.
//!
//! Design constraints:
//! - AMQP bounds what a consumer holds by message count (the prefetch); RabbitMQ has no byte
//!   prefetch. With events near the 1 MiB body limit, a matching prefetch of 64 held 64 MiB of
//!   bodies and, with the copies processing makes (parsed event, tasks, rendered payloads,
//!   history rows), the process reached 306 MiB.
//! - So the stage adapts its prefetch to what it sees: it remembers the largest of the last
//!   [`WINDOW`] bodies and subscribes with `min(prefetch, max_in_flight_bytes / largest)` (at
//!   least 1). Small events keep the configured prefetch; one large body shrinks it at once, and
//!   it grows back only after a whole window of smaller ones.
//! - Until it has seen [`WARM_UP`] bodies it assumes the largest message ingest accepts, so a stage
//!   that starts in front of a backlog of large events never takes a full prefetch of them; after
//!   that, the window decides.
//! - Independently, a message is handed to its handler only while the bytes being handled stay
//!   within `max_in_flight_bytes` (one message larger than that runs alone): this bounds the
//!   processing copies even before the prefetch has adapted.
//! - Resubscribing costs the messages the broker had already sent under the old prefetch (they go
//!   back to the queue when the old channel closes), so it happens only when the prefetch would
//!   halve or double, not on every size change.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Bodies remembered to size the prefetch.
pub(crate) const WINDOW: usize = 256;

/// Bodies a stage sees before it trusts what it saw over the largest possible size.
pub(crate) const WARM_UP: usize = 32;

/// The byte bound of one stage.
pub(crate) struct ByteBudget {
    limit: usize,
    held: AtomicUsize,
    freed: Notify,
    recent: Mutex<VecDeque<usize>>,
    /// Assumed until [`WARM_UP`] bodies were seen.
    largest_expected: usize,
    observed: AtomicUsize,
}

/// Bytes held for one message being handled; released on drop.
pub(crate) struct HeldBytes {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.freed.notify_waiters();
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes for a stage whose messages may be up to `largest_expected`.
    pub(crate) fn new(limit: usize, largest_expected: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            held: AtomicUsize::new(0),
            freed: Notify::new(),
            recent: Mutex::new(VecDeque::with_capacity(WINDOW)),
            largest_expected,
            observed: AtomicUsize::new(0),
        })
    }

    /// Notes the size of a body just received.
    pub(crate) fn observe(&self, bytes: usize) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(bytes);
        self.observed.fetch_add(1, Ordering::Relaxed);
    }

    /// The prefetch to subscribe with: `configured`, or fewer when recent bodies are large.
    pub(crate) fn prefetch_for(&self, configured: u16) -> u16 {
        let largest = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        let largest = if self.observed.load(Ordering::Relaxed) < WARM_UP {
            largest.max(self.largest_expected)
        } else {
            largest
        };
        let fits = (self.limit / largest).clamp(1, usize::from(u16::MAX));
        configured
            .min(u16::try_from(fits).unwrap_or(u16::MAX))
            .max(1)
    }

    /// Whether a stage subscribed with `current` should subscribe again: the fitting prefetch is
    /// below it, or at least twice it.
    pub(crate) fn should_resubscribe(&self, configured: u16, current: u16) -> bool {
        let wanted = self.prefetch_for(configured);
        wanted < current || (wanted >= current.saturating_mul(2) && wanted > current)
    }

    /// Waits until `bytes` more fit (or nothing is held), then holds them.
    pub(crate) async fn admit(self: &Arc<Self>, bytes: usize) -> HeldBytes {
        loop {
            let freed = self.freed.notified();
            let held = self.held.load(Ordering::Acquire);
            if held == 0 || held.saturating_add(bytes) <= self.limit {
                if self
                    .held
                    .compare_exchange(held, held + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return HeldBytes {
                        budget: self.clone(),
                        bytes,
                    };
                }
                continue;
            }
            freed.await;
        }
    }

    #[cfg(test)]
    /// Bytes being handled now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_shrinks_for_large_bodies_and_grows_back() {
        let budget = ByteBudget::new(4 << 20, 1 << 20);
        assert_eq!(
            budget.prefetch_for(64),
            4,
            "starts as if every message were the largest"
        );
        for _ in 0..WARM_UP - 1 {
            budget.observe(2048);
        }
        assert_eq!(budget.prefetch_for(64), 4);
        budget.observe(2048);
        assert_eq!(
            budget.prefetch_for(64),
            64,
            "once warmed up, small ones let it grow"
        );
        budget.observe(1 << 20);
        assert_eq!(budget.prefetch_for(64), 4);
        assert!(budget.should_resubscribe(64, 64));
        assert!(!budget.should_resubscribe(64, 4));
        budget.observe(8 << 20);
        assert_eq!(budget.prefetch_for(64), 1, "never below one");
        for _ in 0..WINDOW {
            budget.observe(2048);
        }
        assert_eq!(budget.prefetch_for(64), 64);
        assert!(budget.should_resubscribe(64, 1));
        assert!(
            !budget.should_resubscribe(64, 40),
            "not for less than doubling"
        );
    }

    #[tokio::test]
    async fn admission_waits_for_room_but_lets_one_large_message_through() {
        let budget = ByteBudget::new(100, 1);
        let a = budget.admit(60).await;
        let _b = budget.admit(40).await;
        assert_eq!(budget.held(), 100);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(10).await.bytes }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(waiting.await.unwrap(), 10);
        drop(_b);
        assert_eq!(budget.held(), 0);
        let huge = budget.admit(1000).await;
        assert_eq!(
            budget.held(),
            1000,
            "alone, a message over the limit still runs"
        );
        drop(huge);
    }
}
