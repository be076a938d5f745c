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
//! - [`server`]: [`serve`], the connection loop: header-read and idle timeouts, a connection cap,
//!   graceful shutdown with a drain timeout.
//!
//! [`app`] builds the router (tests drive it on port 0); [`serve`] runs it until shutdown.

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
pub mod server;
pub mod state;
pub mod telemetry;
pub mod test_delivery;

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use server::{serve, ServerSettings};
pub use state::{AdminSettings, AppState, IngestSettings, TestDeliverySettings};

/// The whole HTTP application: health and metrics always; ingest and the policy API when the state
/// carries their settings. Every error answer (`4xx`, `5xx`) carries Harbor's error body, whether a
/// handler, an extractor's rejection, the method router (`405`) or the timeout layer (`408`) made it.
pub fn app(state: AppState, request_timeout: Duration) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(telemetry::metrics));
    if let Some(ingest) = state.ingest() {
        router = router.merge(
            Router::new()
                .route("/api/v1/events", post(ingest::post_events))
                .layer(axum::extract::DefaultBodyLimit::max(ingest.max_body_bytes))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_ingest_token,
                )),
        );
    }
    if state.admin().is_some() {
        router = router.merge(
            policies::router()
                .merge(configurations::router())
                .merge(executions::router())
                .merge(dead_letters::router())
                .merge(test_delivery::router())
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_admin,
                )),
        );
    }
    router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::track_http,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outermost, so it also sees the timeout layer's 408.
        .layer(axum::middleware::from_fn(error::harbor_error_body))
        .with_state(state)
}
