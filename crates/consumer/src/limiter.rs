//! [`TargetLimiter`]: at most N attempts in flight per target, and a bound on how many tasks may wait
//! for one target, so a slow or dead receiver cannot occupy the consumer's whole prefetch window.
//!
//! Design constraints:
//! - The broker's prefetch bounds the tasks a consumer holds. If one target's tasks could all wait
//!   here, a dead target would fill that window and starve every healthy target. So a task that finds
//!   its target's slots taken *and* `max_waiting` tasks already queued for it is not held: the
//!   delivery stage defers it to a short retry queue (not counted as an attempt) and takes the next.
//! - No polling: waiting is on a semaphore.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct TargetLimiter {
    /// Attempts one target may have in flight at once.
    per_target: usize,
    /// Tasks that may wait for a busy target before further ones are deferred.
    max_waiting: usize,
    /// One slot per target fingerprint, created on first use.
    targets: Mutex<HashMap<String, Arc<TargetSlot>>>,
}

struct TargetSlot {
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
}

pub enum Admission {
    /// Go ahead; the permit frees the slot when dropped.
    Go(OwnedSemaphorePermit),
    /// The target is saturated: defer the task.
    Saturated,
}

impl TargetLimiter {
    pub fn new(per_target: usize, max_waiting: usize) -> Self {
        Self {
            per_target: per_target.max(1),
            max_waiting,
            targets: Mutex::new(HashMap::new()),
        }
    }

    pub async fn admit(&self, target: &str) -> Admission {
        let slot = {
            let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
            targets
                .entry(target.to_owned())
                .or_insert_with(|| {
                    Arc::new(TargetSlot {
                        semaphore: Arc::new(Semaphore::new(self.per_target)),
                        waiting: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        if let Ok(permit) = slot.semaphore.clone().try_acquire_owned() {
            return Admission::Go(permit);
        }
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Admission::Saturated;
        }
        let permit = slot.semaphore.clone().acquire_owned().await;
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        match permit {
            Ok(permit) => Admission::Go(permit),
            // The semaphore is never closed; treat the impossible as saturation, not a panic.
            Err(_) => Admission::Saturated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saturates_after_slots_and_waiters_are_taken() {
        let limiter = Arc::new(TargetLimiter::new(1, 1));
        let Admission::Go(first) = limiter.admit("a").await else {
            panic!("first must go")
        };
        // One waiter is allowed...
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { matches!(limiter.admit("a").await, Admission::Go(_)) })
        };
        tokio::task::yield_now().await;
        while limiter.targets.lock().unwrap()["a"]
            .waiting
            .load(Ordering::Acquire)
            == 0
        {
            tokio::task::yield_now().await;
        }
        // ...the next is deferred, and another target is not affected.
        assert!(matches!(limiter.admit("a").await, Admission::Saturated));
        assert!(matches!(limiter.admit("b").await, Admission::Go(_)));
        drop(first);
        assert!(waiter.await.unwrap());
    }
}
