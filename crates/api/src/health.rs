//! `/healthz` and `/readyz`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// Liveness: the process runs and answers HTTP. Never touches a dependency, so a broker outage does
/// not make an orchestrator restart healthy processes.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: a real round trip to RabbitMQ (a passive declare of the events queue).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.publisher().broker().check().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": {"broker": "ok"}})),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "checks": {"broker": error.to_string()}})),
        ),
    }
}
