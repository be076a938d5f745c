//! The registry event model and the payload formats regrelay receives and sends. No I/O: every
//! function here takes bytes or values and returns bytes or values, so the formats can be tested
//! exhaustively and every other crate can depend on this one.
//!
//! - [`event_type`]: the 13 event types, their Harbor and CloudEvents names.
//! - [`event`]: [`RegistryEvent`], a validated Harbor Default event kept as its exact JSON text,
//!   and [`parse_harbor_body`] for `application/json` ingest bodies.
//! - [`distribution`]: CNCF Distribution notification envelopes turned into registry events.
//! - [`cloudevents`]: the CloudEvents 1.0 structured-mode payload.
//! - [`slack`]: Harbor's Slack Block Kit payload.
//! - [`error`]: why an ingest body was refused (400 vs 422).
//! - `limits`: the bounds an accepted event keeps (project name length, `occur_at`), below both
//!   `event` and `error`.
//! - `time`: `occur_at` as text for the payloads.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod cloudevents;
pub mod distribution;
pub mod error;
pub mod event;
pub mod event_type;
mod limits;
pub mod operational;
pub mod samples;
pub mod slack;
mod time;

pub use error::{EventError, InvalidReason};
pub use event::{parse_harbor_body, RegistryEvent};
pub use event_type::{EventType, UnknownEventType};
