//! The one error type of the HTTP API: each variant maps to a status and a JSON body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::turn_errors::{self, SHORT_RETRY_SECS, StoreUse};
use crate::agent::AgentError;
use crate::store::StoreError;

/// Cap on the `Retry-After` passed on from a provider, so one odd upstream value cannot tell
/// clients to stay away for days.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("{0}")]
    InvalidBody(String),
    #[error("Content-Type must be application/json, got {0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than {limit} bytes (channels.http.max_body_bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("too many requests to the diagnostics endpoints; retry in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    BodyTimeout(std::time::Duration),
    #[error("{0} is not supported on this route")]
    MethodNotAllowed(String),
    #[error(
        "the gateway is already running its maximum of {limit} turns \
         (app.max_concurrent_turns); nothing was stored, retry after the Retry-After delay"
    )]
    TooManyTurns { limit: u32 },
    /// A bug: the turn task panicked. The message goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The store failed outside a turn, while reading a session's history.
    #[error(transparent)]
    Store(StoreError),
    #[error("tool call failed: {0}")]
    Tool(crate::mcp::McpError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Status code and a stable machine-readable type.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidField { .. } | Self::InvalidBody(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::TooManyTurns { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Agent(err) => turn_errors::agent_status(err),
            Self::Store(err) => turn_errors::store_status(err),
            Self::Tool(crate::mcp::McpError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "tool_timeout")
            }
            Self::Tool(crate::mcp::McpError::Unavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "tool_unavailable")
            }
            Self::Tool(_) => (StatusCode::BAD_GATEWAY, "tool_error"),
        }
    }

    /// Returns whether the error is likely gone in a second: the gateway or the store was busy.
    fn is_short_lived(&self) -> bool {
        match self {
            Self::TooManyTurns { .. } => true,
            Self::Agent(AgentError::Store(err)) | Self::Store(err) => turn_errors::is_busy(err),
            _ => false,
        }
    }

    pub fn client_message(&self) -> String {
        match self {
            Self::Agent(err) => turn_errors::agent_message(err),
            Self::Store(err) => turn_errors::store_message(err, StoreUse::Read),
            Self::Internal(_) => "the turn stopped with an internal error before it returned a \
                                  reply. The gateway log has the cause; check the session's \
                                  history before you send the message again"
                .to_owned(),
            other => other.to_string(),
        }
    }
}

/// Whole seconds a client should wait, rounded up and at least 1, as `Retry-After` carries them.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), kind, error = %self, "Request failed");
        }
        let field = match &self {
            Self::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind,
                message: self.client_message(),
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.is_short_lived() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, SHORT_RETRY_SECS.into());
        }
        if let Self::RateLimited(wait) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(*wait).into());
        }
        if let Self::Agent(AgentError::Provider(err)) = &self
            && let Some(wait) = err.retry_after()
        {
            let seconds = wait.as_secs().clamp(1, MAX_RETRY_AFTER_SECS);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
