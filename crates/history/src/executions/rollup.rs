//! Pure decisions over statuses: Harbor's roll-up of an execution from its tasks ([`rollup`]) and
//! whether a step may replace the stored one ([`supersedes`]). No I/O.

use super::model::TaskStatus;

/// Harbor's roll-up of an execution's status from its tasks': Running while any task is Pending,
/// Scheduled or Running; else Error if any erred; else Stopped if any stopped; else Success (also for
/// no tasks at all, as Harbor does).
pub fn rollup(tasks: &[TaskStatus]) -> TaskStatus {
    let any = |wanted: &[TaskStatus]| tasks.iter().any(|s| wanted.contains(s));
    if any(&[
        TaskStatus::Pending,
        TaskStatus::Scheduled,
        TaskStatus::Running,
    ]) {
        TaskStatus::Running
    } else if any(&[TaskStatus::Error]) {
        TaskStatus::Error
    } else if any(&[TaskStatus::Stopped]) {
        TaskStatus::Stopped
    } else {
        TaskStatus::Success
    }
}

/// Whether a step `(run_count, status)` may replace the stored one: it has more attempts, or as many
/// and does not move a finished task back to unfinished. The SQL of `record_deliveries` says the
/// same (`FRESHER_THAN_STORED`); the two must agree.
pub fn supersedes(new: (i32, TaskStatus), stored: (i32, TaskStatus)) -> bool {
    new.0 > stored.0 || (new.0 == stored.0 && (new.1.is_final() || !stored.1.is_final()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn rollup_is_harbors() {
        let check = |tasks: &[TaskStatus], expected: TaskStatus| {
            assert_eq!(rollup(tasks), expected, "{tasks:?}");
        };
        check(&[], Success);
        check(&[Success], Success);
        check(&[Pending], Running);
        check(&[Scheduled], Running);
        check(&[Running], Running);
        check(&[Error], Error);
        check(&[Stopped], Stopped);
        check(&[Success, Error, Scheduled], Running);
        check(&[Success, Error, Stopped], Error);
        check(&[Success, Stopped], Stopped);
        check(&[Success, Success], Success);
        check(&[Error, Pending], Running);
    }

    #[test]
    fn a_step_supersedes_only_when_as_far_along() {
        let check = |new: (i32, TaskStatus), stored: (i32, TaskStatus), expected: bool| {
            assert_eq!(supersedes(new, stored), expected, "{new:?} over {stored:?}");
        };
        check((2, Success), (1, Scheduled), true);
        check((1, Scheduled), (2, Success), false);
        check((1, Scheduled), (2, Scheduled), false);
        // The same step again: a no-op update.
        check((1, Success), (1, Success), true);
        // Equal counts: forward to final, never back from final.
        check((1, Error), (1, Running), true);
        check((1, Running), (1, Error), false);
        check((0, Running), (0, Pending), true);
        // A replay of a dead-lettered delivery goes on from Error.
        check((4, Running), (3, Error), true);
    }
}
