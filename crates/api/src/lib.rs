//! regrelay's HTTP surface.
//!
//! Module map:
//! - [`state`]: [`AppState`], what every handler can reach, and the settings it is built from.
//! - [`error`]: [`ApiError`], the one error type of every handler, rendered as Harbor's error body.
//! - [`auth`]: bearer-token check for ingest; Basic or bearer administrator check for the policy API.
//! - [`ingest`]: `POST /api/v1/events` (Harbor JSON and Distribution notifications).
//! - [`policies`]: Harbor's webhook policy API (`/api/v2.0/projects/{p}/webhook/...`) and
//!   regrelay's system-wide policies (`/api/v1/system/webhook/policies`).
//! - [`executions`]: Harbor's webhook history API (a policy's executions, their tasks, a task's
//!   log, `lasttrigger`), for project and system-wide policies.
//! - [`test_delivery`]: `POST .../webhook/policies/{id}/test` (and `.../policies/test` for a
//!   policy not saved yet): a sample event to every target now, each target's result returned.
//! - [`dead_letters`]: `/api/v1/dead-letters`: list, show, replay and purge dead letters.
//! - [`configurations`]: `GET`/`PUT /api/v2.0/configurations` (the global `notification_enable` switch).
//! - [`policy_generation`]: the policy generation stamped on ingested events, so a policy write is
//!   seen by the next event.
//! - [`paging`]: Harbor's `page`/`page_size`, `X-Total-Count` and `Link`.
//! - [`health`]: `/healthz` (the process runs) and `/readyz` (the broker answers).
//! - [`telemetry`]: the API's metrics, the per-route HTTP metrics layer and `/metrics`.
//! - `router`: [`app`], the router of every resource under the shared layers (metrics, timeout,
//!   Harbor's error body).
//! - [`server`]: [`serve`], the connection loop: header-read and idle timeouts, a connection cap,
//!   graceful shutdown with a drain timeout.
//!
//! [`app`] builds the router (tests drive it on port 0); [`serve`] runs it until shutdown.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod configurations;
pub mod dead_letters;
pub mod error;
pub mod executions;
pub mod health;
pub mod ingest;
pub mod paging;
pub mod policies;
pub mod policy_generation;
mod router;
pub mod server;
pub mod state;
pub mod target_health;
pub mod telemetry;
pub mod test_delivery;

pub use error::ApiError;
pub use router::app;
pub use server::{serve, ServerSettings};
pub use state::{AdminSettings, AppState, IngestSettings, TestDeliverySettings};
