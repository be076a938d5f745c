//! [`app`]: the whole HTTP application, every resource's router under its layers.

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::state::AppState;
use crate::{
    auth, configurations, dead_letters, error, executions, health, ingest, policies, target_health,
    telemetry, test_delivery,
};

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
                .merge(target_health::router())
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
