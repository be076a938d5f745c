//! regrelay's HTTP surface.
//!
//! Module map:
//! - [`state`]: [`AppState`], what every handler can reach, and the settings it is built from.
//! - [`error`]: [`ApiError`], the one error type of every handler, rendered as Harbor's error body.
//! - [`auth`]: bearer-token check for the ingest endpoint.
//! - [`ingest`]: `POST /api/v1/events` (Harbor JSON and Distribution notifications).
//! - [`health`]: `/healthz` (the process runs) and `/readyz` (the broker answers).
//! - [`telemetry`]: the API's metrics, the per-route HTTP metrics layer and `/metrics`.
//!
//! [`app`] builds the router (tests drive it on port 0); [`serve`] runs it until shutdown.

pub mod auth;
pub mod error;
pub mod health;
pub mod ingest;
pub mod state;
pub mod telemetry;

use std::future::Future;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use state::{AppState, IngestSettings};

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let ingest = Router::new()
        .route("/api/v1/events", post(ingest::post_events))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.ingest().max_body_bytes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_ingest_token,
        ));
    Router::new()
        .merge(ingest)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(telemetry::metrics))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::track_http,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            state.request_timeout(),
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then lets in-flight requests finish for up
/// to `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop_rx = stop_rx;
    let drain_deadline = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(message = "HTTP requests still running after the drain timeout; closing.", drain = ?drain);
            Ok(())
        }
    }
}
