//! regrelay's dead letters: one vocabulary, one contract, and the operator's tools.
//!
//! Module map:
//! - [`reason`]: [`DeadLetterReason`], every reason a message is dead-lettered (closed; also the
//!   metric label and the filter value).
//! - [`letter`]: [`DeadLetterBody`], the `dead-letter.v1` body and headers, written by the consumer
//!   (through [`regrelay_producer::TaskQueue::dead_letter`]) and read back here.
//! - [`queue`]: [`DeadLetterQueue`], list, show, replay and purge over `<prefix>.dead-letter`,
//!   losing nothing; used by `regrelay dlq` and `/api/v1/dead-letters`.
//! - [`filter`], [`view`], [`error`], [`metrics`]: what an operation selects, shows, fails with and
//!   counts. `scan` (private) holds messages while an operation looks at them.
//!
//! Dependency direction: `events` ← `producer`, `history` ← this crate ← `consumer`, `api`,
//! `regrelay`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![warn(unreachable_pub)]

mod amqp_json;
pub mod error;
pub mod filter;
pub mod letter;
pub mod metrics;
pub mod queue;
pub mod reason;
mod scan;
pub mod view;

pub use error::DeadLetterError;
pub use filter::{parse_age, parse_ids, DeadLetterFilter, ReplaySelection};
pub use letter::{now_rfc3339, DeadLetterBody, Original, PolicySummary, TargetSummary, SCHEMA};
pub use metrics::DeadLetterMetrics;
pub use queue::{spawn_depth_monitor, DeadLetterQueue, DEFAULT_SCAN_LIMIT};
pub use reason::{DeadLetterReason, UnknownReason};
pub use view::{DeadLetter, DeadLetterSummary, MessageInfo, ReplayReport};
