//! Bearer-token checks with a constant-time comparison.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;
use crate::config::Secret;

/// Extracts the token of an `Authorization: Bearer TOKEN` header.
///
/// The scheme is case-insensitive and surrounding or repeated spaces are tolerated. A request with
/// more than one `Authorization` header has no token, because proxies and servers disagree about
/// which of them counts.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the request carries exactly `expected`, compared in constant time.
pub fn has_token(headers: &HeaderMap, expected: &Secret) -> bool {
    bearer_token(headers)
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())))
}

/// Middleware of the API routes: requires `channels.http.api_bearer_token` when one is set.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.http.api_bearer_token
        && !has_token(request.headers(), expected)
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}
