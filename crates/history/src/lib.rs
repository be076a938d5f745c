//! regrelay's PostgreSQL store: the schema, projects, webhook policies and settings (SPEC §4), and
//! the delivery history (SPEC §5).
//!
//! - `store`: [`Database`] (a connection pool; building it does no I/O; the readiness check) and
//!   [`StoreError`]; `store::tls`, TLS with libpq's `sslmode` ([`SslMode`]) over rustls.
//! - `migrate`: numbered SQL migrations (`migrations/NNNN_<name>.sql`), applied under an advisory lock.
//! - `projects`: the `projects` table: a [`Project`], named by the events' namespace, keeps a stable
//!   numeric id.
//! - [`policy`]: the policy model (with [`Project`]), its validation (Harbor's messages) and the
//!   TCR-style filters. No I/O.
//! - [`policies`]: the `notification_policies` table: create, read, list (paged), replace, delete, and
//!   the consumer's load of the enabled policies.
//! - [`sealing`]: [`SecretsKeyring`] (`secrets_key`) and credentials sealed at rest with
//!   ChaCha20-Poly1305, bound to their policy and field.
//! - `settings`: the `settings` row (Harbor's `notification_enable`) and the generation counter.
//! - [`executions`]: the history tables (`executions`, `tasks`, `task_logs`) in Harbor's shape: the
//!   consumer's idempotent batch write `record_deliveries`, Harbor's status roll-up, and the API's
//!   reads (executions, tasks, a task's log, last triggers).
//! - [`recorder`]: [`HistoryRecorder`], the batching writer the consumer awaits before it acks.
//! - [`retention`]: `sweep_history`, deleting finished executions by count and age, in batches,
//!   under a try-lock so one consumer sweeps at a time.
//!
//! Design constraints:
//! - All SQL lives in this crate, one module per table; callers speak in domain verbs.
//! - Every write to policies or settings bumps the generation counter in the same transaction, so a
//!   consumer that reads an unchanged generation knows its in-memory copy is current.
//! - The database URL holds a password: no error, log line or `Debug` output shows it.
//! - Credentials in targets are sealed at rest when a keyring is set ([`Database::with_secrets`]),
//!   stored as given (plain text) otherwise; either way callers see plain text (`sealing`).
//! - Several processes may start at once against one database: migrations serialise on an advisory
//!   lock, and inserts that may race (projects, history records) are idempotent.
//! - History is written monotonically: a redelivered or stale record never moves a task backwards.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod executions;
mod migrate;
pub mod policies;
pub mod policy;
mod projects;
pub mod recorder;
pub mod retention;
pub mod sealing;
mod settings;
mod store;
pub mod target_health;
pub mod target_rates;

pub use policy::Project;
pub use recorder::{HistoryRecorder, RecorderMetrics, RecorderSettings};
pub use retention::{SweepReport, SweepRules};
pub use sealing::SecretsKeyring;
pub use store::{Database, SslMode, StoreError, TlsError};
