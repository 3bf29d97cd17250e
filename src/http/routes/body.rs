//! Reading request bodies: the size limit, a read timeout, and the JSON content type.

use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, header};

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// How long a client may take to send the request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the whole body, up to `channels.http.max_body_bytes` and within the read timeout.
///
/// A `Content-Length` over the limit is rejected before any of the body is read.
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.http.max_body_bytes;
    if declared_length(headers).is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    tokio::time::timeout(BODY_READ_TIMEOUT, to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(BODY_READ_TIMEOUT))?
        .map_err(|err| body_error(err, limit))
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn body_error(err: axum::Error, limit: usize) -> ApiError {
    let source = err.into_inner();
    if source
        .downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::InvalidBody(format!("failed to read the request body: {source}"))
    }
}

/// Requires `Content-Type: application/json`, with or without parameters.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType(
            "no Content-Type header".to_owned(),
        ));
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!("`{value}`")))
    }
}
