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
    let Some(ingest) = state.ingest() else {
        return Err(ApiError::NotFound(
            "ingest is not served by this process".into(),
        ));
    };
    let expected = ingest.token.expose_secret().as_bytes();
    let verdict = match presented {
        None => Err("missing bearer token: send Authorization: Bearer <ingest token>"),
        // Constant-time comparison, so response timing does not reveal how much of a guess was right.
        Some(token) if equal(token.as_bytes(), expected) => Ok(()),
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

/// Lets the request through with the administrator's HTTP Basic credentials (as Harbor's API clients
/// send them) or the API bearer token.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(admin) = state.admin() else {
        return Err(ApiError::NotFound(
            "the policy API is not served by this process".into(),
        ));
    };
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let allowed = match header.and_then(|value| value.split_once(' ')) {
        Some((scheme, credentials)) if scheme.eq_ignore_ascii_case("basic") => {
            decode_basic(credentials.trim()).is_some_and(|(user, password)| {
                // Evaluate both comparisons, so timing does not tell which one failed.
                let user_ok = equal(user.as_bytes(), admin.user.as_bytes());
                let password_ok = equal(
                    password.as_bytes(),
                    admin.password.expose_secret().as_bytes(),
                );
                user_ok & password_ok
            })
        }
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            admin.token.as_ref().is_some_and(|expected| {
                equal(token.trim().as_bytes(), expected.expose_secret().as_bytes())
            })
        }
        _ => false,
    };
    if allowed {
        Ok(next.run(request).await)
    } else {
        let message = if header.is_none() {
            "authentication required: send HTTP Basic credentials of the administrator"
        } else {
            "invalid credentials"
        };
        Err(ApiError::Unauthorized(message.into()))
    }
}

fn decode_basic(encoded: &str) -> Option<(String, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Constant-time equality, so response timing does not reveal how much of a guess was right.
fn equal(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}
