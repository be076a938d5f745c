//! [`ApiError`]: every handler's error, rendered as Harbor's error body
//! `{"errors":[{"code":"...","message":"..."}]}` with the matching status, and
//! [`harbor_error_body`], the layer that gives every other error answer (axum's rejections, `405`,
//! the timeout layer's `408`) the same body.
//!
//! A message is at most [`MAX_MESSAGE_CHARS`] characters; the caller's text inside it is quoted
//! through [`echo`] (at most 128 characters, control characters replaced).

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use regrelay_history::policy::clip;
pub use regrelay_history::policy::echo;
use serde::Serialize;

/// Longest error message returned (a last bound: the caller's text in it is already cut).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// How much of a non-Harbor error body [`harbor_error_body`] reads to quote it.
const FOREIGN_BODY_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("internal error")]
    Internal(String),
    /// Any other error status (`403`, `414`, `431`, ...), for answers not made by a handler.
    #[error("{1}")]
    Status(StatusCode, String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorItem<'a>; 1],
}

#[derive(Serialize)]
struct ErrorItem<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Status(status, _) => *status,
        }
    }

    /// Harbor's error code string for the status.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BAD_REQUEST",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::Unprocessable(_) => "UNPROCESSABLE_ENTITY",
            ApiError::ServiceUnavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
            ApiError::Status(status, _) => status_code_name(*status),
        }
    }

    /// The error for an answer of `status` made outside a handler, with `message`.
    pub fn from_status(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(message),
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(message),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::ServiceUnavailable(message),
            other => ApiError::Status(other, message),
        }
    }
}

/// Harbor's code names (`lib/errors`) where Harbor has one, the status's name otherwise.
fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        409 => "CONFLICT",
        412 => "PRECONDITION",
        413 => "PAYLOAD_TOO_LARGE",
        414 => "URI_TOO_LONG",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        422 => "UNPROCESSABLE_ENTITY",
        429 => "TOO_MANY_REQUEST",
        431 => "REQUEST_HEADER_FIELDS_TOO_LARGE",
        500 => "INTERNAL_SERVER_ERROR",
        503 => "SERVICE_UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            // The detail stays in the log; the client gets a generic message.
            // Cut and control characters replaced: the detail may quote a caller's text.
            tracing::error!(message = "Internal error.", error = %clip(detail, MAX_MESSAGE_CHARS));
        }
        let message = self.to_string();
        let body = ErrorBody {
            errors: [ErrorItem {
                code: self.code(),
                message: clip(&message, MAX_MESSAGE_CHARS).into_owned(),
            }],
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"regrelay\", Bearer realm=\"regrelay\""),
            );
        }
        response
    }
}

/// The fallback for unknown paths, so they get Harbor's error body too.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", echo(uri.path())))
}

/// The fallback for a known path asked with a method it does not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "method {} is not allowed on {}",
        echo(method.as_str()),
        echo(uri.path())
    ))
}

/// Gives every error answer that is not Harbor's JSON already (axum's plain-text rejections of a
/// path, query or body, the timeout layer's empty `408`) Harbor's error body, quoting the original
/// text as the message. Headers such as `Allow` or `Retry-After` are kept.
pub async fn harbor_error_body(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, FOREIGN_BODY_LIMIT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut harbor = ApiError::from_status(status, clip(&message, MAX_MESSAGE_CHARS).into_owned())
        .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            harbor
                .headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    harbor
}

impl From<regrelay_history::StoreError> for ApiError {
    fn from(error: regrelay_history::StoreError) -> Self {
        use regrelay_history::StoreError;
        match error {
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Invalid(error) => ApiError::BadRequest(error.to_string()),
            StoreError::UnknownProject(id) => ApiError::NotFound(format!("project {id} not found")),
            error @ StoreError::InvalidProjectName { .. } => {
                ApiError::BadRequest(error.to_string())
            }
            // The database is down or refusing: the client may retry.
            error if error.is_unavailable() => {
                ApiError::ServiceUnavailable("the database is unavailable; try again".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
