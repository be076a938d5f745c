//! Harbor's webhook history API: a policy's executions, an execution's tasks, a task's log, and the
//! last trigger per (policy, event type); the same under regrelay's system-wide policies.
//!
//! - `GET /api/v2.0/projects/{p}/webhook/policies/{id}/executions` (paged; `q` keys `status`,
//!   `event_type`, `trigger`; newest first)
//! - `GET .../executions/{execution_id}/tasks` (paged, newest first)
//! - `GET .../executions/{execution_id}/tasks/{task_id}/log` (`text/plain`, one line per attempt)
//! - `GET /api/v2.0/projects/{p}/webhook/lasttrigger`
//! - the same under `/api/v1/system/webhook/policies/{id}/...` and `/api/v1/system/webhook/lasttrigger`
//!
//! Design constraints:
//! - The path is a chain of ownership, checked link by link: the project names the policy (with the
//!   policies API's own helpers: name or numeric id, `X-Is-Resource-Name`, never creating a
//!   project), the policy owns the execution, the execution owns the task. Any broken link is Harbor's 404 body, so an id from
//!   another project or policy reveals nothing.
//! - Shapes are Harbor's: times in RFC 3339 (milliseconds, UTC), and an unfinished execution's or
//!   task's `end_time`, like a never-triggered `last_trigger_time`, is Go's zero time
//!   `0001-01-01T00:00:00Z`, as Harbor clients expect.
//! - Read-only: history is written by the consumer only.

use std::collections::HashMap;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use regrelay_history::executions::{
    Execution, ExecutionQuery, ExecutionTrigger, Task, TaskMetrics, TaskStatus,
};
use regrelay_history::policies::PolicyQuery;
use regrelay_history::policy::Policy;
use serde::Serialize;

use crate::error::{echo, ApiError};
use crate::paging::{paging_headers, ListParams};
use crate::policies::{self, harbor_time};
use crate::state::AppState;

/// Go's zero `time.Time`, which Harbor returns for "not yet".
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub fn router() -> Router<AppState> {
    const PROJECT_POLICY: &str = "/api/v2.0/projects/{project}/webhook/policies/{id}";
    const SYSTEM_POLICY: &str = "/api/v1/system/webhook/policies/{id}";
    Router::new()
        .route(
            &format!("{PROJECT_POLICY}/executions"),
            get(project_executions),
        )
        .route(
            &format!("{PROJECT_POLICY}/executions/{{execution_id}}/tasks"),
            get(project_tasks),
        )
        .route(
            &format!("{PROJECT_POLICY}/executions/{{execution_id}}/tasks/{{task_id}}/log"),
            get(project_task_log),
        )
        .route(
            "/api/v2.0/projects/{project}/webhook/lasttrigger",
            get(project_last_trigger),
        )
        .route(
            &format!("{SYSTEM_POLICY}/executions"),
            get(system_executions),
        )
        .route(
            &format!("{SYSTEM_POLICY}/executions/{{execution_id}}/tasks"),
            get(system_tasks),
        )
        .route(
            &format!("{SYSTEM_POLICY}/executions/{{execution_id}}/tasks/{{task_id}}/log"),
            get(system_task_log),
        )
        .route(
            "/api/v1/system/webhook/lasttrigger",
            get(system_last_trigger),
        )
}

/// An execution as Harbor returns it.
#[derive(Debug, Serialize)]
pub struct ExecutionOut {
    pub id: i64,
    pub vendor_type: &'static str,
    pub vendor_id: i64,
    pub status: &'static str,
    pub status_message: String,
    pub metrics: MetricsOut,
    pub trigger: &'static str,
    /// `{"event_type": ..., "payload": "<the exact body sent>"}`.
    pub extra_attrs: serde_json::Value,
    pub start_time: String,
    pub end_time: String,
}

/// An execution's tasks counted by status (Harbor's `Metrics`).
#[derive(Debug, Serialize)]
pub struct MetricsOut {
    pub task_count: i64,
    pub success_task_count: i64,
    pub error_task_count: i64,
    pub pending_task_count: i64,
    pub running_task_count: i64,
    pub scheduled_task_count: i64,
    pub stopped_task_count: i64,
}

/// A task as Harbor returns it.
#[derive(Debug, Serialize)]
pub struct TaskOut {
    pub id: i64,
    pub execution_id: i64,
    pub status: &'static str,
    pub status_message: String,
    pub run_count: i32,
    pub extra_attrs: serde_json::Value,
    pub creation_time: String,
    pub update_time: String,
    pub start_time: String,
    pub end_time: String,
}

/// One entry of `lasttrigger`: one per (policy, event type).
#[derive(Debug, Serialize)]
pub struct LastTriggerOut {
    pub policy_name: String,
    pub event_type: String,
    pub enabled: bool,
    pub creation_time: String,
    /// [`ZERO_TIME`] when the pair never triggered.
    pub last_trigger_time: String,
}

impl ExecutionOut {
    pub fn from_execution(execution: &Execution) -> Self {
        Self {
            id: execution.id,
            vendor_type: execution.vendor_type.as_str(),
            vendor_id: execution.vendor_id,
            status: execution.status.as_str(),
            status_message: execution.status_message.clone(),
            metrics: MetricsOut::from_metrics(&execution.metrics),
            trigger: execution.trigger.as_str(),
            extra_attrs: execution.extra_attrs.clone(),
            start_time: harbor_time(execution.start_time),
            end_time: execution
                .end_time
                .map_or_else(|| ZERO_TIME.to_owned(), harbor_time),
        }
    }
}

impl MetricsOut {
    fn from_metrics(metrics: &TaskMetrics) -> Self {
        Self {
            task_count: metrics.task_count,
            success_task_count: metrics.success_task_count,
            error_task_count: metrics.error_task_count,
            pending_task_count: metrics.pending_task_count,
            running_task_count: metrics.running_task_count,
            scheduled_task_count: metrics.scheduled_task_count,
            stopped_task_count: metrics.stopped_task_count,
        }
    }
}

impl TaskOut {
    pub fn from_task(task: &Task) -> Self {
        Self {
            id: task.id,
            execution_id: task.execution_id,
            status: task.status.as_str(),
            status_message: task.status_message.clone(),
            run_count: task.run_count,
            extra_attrs: task.extra_attrs.clone(),
            creation_time: harbor_time(task.creation_time),
            update_time: harbor_time(task.update_time),
            start_time: harbor_time(task.start_time),
            end_time: task
                .end_time
                .map_or_else(|| ZERO_TIME.to_owned(), harbor_time),
        }
    }
}

/// `q` (`status=Error,event_type=PUSH_ARTIFACT,trigger=EVENT`), `sort` and paging.
fn parse_query(params: &ListParams) -> Result<ExecutionQuery, ApiError> {
    let page = params.page()?;
    let mut query = ExecutionQuery {
        page: page.page,
        page_size: page.size,
        ..ExecutionQuery::default()
    };
    for term in params.query_terms()? {
        if term.fuzzy {
            return Err(ApiError::BadRequest(format!(
                "fuzzy match is not supported for {}: use {}=<value>",
                echo(&term.key),
                echo(&term.key)
            )));
        }
        match term.key.as_str() {
            "status" => {
                query.status = Some(
                    TaskStatus::ALL
                        .into_iter()
                        .find(|s| s.as_str().eq_ignore_ascii_case(&term.value))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "unsupported status {:?}: use Pending, Scheduled, Running, Stopped, Error or Success",
                                echo(&term.value)
                            ))
                        })?,
                )
            }
            "event_type" if !term.value.is_empty() => query.event_type = Some(term.value),
            "event_type" => {
                return Err(ApiError::BadRequest("event_type must not be empty".into()))
            }
            "trigger" => {
                query.trigger = Some(
                    term.value
                        .to_ascii_uppercase()
                        .parse::<ExecutionTrigger>()
                        .map_err(|_| {
                            ApiError::BadRequest(format!(
                                "unsupported trigger {:?}: use EVENT, MANUAL or RETRY",
                                echo(&term.value)
                            ))
                        })?,
                )
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported query key {}: use status, event_type or trigger",
                    echo(other)
                )))
            }
        }
    }
    // Newest first is the only order; Harbor clients ask for it by these names.
    match params.sort.as_deref().map(str::trim) {
        None | Some("") | Some("-id") | Some("-start_time") | Some("-creation_time") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported sort {}: executions are listed newest first (-id)",
                echo(other)
            )))
        }
    }
    Ok(query)
}

fn parse_id(what: &str, id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid {what} id {:?}", echo(id))))
}

/// The policy a project path names; 404 when the project or the policy is not there.
async fn project_policy(
    state: &AppState,
    headers: &HeaderMap,
    project: &str,
    id: &str,
) -> Result<Policy, ApiError> {
    let id = policies::parse_id(id)?;
    let project = policies::resolve_project(state, headers, project, false)
        .await?
        .ok_or_else(|| policies::not_found(id))?;
    state
        .db()
        .get_policy(Some(project.id), id)
        .await?
        .ok_or_else(|| policies::not_found(id))
}

/// The system-wide policy `id`; 404 when there is none.
async fn system_policy(state: &AppState, id: &str) -> Result<Policy, ApiError> {
    let id = policies::parse_id(id)?;
    state
        .db()
        .get_policy(None, id)
        .await?
        .ok_or_else(|| policies::not_found(id))
}

/// The execution `execution_id` if it is the policy's; 404 otherwise.
async fn policy_execution(
    state: &AppState,
    policy: &Policy,
    execution_id: &str,
) -> Result<Execution, ApiError> {
    let execution_id = parse_id("execution", execution_id)?;
    state
        .db()
        .get_execution(policy.id, execution_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "execution {execution_id} not found in webhook policy {}",
                policy.id
            ))
        })
}

/// A policy's executions, newest first, with Harbor's paging headers.
pub async fn list_executions_inner(
    state: &AppState,
    policy: &Policy,
    path: &str,
    params: &ListParams,
) -> Result<Response, ApiError> {
    let query = parse_query(params)?;
    let page = params.page()?;
    let (executions, total) = state.db().list_executions(policy.id, &query).await?;
    let body: Vec<ExecutionOut> = executions
        .iter()
        .map(ExecutionOut::from_execution)
        .collect();
    let headers = paging_headers(path, params, page, u64::try_from(total).unwrap_or(0));
    Ok((headers, Json(body)).into_response())
}

/// An execution's tasks, newest first, with Harbor's paging headers.
pub async fn list_tasks_inner(
    state: &AppState,
    policy: &Policy,
    execution_id: &str,
    path: &str,
    params: &ListParams,
) -> Result<Response, ApiError> {
    let page = params.page()?;
    if !params.query_terms()?.is_empty() {
        return Err(ApiError::BadRequest(
            "tasks cannot be filtered: leave q out".into(),
        ));
    }
    let execution = policy_execution(state, policy, execution_id).await?;
    let (tasks, total) = state
        .db()
        .list_tasks(execution.id, page.page, page.size)
        .await?;
    let body: Vec<TaskOut> = tasks.iter().map(TaskOut::from_task).collect();
    let headers = paging_headers(path, params, page, u64::try_from(total).unwrap_or(0));
    Ok((headers, Json(body)).into_response())
}

/// A task's log as `text/plain`, one line per attempt.
pub async fn task_log_inner(
    state: &AppState,
    policy: &Policy,
    execution_id: &str,
    task_id: &str,
) -> Result<Response, ApiError> {
    let task_id = parse_id("task", task_id)?;
    let execution = policy_execution(state, policy, execution_id).await?;
    let task = state
        .db()
        .get_task(execution.id, task_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "task {task_id} not found in execution {}",
                execution.id
            ))
        })?;
    let log = state.db().task_log(task.id).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        log,
    )
        .into_response())
}

/// One entry per (policy, event type) of the scope's policies, in the policies' list order.
pub async fn last_trigger_inner(
    state: &AppState,
    project_id: Option<i64>,
) -> Result<Response, ApiError> {
    let every = PolicyQuery {
        page_size: 0,
        ..PolicyQuery::default()
    };
    let (policies, _) = state.db().list_policies(project_id, &every).await?;
    let ids: Vec<i64> = policies.iter().map(|p| p.id).collect();
    let last: HashMap<(i64, String), DateTime<Utc>> = state
        .db()
        .last_triggers(&ids)
        .await?
        .into_iter()
        .map(|t| ((t.policy_id, t.event_type), t.time))
        .collect();
    let mut body = Vec::new();
    for policy in &policies {
        for event_type in &policy.event_types {
            let event_type = event_type.as_str().to_owned();
            let time = last.get(&(policy.id, event_type.clone()));
            body.push(LastTriggerOut {
                policy_name: policy.name.clone(),
                enabled: policy.enabled,
                creation_time: harbor_time(policy.creation_time),
                last_trigger_time: time.map_or_else(|| ZERO_TIME.to_owned(), |t| harbor_time(*t)),
                event_type,
            });
        }
    }
    Ok(Json(body).into_response())
}

async fn project_executions(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let policy = project_policy(&state, &headers, &project, &id).await?;
    list_executions_inner(&state, &policy, uri.path(), &params).await
}

async fn project_tasks(
    State(state): State<AppState>,
    Path((project, id, execution_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let policy = project_policy(&state, &headers, &project, &id).await?;
    list_tasks_inner(&state, &policy, &execution_id, uri.path(), &params).await
}

async fn project_task_log(
    State(state): State<AppState>,
    Path((project, id, execution_id, task_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let policy = project_policy(&state, &headers, &project, &id).await?;
    task_log_inner(&state, &policy, &execution_id, &task_id).await
}

async fn project_last_trigger(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match policies::resolve_project(&state, &headers, &project, false).await? {
        Some(project) => last_trigger_inner(&state, Some(project.id)).await,
        // A project nothing has named yet has no policies, so nothing triggered.
        None => Ok(Json(Vec::<LastTriggerOut>::new()).into_response()),
    }
}

async fn system_executions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let policy = system_policy(&state, &id).await?;
    list_executions_inner(&state, &policy, uri.path(), &params).await
}

async fn system_tasks(
    State(state): State<AppState>,
    Path((id, execution_id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let policy = system_policy(&state, &id).await?;
    list_tasks_inner(&state, &policy, &execution_id, uri.path(), &params).await
}

async fn system_task_log(
    State(state): State<AppState>,
    Path((id, execution_id, task_id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let policy = system_policy(&state, &id).await?;
    task_log_inner(&state, &policy, &execution_id, &task_id).await
}

async fn system_last_trigger(State(state): State<AppState>) -> Result<Response, ApiError> {
    last_trigger_inner(&state, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: Option<&str>, sort: Option<&str>) -> ListParams {
        ListParams {
            q: q.map(str::to_owned),
            sort: sort.map(str::to_owned),
            ..ListParams::default()
        }
    }

    #[test]
    fn q_takes_harbors_keys() {
        let query = parse_query(&params(
            Some("status=Error,event_type=PUSH_ARTIFACT,trigger=manual"),
            Some("-id"),
        ))
        .unwrap();
        assert_eq!(query.status, Some(TaskStatus::Error));
        assert_eq!(query.event_type.as_deref(), Some("PUSH_ARTIFACT"));
        assert_eq!(query.trigger, Some(ExecutionTrigger::Manual));
        assert_eq!((query.page, query.page_size), (1, 10));
        assert_eq!(
            parse_query(&params(Some("status=success"), None))
                .unwrap()
                .status,
            Some(TaskStatus::Success)
        );
        for bad in [
            "status=Done",
            "trigger=CRON",
            "vendor_id=3",
            "status=~Err",
            "event_type=",
        ] {
            assert!(parse_query(&params(Some(bad), None)).is_err(), "{bad}");
        }
        assert!(parse_query(&params(None, Some("name"))).is_err());
    }

    #[test]
    fn unfinished_times_are_gos_zero_time() {
        let start: DateTime<Utc> = "2026-11-24T20:00:00Z".parse().unwrap();
        let execution = Execution {
            id: 1,
            vendor_type: regrelay_history::executions::VendorType::Slack,
            vendor_id: 2,
            status: TaskStatus::Running,
            status_message: String::new(),
            metrics: TaskMetrics::default(),
            trigger: ExecutionTrigger::Event,
            event_type: "PUSH_ARTIFACT".into(),
            extra_attrs: serde_json::json!({"event_type": "PUSH_ARTIFACT"}),
            start_time: start,
            end_time: None,
        };
        let out = serde_json::to_value(ExecutionOut::from_execution(&execution)).unwrap();
        assert_eq!(out["end_time"], ZERO_TIME);
        assert_eq!(out["start_time"], "2026-11-24T20:00:00.000Z");
        assert_eq!(out["vendor_type"], "SLACK");
        assert_eq!(out["metrics"]["stopped_task_count"], 0);
    }
}
