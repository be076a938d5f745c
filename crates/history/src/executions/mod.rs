//! The delivery history (SPEC §5) in Harbor's shape: the `executions`, `tasks` and `task_logs` tables.
//!
//! - `model`: [`TaskStatus`], [`ExecutionTrigger`], [`VendorType`] (Harbor's vocabulary, with
//!   Harbor's names); [`DeliveryRecord`] and [`AttemptLog`], what the consumer writes;
//!   [`Execution`], [`Task`], [`ExecutionQuery`], [`LastTrigger`], what the API reads.
//! - `rollup`: [`rollup`], an execution's status from its tasks', and [`supersedes`], whether a
//!   step may replace the stored one (pure).
//! - `record`: `Database::record_deliveries`, the consumer's writes, one batch per transaction:
//!   the batch folded per key, then its SQL statements, pipelined.
//! - `read`: the reads behind the API: `list_executions`, `get_execution`, `list_tasks`,
//!   `get_task`, `task_log`, `last_triggers`.
//! - `log_line`: [`format_log_line`], one attempt as one line of a task's log (pure).
//!
//! Design constraints:
//! - One delivery (event × policy × target) is one execution with one task, found again by its
//!   `history_key`; each attempt adds one log line, unique per (task, attempt).
//! - Writes are idempotent and monotonic: RabbitMQ redelivers, so the same record, or an older one,
//!   may arrive again (also in the same batch). A record moves a task only when it is at least as far
//!   along: more attempts, or as many and not going from a final status back to an unfinished one
//!   ([`supersedes`], mirrored by the SQL). Log lines are inserted `ON CONFLICT DO NOTHING`.
//! - A batch is one transaction with a fixed number of statements (arrays through `UNNEST`),
//!   whatever its size, so the recorder's batching really saves round trips.
//! - A record whose policy was deleted meanwhile is skipped, not an error: the policy's history is
//!   gone with it (`ON DELETE CASCADE`), and failing the batch would fail every other record in it.
//! - Text goes to PostgreSQL `TEXT`, which cannot hold NUL: NULs (a receiver's answer may have any
//!   bytes) are replaced, so one bad snippet cannot fail a batch forever.

mod log_line;
mod model;
mod read;
mod record;
mod rollup;

pub use log_line::format_log_line;
pub use model::{
    AttemptLog, DeliveryRecord, Execution, ExecutionQuery, ExecutionTrigger, LastTrigger,
    TargetRef, Task, TaskMetrics, TaskStatus, UnknownName, VendorType,
};
pub use rollup::{rollup, supersedes};
