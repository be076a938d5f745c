//! "When?": the pure decision that maps the number of attempts made so far to the delay before
//! the next one ([`RetrySchedule`]).
//!
//! Design constraints:
//! - Attempts are *total* attempts, Harbor's `webhook_job_max_retry` meaning: with
//!   `max_attempts = 3` a delivery is tried three times, then given up on.
//! - Exponential and capped: the base delay before retry *n* (after *n* attempts) is
//!   `min(initial × multiplier^(n-1), max)`.
//! - Jittered with "equal jitter" (uniform in `[base/2, base]`) rather than full jitter: many
//!   deliveries failing together (one receiver down) spread out instead of returning in a herd,
//!   yet a retry is never immediate, so a receiver that just failed always gets a breather.
//! - The receiver's `Retry-After` is honoured but clamped to `[our delay, max]`: a receiver can
//!   ask us to wait longer, never shorter than our own backoff, and never hold a delivery beyond
//!   the cap (which bounds how long a message sits in the broker's delay queues).
//! - No panics on any input: exponent and float arithmetic saturate at `max`, so huge attempt
//!   counts or multipliers cannot overflow a `Duration`.
//! - The randomness is injectable ([`RetrySchedule::next_delay_with`]) so the schedule is tested
//!   as a table, without IO or flakiness.

use std::time::Duration;

/// The exponential, capped, jittered backoff between delivery attempts.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// The base delay after the first failed attempt.
    initial: Duration,
    /// The cap on every delay, including a receiver's `Retry-After`.
    max: Duration,
    /// Growth factor per attempt (≥ 1, finite).
    multiplier: f64,
    /// Total attempts before a delivery is given up on (≥ 1).
    max_attempts: u32,
}

/// Why a [`RetrySchedule`] cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryScheduleError {
    #[error("the maximum number of attempts must be at least 1")]
    NoAttempts,
    #[error("the initial retry delay must be greater than zero")]
    ZeroInitialDelay,
    #[error("the initial retry delay ({initial:?}) exceeds the maximum ({max:?})")]
    InitialExceedsMax { initial: Duration, max: Duration },
    #[error("the retry multiplier must be a finite number of at least 1, not {0}")]
    BadMultiplier(f64),
}

impl RetrySchedule {
    pub fn new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        max_attempts: u32,
    ) -> Result<Self, RetryScheduleError> {
        if max_attempts == 0 {
            return Err(RetryScheduleError::NoAttempts);
        }
        if initial.is_zero() {
            return Err(RetryScheduleError::ZeroInitialDelay);
        }
        if initial > max {
            return Err(RetryScheduleError::InitialExceedsMax { initial, max });
        }
        // `is_finite` also refuses NaN, which every comparison would let through.
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(RetryScheduleError::BadMultiplier(multiplier));
        }
        Ok(Self {
            initial,
            max,
            multiplier,
            max_attempts,
        })
    }

    /// The longest delay between attempts (`retry_max_delay`).
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// Total attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the next attempt, after `attempts_made` attempts; `None` when the attempts
    /// have run out. `retry_after` is the receiver's `Retry-After`, if it sent one.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        self.next_delay_with(attempts_made, retry_after, fastrand::f64())
    }

    /// [`next_delay`](Self::next_delay) with the jitter given: `unit` in `[0, 1]` picks the delay
    /// in `[base/2, base]` (0 → `base/2`, 1 → `base`). Out-of-range or NaN values are clamped.
    pub fn next_delay_with(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let base = self.base_delay(attempts_made);
        let unit = if unit.is_nan() {
            1.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = base / 2;
        // `base - half` ≥ 0 and `unit` ≤ 1, so the product stays within `Duration`'s range; float
        // rounding could still nudge the sum past `base`, hence the saturating add and the `min`.
        let delay = half.saturating_add((base - half).mul_f64(unit)).min(base);
        Some(match retry_after {
            Some(wanted) => wanted.max(delay).min(self.max),
            None => delay,
        })
    }

    /// The un-jittered delay after `attempts_made` attempts: `min(initial × multiplier^(n-1), max)`.
    /// An `attempts_made` of 0 is treated like 1 (the first retry).
    fn base_delay(&self, attempts_made: u32) -> Duration {
        let exponent = i32::try_from(attempts_made.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        // An infinite product (huge exponent) or one beyond `Duration`'s range means "the cap".
        match Duration::try_from_secs_f64(secs) {
            Ok(delay) => delay.min(self.max),
            Err(_) => self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn schedule(initial: u64, max: u64, multiplier: f64, attempts: u32) -> RetrySchedule {
        RetrySchedule::new(ms(initial), ms(max), multiplier, attempts).unwrap()
    }

    #[test]
    fn construction_is_validated() {
        let table: Vec<(Duration, Duration, f64, u32, Option<RetryScheduleError>)> = vec![
            (ms(100), ms(1000), 2.0, 3, None),
            (ms(100), ms(100), 1.0, 1, None),
            (
                ms(100),
                ms(1000),
                2.0,
                0,
                Some(RetryScheduleError::NoAttempts),
            ),
            (
                ms(0),
                ms(1000),
                2.0,
                3,
                Some(RetryScheduleError::ZeroInitialDelay),
            ),
            (
                ms(2000),
                ms(1000),
                2.0,
                3,
                Some(RetryScheduleError::InitialExceedsMax {
                    initial: ms(2000),
                    max: ms(1000),
                }),
            ),
            (
                ms(100),
                ms(1000),
                0.5,
                3,
                Some(RetryScheduleError::BadMultiplier(0.5)),
            ),
            (
                ms(100),
                ms(1000),
                f64::INFINITY,
                3,
                Some(RetryScheduleError::BadMultiplier(f64::INFINITY)),
            ),
        ];
        for (initial, max, multiplier, attempts, expected) in table {
            let got = RetrySchedule::new(initial, max, multiplier, attempts).err();
            assert_eq!(
                got, expected,
                "for {initial:?} {max:?} {multiplier} {attempts}"
            );
        }
        assert!(matches!(
            RetrySchedule::new(ms(100), ms(1000), f64::NAN, 3),
            Err(RetryScheduleError::BadMultiplier(_))
        ));
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_with_equal_jitter() {
        let s = schedule(100, 1000, 2.0, 10);
        // (attempts made, jitter unit, expected delay)
        let table = [
            (0, 1.0, ms(100)), // treated as the first retry
            (1, 1.0, ms(100)),
            (1, 0.0, ms(50)),
            (1, 0.5, ms(75)),
            (2, 1.0, ms(200)),
            (2, 0.0, ms(100)),
            (3, 1.0, ms(400)),
            (4, 1.0, ms(800)),
            (5, 1.0, ms(1000)), // 1600 capped
            (5, 0.0, ms(500)),
            (9, 1.0, ms(1000)),
            // Out-of-range jitter is clamped, NaN counts as 1.
            (1, -3.0, ms(50)),
            (1, 7.0, ms(100)),
            (1, f64::NAN, ms(100)),
        ];
        for (attempts, unit, expected) in table {
            assert_eq!(
                s.next_delay_with(attempts, None, unit),
                Some(expected),
                "after {attempts} attempts, unit {unit}"
            );
        }
    }

    #[test]
    fn attempts_are_total_attempts() {
        let s = schedule(100, 1000, 2.0, 3);
        assert_eq!(s.max_attempts(), 3);
        assert!(s.next_delay_with(1, None, 1.0).is_some());
        assert!(s.next_delay_with(2, None, 1.0).is_some());
        assert_eq!(s.next_delay_with(3, None, 1.0), None);
        assert_eq!(s.next_delay_with(u32::MAX, None, 1.0), None);
        let once = schedule(100, 1000, 2.0, 1);
        assert_eq!(once.next_delay_with(1, None, 1.0), None);
    }

    #[test]
    fn retry_after_is_clamped_between_our_delay_and_the_cap() {
        let s = schedule(100, 1000, 2.0, 10);
        // (attempts made, Retry-After, expected) with jitter unit 1.0 (our delay = base).
        let table = [
            (1, ms(0), ms(100)), // shorter than our backoff: ours wins
            (1, ms(60), ms(100)),
            (1, ms(500), ms(500)), // longer: honoured
            (1, ms(1000), ms(1000)),
            (1, ms(5000), ms(1000)), // beyond the cap: capped
            (3, ms(300), ms(400)),
            (3, Duration::MAX, ms(1000)),
        ];
        for (attempts, retry_after, expected) in table {
            assert_eq!(
                s.next_delay_with(attempts, Some(retry_after), 1.0),
                Some(expected),
                "after {attempts} attempts, Retry-After {retry_after:?}"
            );
        }
    }

    #[test]
    fn huge_inputs_saturate_at_the_cap() {
        let s = RetrySchedule::new(ms(1), Duration::MAX, 1e308, u32::MAX).unwrap();
        for unit in [0.0, 0.5, 1.0] {
            let delay = s
                .next_delay_with(u32::MAX - 1, Some(Duration::MAX), unit)
                .unwrap();
            assert_eq!(delay, Duration::MAX, "Retry-After at the cap, unit {unit}");
            let delay = s.next_delay_with(u32::MAX - 1, None, unit).unwrap();
            assert!(delay >= Duration::MAX / 2, "unit {unit}: {delay:?}");
        }
        let s = RetrySchedule::new(ms(1), Duration::from_secs(3600), 10.0, u32::MAX).unwrap();
        assert_eq!(
            s.next_delay_with(1_000_000, None, 1.0),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            s.next_delay_with(1_000_000, None, 0.0),
            Some(Duration::from_secs(1800))
        );
    }

    #[test]
    fn random_jitter_stays_in_range() {
        let s = schedule(100, 1000, 2.0, 10);
        for _ in 0..1000 {
            let delay = s.next_delay(2, None).unwrap();
            assert!((ms(100)..=ms(200)).contains(&delay), "{delay:?}");
        }
    }
}
