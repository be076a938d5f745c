//! Harbor's webhook policy API, and regrelay's system-wide policies.
//!
//! Harbor's paths (`/api/v2.0/projects/{project_name_or_id}/webhook/...`) take the project by name
//! or numeric id (`X-Is-Resource-Name: true` forces the name reading). regrelay's system-wide policies
//! live under `/api/v1/system/webhook/policies` with the same shapes.
//!
//! Design constraints:
//! - Shapes, status codes and validation messages are Harbor's, so Harbor's API clients work unchanged.
//! - regrelay's additions are optional fields Harbor clients ignore: a write-only target `secret`,
//!   target `headers`, and `filters` (repository and tag globs).
//! - Credentials are never returned: `auth_header`, header values and the secret come back as
//!   [`REDACTED`], and addresses with their user info, query values and (Slack) path redacted
//!   ([`Target::redacted_address`]). Sending those back on `PUT` keeps the stored values, so a
//!   client that GETs, edits and PUTs a policy does not wipe its credentials.

use std::collections::BTreeMap;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use regrelay_events::EventType;
use regrelay_history::policies::{NameMatch, PolicyQuery, PolicySort};
use regrelay_history::policy::{
    parse_event_types, Filters, PayloadFormat, Policy, PolicySpec, Target, TargetKind,
    TargetOptions, REDACTED,
};
use regrelay_history::Project;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{echo, ApiError};
use crate::paging::{paging_headers, ListParams};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v2.0/projects/{project}/webhook/policies",
            get(list_project_policies).post(create_project_policy),
        )
        .route(
            "/api/v2.0/projects/{project}/webhook/policies/{id}",
            get(get_project_policy)
                .put(update_project_policy)
                .delete(delete_project_policy),
        )
        .route(
            "/api/v2.0/projects/{project}/webhook/events",
            get(supported_events),
        )
        .route(
            "/api/v1/system/webhook/policies",
            get(list_system_policies).post(create_system_policy),
        )
        .route(
            "/api/v1/system/webhook/policies/{id}",
            get(get_system_policy)
                .put(update_system_policy)
                .delete(delete_system_policy),
        )
}

/// A policy as clients send it (`POST`, `PUT`). Unknown fields (`id`, `project_id`, times, ...) that
/// Harbor clients echo back are ignored.
#[derive(Debug, Deserialize)]
pub struct PolicyIn {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub targets: Vec<TargetIn>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub filters: Option<FiltersDto>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub struct TargetIn {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub auth_header: Option<String>,
    #[serde(default)]
    pub skip_cert_verify: bool,
    #[serde(default)]
    pub payload_format: Option<String>,
    /// Write-only signing secret (`whsec_<base64>` or any string).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// regrelay's chat and template types (docs/targets.md); `bot_token` is write-only.
    #[serde(default)]
    pub bot_token: Option<String>,
    /// A number (`-1001234567890`) or `@channelname`; a JSON number is taken too.
    #[serde(default, deserialize_with = "text_or_number")]
    pub chat_id: Option<String>,
    #[serde(default)]
    pub message_thread_id: Option<i64>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Any type: `"20/min"`, `"5/s"`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Any type: no deliveries to this target (`auto_disable_after` sets it; absent enables).
    #[serde(default)]
    pub disabled: bool,
}

/// Telegram's chat ids are numbers; clients send them as JSON numbers or strings.
fn text_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(i64),
    }
    Ok(
        Option::<TextOrNumber>::deserialize(deserializer)?.map(|v| match v {
            TextOrNumber::Text(text) => text,
            TextOrNumber::Number(number) => number.to_string(),
        }),
    )
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FiltersDto {
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A policy as regrelay returns it: Harbor's fields, then regrelay's additions.
#[derive(Debug, Serialize)]
pub struct PolicyOut {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// 0 for a system-wide policy.
    pub project_id: i64,
    pub targets: Vec<TargetOut>,
    pub event_types: Vec<EventType>,
    pub creator: String,
    pub creation_time: String,
    pub update_time: String,
    pub enabled: bool,
    pub filters: FiltersDto,
    /// regrelay: `true` for a policy that matches every project.
    pub system_wide: bool,
}

#[derive(Debug, Serialize)]
pub struct TargetOut {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub address: String,
    pub auth_header: String,
    pub skip_cert_verify: bool,
    pub payload_format: String,
    /// regrelay: [`REDACTED`] when a signing secret is set, absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<&'static str>,
    /// regrelay: custom header names, values redacted.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, &'static str>,
    /// regrelay: [`REDACTED`] when a bot token is set (Telegram), absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<&'static str>,
    /// regrelay: the chat and template types' settings, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// regrelay: `true` when the target gets no deliveries (absent otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl PolicyOut {
    pub fn from_policy(policy: &Policy) -> Self {
        Self {
            id: policy.id,
            name: policy.name.clone(),
            description: policy.description.clone(),
            project_id: policy.project.as_ref().map_or(0, |p| p.id),
            targets: policy.targets.iter().map(TargetOut::from_target).collect(),
            event_types: policy.event_types.clone(),
            creator: policy.creator.clone(),
            creation_time: harbor_time(policy.creation_time),
            update_time: harbor_time(policy.update_time),
            enabled: policy.enabled,
            filters: FiltersDto {
                repositories: policy.filters.repositories.clone(),
                tags: policy.filters.tags.clone(),
            },
            system_wide: policy.project.is_none(),
        }
    }
}

impl TargetOut {
    fn from_target(target: &Target) -> Self {
        let secret_set = target.secret.as_deref().is_some_and(|s| !s.is_empty());
        let options = &target.options;
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Self {
            kind: target.kind.as_str(),
            address: target.redacted_address(),
            auth_header: match target.auth_header.as_deref() {
                Some(h) if !h.is_empty() => REDACTED.to_owned(),
                _ => String::new(),
            },
            skip_cert_verify: target.skip_cert_verify,
            payload_format: match target.kind {
                TargetKind::Http => target.payload_format.as_str().to_owned(),
                TargetKind::Slack | TargetKind::Vendor(_) => String::new(),
            },
            secret: secret_set.then_some(REDACTED),
            headers: target
                .headers
                .keys()
                .map(|name| (name.clone(), REDACTED))
                .collect(),
            bot_token: text(&options.bot_token).map(|_| REDACTED),
            chat_id: text(&options.chat_id),
            message_thread_id: options.message_thread_id,
            template: text(&options.template),
            content_type: text(&options.content_type),
            method: text(&options.method),
            rate_limit: text(&options.rate_limit),
            disabled: options.disabled,
        }
    }
}

pub(crate) fn harbor_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Turns the request body into a spec, with Harbor's validation messages. `existing` is the stored
/// policy on `PUT`: redacted placeholders sent back keep its credentials.
pub(crate) fn spec_from(
    body: PolicyIn,
    existing: Option<&Policy>,
    creator: &str,
) -> Result<PolicySpec, ApiError> {
    let event_types = parse_event_types(&body.event_types)
        .map_err(|e| ApiError::BadRequest(echo(&e.to_string()).into_owned()))?;
    let mut targets = Vec::with_capacity(body.targets.len());
    for (index, target) in body.targets.into_iter().enumerate() {
        let kind =
            TargetKind::parse(&target.kind).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let format_text = target.payload_format.clone().unwrap_or_default();
        if kind == TargetKind::Slack && !format_text.is_empty() {
            return Err(ApiError::BadRequest(
                "set payload format is not allowed for slack".into(),
            ));
        }
        let payload_format =
            PayloadFormat::parse(&format_text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        // A type with a default address (Telegram's Bot API) stores it when none is given, so
        // every stored target has the address it is called at (and the SSRF guard checks it).
        let given_address = match kind.vendor().and_then(|v| v.vendor().default_address()) {
            Some(default) if target.address.trim().is_empty() => default.to_owned(),
            _ => target.address,
        };
        let target = TargetIn {
            address: given_address,
            ..target
        };
        let previous = existing.and_then(|p| previous_target(&p.targets, index, &target.address));
        // The address as GET showed it (credentials redacted) means "keep the stored address".
        let address = match previous {
            Some(p) if p.is_redacted_address_of(&target.address) => p.address.clone(),
            _ if target.address.contains(REDACTED) => {
                return Err(ApiError::BadRequest(
                    "a target address has the redacted placeholder in it but is no stored target's redacted address".into(),
                ))
            }
            _ => target.address,
        };
        // A redacted placeholder sent back means "keep what is stored".
        let secret = match target.secret {
            Some(s) if s == REDACTED => previous.and_then(|p| p.secret.clone()),
            other => other,
        };
        let auth_header = match target.auth_header {
            Some(h) if h == REDACTED => previous.and_then(|p| p.auth_header.clone()),
            other => other,
        };
        let bot_token = match target.bot_token {
            Some(t) if t == REDACTED => previous.and_then(|p| p.options.bot_token.clone()),
            other => other,
        };
        let mut headers = target.headers.unwrap_or_default();
        for (name, value) in headers.iter_mut() {
            if value == REDACTED {
                match previous.and_then(|p| p.headers.get(name)) {
                    Some(stored) => value.clone_from(stored),
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "header {} has the redacted placeholder as its value but no stored value to keep",
                            echo(name)
                        )))
                    }
                }
            }
        }
        targets.push(Target {
            kind,
            address,
            auth_header,
            skip_cert_verify: target.skip_cert_verify,
            payload_format,
            secret,
            headers,
            options: TargetOptions {
                bot_token,
                chat_id: target.chat_id,
                message_thread_id: target.message_thread_id,
                template: target.template,
                content_type: target.content_type,
                method: target.method,
                rate_limit: target.rate_limit,
                disabled: target.disabled,
            },
        });
    }
    let filters = body.filters.unwrap_or_default();
    let spec = PolicySpec {
        name: body.name.trim().to_owned(),
        description: body.description,
        targets,
        event_types,
        filters: Filters {
            repositories: filters.repositories,
            tags: filters.tags,
        },
        creator: existing.map_or_else(|| creator.to_owned(), |p| p.creator.clone()),
        enabled: body.enabled,
    };
    spec.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(spec)
}

/// The stored target a target of a `PUT` stands for: one whose address it repeats, as stored or as
/// redacted; the one at the same position first, since two addresses may redact alike.
fn previous_target<'a>(stored: &'a [Target], index: usize, address: &str) -> Option<&'a Target> {
    let same = |t: &&Target| t.address == address || t.is_redacted_address_of(address);
    stored
        .get(index)
        .filter(same)
        .or_else(|| stored.iter().find(|t| t.address == address))
        .or_else(|| stored.iter().find(same))
}

fn parse_body(
    body: Result<Json<PolicyIn>, axum::extract::rejection::JsonRejection>,
) -> Result<PolicyIn, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::BadRequest(format!("invalid policy body: {}", echo(&e.body_text()))))
}

/// Which project a Harbor path names. A name with a control character is refused (`400`) before
/// it reaches PostgreSQL (which refuses NUL).
pub(crate) async fn resolve_project(
    state: &AppState,
    headers: &HeaderMap,
    project: &str,
    create: bool,
) -> Result<Option<Project>, ApiError> {
    if project.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "invalid project name: it contains a control character".into(),
        ));
    }
    let by_name = headers
        .get("x-is-resource-name")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !by_name && !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit()) {
        let id: i64 = project
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid project id {}", echo(project))))?;
        return match state.db().find_project_by_id(id).await? {
            Some(p) => Ok(Some(p)),
            None => Err(ApiError::NotFound(format!("project {id} not found"))),
        };
    }
    if project.is_empty() {
        return Err(ApiError::BadRequest("project name is empty".into()));
    }
    if create {
        // A project is known once a policy or an event names it.
        return Ok(Some(state.db().ensure_project(project).await?));
    }
    Ok(state.db().find_project_by_name(project).await?)
}

pub(crate) fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("webhook policy {id} not found"))
}

fn parse_query(params: &ListParams) -> Result<PolicyQuery, ApiError> {
    let page = params.page()?;
    let mut query = PolicyQuery {
        page: page.page,
        page_size: page.size,
        ..PolicyQuery::default()
    };
    for term in params.query_terms()? {
        match term.key.as_str() {
            "name" if term.fuzzy => query.name = Some(NameMatch::Fuzzy(term.value)),
            "name" => query.name = Some(NameMatch::Exact(term.value)),
            "enabled" => {
                query.enabled = Some(term.value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "enabled must be true or false, got {:?}",
                        echo(&term.value)
                    ))
                })?)
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported query key {}: use name or enabled",
                    echo(other)
                )))
            }
        }
    }
    query.sort = match params.sort.as_deref().map(str::trim) {
        None | Some("") | Some("-creation_time") => PolicySort::NewestFirst,
        Some("creation_time") => PolicySort::CreationTimeAsc,
        Some("name") => PolicySort::NameAsc,
        Some("-name") => PolicySort::NameDesc,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported sort {}: use name, -name, creation_time or -creation_time",
                echo(other)
            )))
        }
    };
    Ok(query)
}

async fn list(
    state: &AppState,
    project: Option<&Project>,
    path: &str,
    params: &ListParams,
) -> Result<Response, ApiError> {
    let query = parse_query(params)?;
    let page = params.page()?;
    let (policies, total) = state
        .db()
        .list_policies(project.map(|p| p.id), &query)
        .await?;
    let body: Vec<PolicyOut> = policies.iter().map(PolicyOut::from_policy).collect();
    let headers = paging_headers(path, params, page, u64::try_from(total).unwrap_or(0));
    Ok((headers, Json(body)).into_response())
}

async fn create(
    state: &AppState,
    project: Option<&Project>,
    path: &str,
    body: PolicyIn,
    creator: &str,
) -> Result<Response, ApiError> {
    let spec = spec_from(body, None, creator)?;
    let policy = state
        .db()
        .create_policy(project.map(|p| p.id), &spec)
        .await?;
    tracing::info!(message = "Webhook policy created.", policy_id = policy.id, project = project.map(|p| echo(&p.name).into_owned()), name = %echo(&policy.name));
    let location = format!("{}/{}", path.trim_end_matches('/'), policy.id);
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn update(
    state: &AppState,
    project: Option<&Project>,
    id: i64,
    body: PolicyIn,
) -> Result<Response, ApiError> {
    let project_id = project.map(|p| p.id);
    let existing = state
        .db()
        .get_policy(project_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let spec = spec_from(body, Some(&existing), &existing.creator)?;
    state
        .db()
        .update_policy(project_id, id, &spec)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(message = "Webhook policy updated.", policy_id = id);
    Ok(StatusCode::OK.into_response())
}

async fn delete(
    state: &AppState,
    project: Option<&Project>,
    id: i64,
) -> Result<Response, ApiError> {
    if state.db().delete_policy(project.map(|p| p.id), id).await? {
        tracing::info!(message = "Webhook policy deleted.", policy_id = id);
        Ok(StatusCode::OK.into_response())
    } else {
        Err(not_found(id))
    }
}

async fn get_one(
    state: &AppState,
    project: Option<&Project>,
    id: i64,
) -> Result<Response, ApiError> {
    let policy = state
        .db()
        .get_policy(project.map(|p| p.id), id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(PolicyOut::from_policy(&policy)).into_response())
}

pub(crate) fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid policy id {:?}", echo(id))))
}

/// The user name the request authenticated as, for `creator`.
pub(crate) fn creator(state: &AppState) -> String {
    state
        .admin()
        .map_or_else(|| "admin".to_owned(), |a| a.user.clone())
}

type JsonBody = Result<Json<PolicyIn>, axum::extract::rejection::JsonRejection>;

async fn list_project_policies(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let project = resolve_project(&state, &headers, &project, false).await?;
    match project {
        Some(project) => list(&state, Some(&project), uri.path(), &params).await,
        // A project no policy or event has named yet has no policies.
        None => {
            params.page()?;
            let mut headers = HeaderMap::new();
            headers.insert("x-total-count", HeaderValue::from(0));
            Ok((headers, Json(Vec::<PolicyOut>::new())).into_response())
        }
    }
}

async fn create_project_policy(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let body = parse_body(body)?;
    let project = resolve_project(&state, &headers, &project, true).await?;
    create(&state, project.as_ref(), uri.path(), body, &creator(&state)).await
}

async fn get_project_policy(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let project = resolve_project(&state, &headers, &project, false)
        .await?
        .ok_or_else(|| not_found(id))?;
    get_one(&state, Some(&project), id).await
}

async fn update_project_policy(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let body = parse_body(body)?;
    let project = resolve_project(&state, &headers, &project, false)
        .await?
        .ok_or_else(|| not_found(id))?;
    update(&state, Some(&project), id, body).await
}

async fn delete_project_policy(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let project = resolve_project(&state, &headers, &project, false)
        .await?
        .ok_or_else(|| not_found(id))?;
    delete(&state, Some(&project), id).await
}

/// `GET .../webhook/events`: what a policy may subscribe to, in Harbor's order.
async fn supported_events() -> Json<serde_json::Value> {
    let event_types: Vec<&str> = EventType::CURRENT.iter().map(|t| t.as_str()).collect();
    Json(json!({
        "event_type": event_types,
        "notify_type": ["http", "slack"],
        "payload_formats": [{"notify_type": "http", "formats": ["Default", "CloudEvents"]}],
    }))
}

async fn list_system_policies(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    list(&state, None, uri.path(), &params).await
}

async fn create_system_policy(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let body = parse_body(body)?;
    create(&state, None, uri.path(), body, &creator(&state)).await
}

async fn get_system_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_one(&state, None, parse_id(&id)?).await
}

async fn update_system_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    update(&state, None, id, parse_body(body)?).await
}

async fn delete_system_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete(&state, None, parse_id(&id)?).await
}
