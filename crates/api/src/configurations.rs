//! `GET`/`PUT /api/v2.0/configurations`: the global webhook switch, Harbor's `notification_enable`
//! ("Webhooks enabled" in Harbor's system settings).
//!
//! Turning it off pauses deliveries on every consumer within a policy-refresh interval; events and
//! delivery tasks keep waiting durably in RabbitMQ, and turning it on delivers them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::error::{echo, ApiError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v2.0/configurations",
        get(get_configurations).put(put_configurations),
    )
}

/// Harbor's shape: each key maps to `{"value": ..., "editable": ...}`.
async fn get_configurations(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let enabled = state.db().notification_enabled().await?;
    Ok(Json(json!({
        "notification_enable": {"value": enabled, "editable": true}
    })))
}

/// Harbor's shape: plain values, e.g. `{"notification_enable": false}`.
async fn put_configurations(
    State(state): State<AppState>,
    body: Result<Json<Map<String, Value>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid configuration body: {}",
            echo(&e.body_text())
        ))
    })?;
    for key in body.keys() {
        if key != "notification_enable" {
            return Err(ApiError::BadRequest(format!(
                "unsupported configuration key {}: regrelay manages only notification_enable",
                echo(key)
            )));
        }
    }
    if let Some(value) = body.get("notification_enable") {
        let enabled = value.as_bool().ok_or_else(|| {
            ApiError::BadRequest("notification_enable must be true or false".into())
        })?;
        state.db().set_notification_enabled(enabled).await?;
        tracing::info!(
            message = "Global webhook switch changed.",
            notification_enable = enabled
        );
    }
    Ok(Json(json!({})))
}
