//! [`TargetLimiter`]: at most N attempts in flight per target, and a bound on how many tasks may wait
//! for one target, so a slow or dead receiver cannot occupy the consumer's whole prefetch window.
//!
//! Design constraints:
//! - The broker's prefetch bounds the tasks a consumer holds. If one target's tasks could all wait
//!   here, a dead target would fill that window and starve every healthy target. So a task that finds
//!   its target's slots taken *and* `max_waiting` tasks already queued for it is not held: the
//!   delivery stage defers it to a short retry queue (not counted as an attempt) and takes the next.
//! - Deferring costs a round trip through a retry queue and at least `deferral_delay`, so it is only
//!   worth it for a target that *holds* slots: one whose attempts are slow. A target that answers
//!   quickly frees its slots within milliseconds, so its tasks wait here instead, however many
//!   there are. Without this, a single busy but healthy target (the common case) had most of its
//!   tasks bounced through the retry queue every second, and throughput collapsed. "Slow" is an
//!   exponentially weighted average of the target's recent attempt durations above
//!   [`SLOW_ATTEMPT`]; a dead target whose attempts time out is slow, one that refuses connections
//!   at once is not (its tasks fail fast and leave the window quickly anyway). A target with no
//!   completed attempt yet counts as slow.
//! - No task waits longer than `max_wait` (the deferral delay): a fast target that suddenly hangs
//!   holds its waiting tasks at most that long before they are deferred, and other targets get
//!   the window back.
//! - No polling: waiting is on a semaphore.
//! - Bounded state: at most [`MAX_TRACKED_TARGETS`] targets are remembered; past that, targets with
//!   nothing in flight and nothing waiting are forgotten (they count as new, i.e. slow, next time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct TargetLimiter {
    /// Attempts one target may have in flight at once.
    per_target: usize,
    /// Tasks that may wait for a busy target before further ones are deferred.
    max_waiting: usize,
    /// Longest a task waits for a slot before it is deferred after all: a fast target that turns
    /// dead mid-stream keeps its waiting tasks only this long (its average changes only as its
    /// hanging attempts time out).
    max_wait: Duration,
    /// One slot per target fingerprint, created on first use.
    targets: Mutex<HashMap<String, Arc<TargetSlot>>>,
}

/// Targets whose slots and averages are kept; idle ones beyond this are forgotten.
pub(crate) const MAX_TRACKED_TARGETS: usize = 10_000;

/// Above this average attempt duration a target counts as slow, and its surplus tasks are deferred.
pub(crate) const SLOW_ATTEMPT: Duration = Duration::from_millis(250);

struct TargetSlot {
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Recent attempt durations, exponentially weighted (microseconds). 0 until the first attempt
    /// completes: a target not heard from yet is treated as slow, because a dead one's first burst
    /// would otherwise fill the window for a whole timeout before its average says so.
    average_attempt_micros: AtomicU64,
}

pub enum Admission {
    /// Go ahead; the permit frees the slot when dropped.
    Go(OwnedSemaphorePermit),
    /// The target is saturated: defer the task.
    Saturated,
}

impl TargetLimiter {
    pub fn new(per_target: usize, max_waiting: usize, max_wait: Duration) -> Self {
        Self {
            per_target: per_target.max(1),
            max_waiting,
            max_wait,
            targets: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, target: &str) -> Arc<TargetSlot> {
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if targets.len() >= MAX_TRACKED_TARGETS && !targets.contains_key(target) {
            // Keep a target someone holds (a task waiting or attempting, a permit out).
            targets.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || Arc::strong_count(&slot.semaphore) > 1
                    || slot.waiting.load(Ordering::Relaxed) > 0
            });
        }
        targets
            .entry(target.to_owned())
            .or_insert_with(|| {
                Arc::new(TargetSlot {
                    semaphore: Arc::new(Semaphore::new(self.per_target)),
                    waiting: AtomicUsize::new(0),
                    average_attempt_micros: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Feeds one attempt's duration into the target's average (weight 1/8 for the newest).
    pub fn record_attempt(&self, target: &str, elapsed: Duration) {
        let slot = self.slot(target);
        let sample = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // A lost update under a race only skews the average slightly; no lock needed.
        let old = slot.average_attempt_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        slot.average_attempt_micros.store(new, Ordering::Relaxed);
    }

    /// Whether the target's recent attempts were quick: known (at least one completed) and averaging
    /// at most [`SLOW_ATTEMPT`]. The matching stage attempts only such targets itself.
    pub fn is_fast(&self, target: &str) -> bool {
        let average = self
            .slot(target)
            .average_attempt_micros
            .load(Ordering::Relaxed);
        !is_slow(average)
    }

    pub async fn admit(&self, target: &str) -> Admission {
        let slot = self.slot(target);
        if let Ok(permit) = slot.semaphore.clone().try_acquire_owned() {
            return Admission::Go(permit);
        }
        let slow = is_slow(slot.average_attempt_micros.load(Ordering::Relaxed));
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting && slow {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Admission::Saturated;
        }
        let permit =
            tokio::time::timeout(self.max_wait, slot.semaphore.clone().acquire_owned()).await;
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        match permit {
            Ok(Ok(permit)) => Admission::Go(permit),
            // Waited as long as a deferral would take: defer after all.
            Err(_) => Admission::Saturated,
            // The semaphore is never closed; treat the impossible as saturation, not a panic.
            Ok(Err(_)) => Admission::Saturated,
        }
    }
}

/// A target with no completed attempt (average 0) counts as slow.
fn is_slow(average_micros: u64) -> bool {
    average_micros == 0
        || average_micros > u64::try_from(SLOW_ATTEMPT.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {

    #[test]
    fn idle_targets_are_forgotten_past_the_bound() {
        let limiter = TargetLimiter::new(2, 2, Duration::from_millis(10));
        for i in 0..MAX_TRACKED_TARGETS + 10 {
            limiter.record_attempt(&format!("target-{i}"), Duration::from_millis(1));
        }
        let tracked = limiter
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(tracked <= MAX_TRACKED_TARGETS, "{tracked} tracked");
        assert!(limiter.is_fast(&format!("target-{}", MAX_TRACKED_TARGETS + 9)));
    }

    use super::*;

    #[tokio::test]
    async fn a_slow_target_saturates_after_slots_and_waiters_are_taken() {
        let limiter = Arc::new(TargetLimiter::new(1, 1, Duration::from_secs(60)));
        limiter.record_attempt("a", Duration::from_secs(3));
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

    #[tokio::test]
    async fn a_fast_target_keeps_its_tasks_waiting_instead_of_deferring_them() {
        let limiter = Arc::new(TargetLimiter::new(1, 1, Duration::from_secs(60)));
        limiter.record_attempt("a", Duration::from_millis(2));
        let Admission::Go(first) = limiter.admit("a").await else {
            panic!("first must go")
        };
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { matches!(limiter.admit("a").await, Admission::Go(_)) })
            })
            .collect();
        while limiter.targets.lock().unwrap()["a"]
            .waiting
            .load(Ordering::Acquire)
            < 5
        {
            tokio::task::yield_now().await;
        }
        drop(first);
        for waiter in waiters {
            assert!(
                waiter.await.unwrap(),
                "every task of a fast target gets its turn"
            );
        }
    }

    #[test]
    fn only_a_target_with_quick_recent_attempts_is_fast() {
        let limiter = TargetLimiter::new(1, 1, Duration::from_secs(60));
        assert!(
            !limiter.is_fast("new"),
            "a target not heard from is not fast"
        );
        limiter.record_attempt("quick", Duration::from_millis(3));
        assert!(limiter.is_fast("quick"));
        limiter.record_attempt("hanging", Duration::from_secs(10));
        assert!(!limiter.is_fast("hanging"));
    }

    #[test]
    fn the_average_follows_recent_attempts() {
        let limiter = TargetLimiter::new(1, 1, Duration::from_secs(60));
        limiter.record_attempt("t", Duration::from_secs(3));
        for _ in 0..40 {
            limiter.record_attempt("t", Duration::from_millis(1));
        }
        let average = limiter.targets.lock().unwrap()["t"]
            .average_attempt_micros
            .load(Ordering::Relaxed);
        assert!(average < 250_000, "{average}");
    }

    #[tokio::test]
    async fn a_waiting_task_is_deferred_after_max_wait() {
        let limiter = TargetLimiter::new(1, 8, Duration::from_millis(50));
        limiter.record_attempt("a", Duration::from_millis(2));
        let Admission::Go(_held) = limiter.admit("a").await else {
            panic!("first must go")
        };
        // A fast target, so the task waits; its slot never frees, so after max_wait it is deferred.
        assert!(matches!(limiter.admit("a").await, Admission::Saturated));
    }
}
