//! Bearer-token authentication of the ingest endpoint.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::RejectReason;

/// Lets the request through only with `Authorization: Bearer <REGRELAY_INGEST_TOKEN>`.
pub async fn require_ingest_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let expected = state.ingest().token.expose_secret().as_bytes();
    let verdict = match presented {
        None => Err("missing bearer token: send Authorization: Bearer <ingest token>"),
        // Constant-time comparison, so response timing does not reveal how much of a guess was right.
        Some(token) if bool::from(token.as_bytes().ct_eq(expected)) => Ok(()),
        Some(_) => Err("invalid bearer token"),
    };
    match verdict {
        Ok(()) => Ok(next.run(request).await),
        Err(message) => {
            state.metrics().rejected(RejectReason::Unauthorized);
            Err(ApiError::Unauthorized(message.into()))
        }
    }
}
