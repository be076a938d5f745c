//! The dead-letter API (administrator only): list, show, replay and purge what waits on
//! `<prefix>.dead-letter`.
//!
//! | method and path | result |
//! |---|---|
//! | `GET /api/v1/dead-letters?project=&policy_id=&event_type=&reason=&older_than=&newer_than=&limit=` | `200`, JSON array of summaries |
//! | `GET /api/v1/dead-letters/{id}` | `200` with everything known, or `404` |
//! | `POST /api/v1/dead-letters/replay` `{"ids": [...]}` or `{"all": true, "filter": {...}}` | `200`, `{"replayed", "not_found", "failed"}` |
//! | `DELETE /api/v1/dead-letters?<filters>` | `200`, `{"purged": n}` (no filter: everything) |
//!
//! Design constraints:
//! - Thin handlers over [`regrelay_dead_letters::DeadLetterQueue`], which the `regrelay dlq` commands use too, so the
//!   API and the CLI share one behaviour and one set of guarantees (nothing lost while browsing; a
//!   dead letter removed only once its replay is confirmed).
//! - Bad input is `400` with what is wrong (an unparsable duration, a bad UUID, a selection that is
//!   neither ids nor all); a broker that cannot be reached is `503`, the detail logged.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use regrelay_dead_letters::{
    parse_age, parse_ids, DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterReason,
    DeadLetterSummary, ReplayReport, ReplaySelection,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// Summaries a listing returns unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// The most a listing returns.
const MAX_LIMIT: usize = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/dead-letters",
            get(list_dead_letters).delete(purge_dead_letters),
        )
        .route("/api/v1/dead-letters/replay", post(replay_dead_letters))
        .route("/api/v1/dead-letters/{id}", get(show_dead_letter))
}

/// Filters as query parameters: all text, parsed here so every mistake gets a clear `400`.
#[derive(Debug, Default, Deserialize)]
pub struct FilterParams {
    project: Option<String>,
    policy_id: Option<String>,
    event_type: Option<String>,
    reason: Option<String>,
    older_than: Option<String>,
    newer_than: Option<String>,
    limit: Option<String>,
}

/// Filters in a replay body: `policy_id` a number, durations as text (`"1h"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterIn {
    project: Option<String>,
    policy_id: Option<i64>,
    event_type: Option<String>,
    reason: Option<String>,
    older_than: Option<String>,
    newer_than: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    filter: Option<FilterIn>,
}

pub async fn list_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<Vec<DeadLetterSummary>>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit {text:?}: expected a number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let filter = filter_from_params(params)?;
    let found = state
        .dead_letters()
        .list(&filter, limit)
        .await
        .map_err(api_error)?;
    Ok(Json(found))
}

pub async fn show_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    let id = parse_ids(&[id]).map_err(api_error)?[0];
    match state.dead_letters().show(id).await.map_err(api_error)? {
        Some(letter) => Ok(Json(letter)),
        None => Err(ApiError::NotFound(format!("dead letter {id} not found"))),
    }
}

pub async fn replay_dead_letters(
    State(state): State<AppState>,
    body: Result<Json<ReplayIn>, JsonRejection>,
) -> Result<Json<ReplayReport>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let selection = match (body.ids, body.all) {
        (Some(_), true) => {
            return Err(ApiError::BadRequest(
                "give either \"ids\" or \"all\": true, not both".into(),
            ))
        }
        (Some(ids), false) => {
            if ids.is_empty() {
                return Err(ApiError::BadRequest("\"ids\" is empty".into()));
            }
            if body.filter.is_some() {
                return Err(ApiError::BadRequest(
                    "\"filter\" applies to \"all\": true only".into(),
                ));
            }
            ReplaySelection::Ids(parse_ids(&ids).map_err(api_error)?)
        }
        (None, true) => ReplaySelection::All(filter_from_body(body.filter.unwrap_or_default())?),
        (None, false) => {
            return Err(ApiError::BadRequest(
                "say what to replay: {\"ids\": [...]} or {\"all\": true, \"filter\": {...}}".into(),
            ))
        }
    };
    let report = state
        .dead_letters()
        .replay(&selection)
        .await
        .map_err(api_error)?;
    Ok(Json(report))
}

pub async fn purge_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if params.limit.is_some() {
        return Err(ApiError::BadRequest(
            "limit does not apply to a purge; every matching dead letter is purged".into(),
        ));
    }
    let filter = filter_from_params(params)?;
    let purged = state
        .dead_letters()
        .purge(&filter)
        .await
        .map_err(api_error)?;
    Ok(Json(json!({ "purged": purged })))
}

fn filter_from_params(params: FilterParams) -> Result<DeadLetterFilter, ApiError> {
    let policy_id = match params.policy_id.as_deref() {
        None => None,
        Some(text) => Some(text.trim().parse::<i64>().map_err(|_| {
            ApiError::BadRequest(format!("invalid policy_id {text:?}: expected a number"))
        })?),
    };
    filter_from_body(FilterIn {
        project: params.project,
        policy_id,
        event_type: params.event_type,
        reason: params.reason,
        older_than: params.older_than,
        newer_than: params.newer_than,
    })
}

fn filter_from_body(filter: FilterIn) -> Result<DeadLetterFilter, ApiError> {
    let age = |text: Option<String>| -> Result<_, ApiError> {
        text.map(|t| parse_age(&t)).transpose().map_err(api_error)
    };
    // An empty parameter (`?project=`) is no filter, as in a form left blank.
    let text = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    Ok(DeadLetterFilter {
        project: text(filter.project),
        policy_id: filter.policy_id,
        event_type: text(filter.event_type),
        reason: text(filter.reason)
            .map(|name| name.trim().parse::<DeadLetterReason>())
            .transpose()
            .map_err(|error| api_error(error.into()))?,
        older_than: age(text(filter.older_than))?,
        newer_than: age(text(filter.newer_than))?,
    })
}

fn api_error(error: DeadLetterError) -> ApiError {
    if error.is_unavailable() {
        tracing::warn!(message = "Dead-letter queue unavailable.", error = %error);
        ApiError::ServiceUnavailable(
            "the broker is unavailable, so the dead-letter queue cannot be read; try again".into(),
        )
    } else {
        ApiError::BadRequest(error.to_string())
    }
}
