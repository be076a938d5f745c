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

/// Readiness: real round trips to RabbitMQ (a passive declare of the events queue) and PostgreSQL
/// (`SELECT 1`), run side by side.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (broker, db) = tokio::join!(state.publisher().broker().check(), state.db().check());
    let broker = broker.map_err(|e| e.to_string());
    let db = db.map_err(|e| e.to_string());
    let ready = broker.is_ok() && db.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"broker": show(&broker), "database": show(&db)},
        // Of a cluster's addresses, the one in use (or tried next); password redacted.
        "broker_address": state.publisher().broker().address(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
