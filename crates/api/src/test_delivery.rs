//! Test deliveries: `POST /api/v2.0/projects/{p}/webhook/policies/{id}/test` sends a sample event
//! to every target of a saved policy now; `POST /api/v2.0/projects/{p}/webhook/policies/test`
//! does the same for a policy in the body that is not saved yet (check an endpoint before saving,
//! like Harbor's and JFrog's old "Test Endpoint" button). System-wide policies have the same two
//! under `/api/v1/system/webhook/policies`.
//!
//! Design constraints:
//! - The answer is each target's result, `200` whatever the receivers said: the request worked, the
//!   receivers' answers are its content. `400` for a bad body, `404` for an unknown policy.
//! - Saved policies get a history record per target (trigger `MANUAL`); unsaved ones cannot (no
//!   policy id to file it under), so they leave no trace.
//! - A disabled policy can be tested: testing is how one checks it before enabling it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use regrelay_consumer::test_delivery::{run_test_delivery, TargetTestResult, TestDelivery};
use regrelay_events::EventType;
use regrelay_history::policy::{Policy, Target};
use regrelay_history::Project;
use serde::{Deserialize, Serialize};

use crate::error::{echo, ApiError};
use crate::policies::{creator, not_found, parse_id, resolve_project, spec_from, PolicyIn};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v2.0/projects/{project}/webhook/policies/{id}/test",
            post(test_saved_project_policy),
        )
        .route(
            "/api/v2.0/projects/{project}/webhook/policies/test",
            post(test_unsaved_project_policy),
        )
        .route(
            "/api/v1/system/webhook/policies/{id}/test",
            post(test_saved_system_policy),
        )
        .route(
            "/api/v1/system/webhook/policies/test",
            post(test_unsaved_system_policy),
        )
}

/// The project the sample event names.
#[derive(Clone, Copy)]
enum ProjectRef<'a> {
    Known(&'a Project),
    /// Named in the path but not known yet (an unsaved policy's test): no id.
    Named(&'a str),
    /// A system-wide policy: no project of its own, so the sample names a placeholder one.
    SystemWide,
}

impl<'a> ProjectRef<'a> {
    fn name_and_id(self) -> (&'a str, i64) {
        match self {
            ProjectRef::Known(project) => (project.name.as_str(), project.id),
            ProjectRef::Named(name) => (name, 0),
            ProjectRef::SystemWide => ("library", 0),
        }
    }

    fn id(self) -> Option<i64> {
        match self {
            ProjectRef::Known(project) => Some(project.id),
            _ => None,
        }
    }
}

/// The optional body of a saved policy's test.
#[derive(Debug, Default, Deserialize)]
struct TestRequest {
    #[serde(default)]
    event_type: Option<String>,
}

/// The body of an unsaved policy's test: the policy as it would be created, plus the event type.
#[derive(Debug, Deserialize)]
struct UnsavedTestRequest {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(flatten)]
    policy: PolicyIn,
}

#[derive(Debug, Serialize)]
struct TestResponse {
    event_type: &'static str,
    /// True when every target answered 2xx.
    success: bool,
    targets: Vec<TargetTestResult>,
}

fn event_type(requested: Option<&str>) -> Result<EventType, ApiError> {
    match requested.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(EventType::PushArtifact),
        Some(name) => name
            .parse::<EventType>()
            .map_err(|_| ApiError::BadRequest(format!("unsupported event type {}", echo(name)))),
    }
}

/// A saved policy's test body is optional: no body, an empty body or `{}` all mean PUSH_ARTIFACT.
fn parse_optional(body: &[u8]) -> Result<TestRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TestRequest::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid test body: {}", echo(&e.to_string()))))
}

async fn run(
    state: &AppState,
    project: ProjectRef<'_>,
    policy_id: Option<i64>,
    policy_name: &str,
    targets: &[Target],
    event_type: EventType,
) -> Result<Json<TestResponse>, ApiError> {
    let settings = state.test_delivery().ok_or_else(|| {
        ApiError::ServiceUnavailable("test deliveries are not enabled in this process".into())
    })?;
    let (project_name, project_id) = project.name_and_id();
    let results = run_test_delivery(
        TestDelivery {
            clients: &settings.clients,
            allow_private_targets: settings.allow_private_targets,
            event_type,
            project: project_name,
            project_id,
            policy_id,
            policy_name,
            targets,
        },
        policy_id.map(|_| state.db()),
    )
    .await
    .map_err(|e| match e {
        regrelay_consumer::test_delivery::TestDeliveryError::History(store) => {
            ApiError::from(store)
        }
        other => ApiError::Internal(other.to_string()),
    })?;
    tracing::info!(
        message = "Test delivery made.",
        policy_id,
        event_type = event_type.as_str(),
        targets = results.len(),
        succeeded = results.iter().filter(|r| r.success).count(),
    );
    Ok(Json(TestResponse {
        event_type: event_type.as_str(),
        success: results.iter().all(|r| r.success),
        targets: results,
    }))
}

async fn saved(
    state: &AppState,
    project: ProjectRef<'_>,
    id: i64,
    body: &[u8],
) -> Result<Json<TestResponse>, ApiError> {
    let request = parse_optional(body)?;
    let event_type = event_type(request.event_type.as_deref())?;
    let policy: Policy = state
        .db()
        .get_policy(project.id(), id)
        .await?
        .ok_or_else(|| not_found(id))?;
    run(
        state,
        project,
        Some(policy.id),
        &policy.name,
        &policy.targets,
        event_type,
    )
    .await
}

async fn unsaved(
    state: &AppState,
    project: ProjectRef<'_>,
    body: &[u8],
) -> Result<Json<TestResponse>, ApiError> {
    let mut request: UnsavedTestRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("invalid test body: {}", echo(&e.to_string())))
    })?;
    let event_type = event_type(request.event_type.as_deref())?;
    // Validated as a create would be (Harbor's messages); a name is not needed to test.
    if request.policy.name.trim().is_empty() {
        request.policy.name = "test".into();
    }
    if request.policy.event_types.is_empty() {
        request.policy.event_types = vec![event_type.as_str().to_owned()];
    }
    let spec = spec_from(request.policy, None, &creator(state))?;
    run(state, project, None, &spec.name, &spec.targets, event_type).await
}

async fn test_saved_project_policy(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<TestResponse>, ApiError> {
    let id = parse_id(&id)?;
    let project = resolve_project(&state, &headers, &project, false)
        .await?
        .ok_or_else(|| not_found(id))?;
    saved(&state, ProjectRef::Known(&project), id, &body).await
}

async fn test_unsaved_project_policy(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<TestResponse>, ApiError> {
    // An unknown project is fine: nothing is stored, the sample just names it.
    let known = resolve_project(&state, &headers, &project, false).await?;
    let reference = known
        .as_ref()
        .map_or(ProjectRef::Named(&project), ProjectRef::Known);
    unsaved(&state, reference, &body).await
}

async fn test_saved_system_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TestResponse>, ApiError> {
    let id = parse_id(&id)?;
    saved(&state, ProjectRef::SystemWide, id, &body).await
}

async fn test_unsaved_system_policy(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<TestResponse>, ApiError> {
    unsaved(&state, ProjectRef::SystemWide, &body).await
}
