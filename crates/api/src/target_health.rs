//! Receiver health (administrator only): each policy target's recent success rate, consecutive
//! failures, last success and failure, and its circuit, failing first.
//!
//! | method and path | result |
//! |---|---|
//! | `GET /api/v1/targets/health?state=&project=&policy=&page=&page_size=` | `200`, JSON array; `X-Total-Count` and `Link` headers |
//!
//! `state` is `open` (the circuit is open), `failing` (the last attempt failed) or `healthy`;
//! `project` a project's name; `policy` a policy id. Harbor's paging (`page` from 1,
//! `page_size` at most 100). The rows are written by the consumers' history batches
//! (`regrelay_history::target_health`); `regrelay targets` prints the same list.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use regrelay_history::target_health::{HealthQuery, HealthState, TargetHealth};
use serde::Deserialize;

use crate::error::{echo, ApiError};
use crate::paging::{paging_headers, ListParams};
use crate::state::AppState;

const PATH: &str = "/api/v1/targets/health";

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(list_target_health))
}

#[derive(Debug, Default, Deserialize)]
pub struct HealthParams {
    state: Option<String>,
    project: Option<String>,
    policy: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

/// The query a request asks for, or a `400` naming what is wrong.
fn query_of(params: &HealthParams) -> Result<(HealthQuery, ListParams), ApiError> {
    let listing = ListParams {
        page: params.page.clone(),
        page_size: params.page_size.clone(),
        ..ListParams::default()
    };
    let page = listing.page()?;
    let state = match params
        .state
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(text) => Some(HealthState::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid state {:?}: expected open, failing or healthy",
                echo(text)
            ))
        })?),
    };
    let policy_id = match params
        .policy
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "invalid policy {:?}: expected a policy id",
                echo(text)
            ))
        })?),
    };
    let project = params
        .project
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if project
        .as_deref()
        .is_some_and(|p| p.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "invalid project: it contains a control character".into(),
        ));
    }
    Ok((
        HealthQuery {
            state,
            project,
            policy_id,
            page: i64::try_from(page.page).unwrap_or(i64::MAX),
            page_size: i64::try_from(page.size).unwrap_or(100),
        },
        listing,
    ))
}

pub async fn list_target_health(
    State(state): State<AppState>,
    params: Result<Query<HealthParams>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<TargetHealth>>), ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (query, listing) = query_of(&params)?;
    let (rows, total) = state.db().target_health(&query).await?;
    let page = listing.page()?;
    let headers = paging_headers(PATH, &listing, page, u64::try_from(total).unwrap_or(0));
    Ok((headers, Json(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_are_refused_with_what_is_wrong() {
        let params = |state: &str, policy: &str| HealthParams {
            state: Some(state.into()),
            policy: Some(policy.into()),
            ..HealthParams::default()
        };
        let message = |p: HealthParams| match query_of(&p) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            message(params("broken", "")),
            "invalid state \"broken\": expected open, failing or healthy"
        );
        assert_eq!(
            message(params("open", "x1")),
            "invalid policy \"x1\": expected a policy id"
        );
        let (query, _) = query_of(&params("open", "7")).unwrap();
        assert_eq!(query.state, Some(HealthState::Open));
        assert_eq!(query.policy_id, Some(7));
        assert_eq!((query.page, query.page_size), (1, 10));
    }
}
