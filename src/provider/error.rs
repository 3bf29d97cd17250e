//! Provider failures, classified by whether a retry may help and how the client should see them.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider request timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the turn's deadline (agent.turn_timeout_ms) was reached before the provider answered")]
    DeadlineExceeded,
    #[error("cannot connect to provider: {0}")]
    Connect(String),
    #[error("provider connection failed: {0}")]
    Transport(String),
    #[error("provider returned HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("provider sent an invalid response: {0}")]
    InvalidResponse(String),
    /// The event stream closed cleanly without `[DONE]` and without any `finish_reason`, which
    /// looks the same as a reply cut off by a proxy or a crashed server.
    #[error(
        "the provider's event stream ended before the reply was complete: neither a \
         finish_reason nor [DONE] arrived"
    )]
    IncompleteStream,
    #[error("cannot build provider client: {0}")]
    Setup(String),
}

impl ProviderError {
    /// Whether another attempt may succeed: 408, 429, 5xx, timeouts and transport errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) | Self::Transport(_) => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            // A stream is never retried once read, so an incomplete one is not either.
            Self::DeadlineExceeded
            | Self::InvalidResponse(_)
            | Self::IncompleteStream
            | Self::Setup(_) => false,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, fixed label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) | Self::DeadlineExceeded => "timeout",
            Self::Connect(_) => "connect",
            Self::Transport(_) | Self::IncompleteStream => "transport",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status {
                status: 500..=599, ..
            } => "server_error",
            Self::Status { .. } => "rejected",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Setup(_) => "setup",
        }
    }

    pub(crate) fn from_reqwest(err: reqwest::Error, timeout: Duration) -> Self {
        let err = err.without_url();
        if err.is_timeout() {
            Self::Timeout(timeout)
        } else if err.is_connect() {
            Self::Connect(error_chain(&err))
        } else if err.is_body() || err.is_decode() {
            // reqwest reports a body that broke off mid-read (reset, early close) as a decode
            // error. No decoding feature is enabled, so these are transport failures.
            Self::Transport(format!(
                "the connection broke while reading the response body: {}",
                error_chain(&err)
            ))
        } else {
            Self::Transport(error_chain(&err))
        }
    }
}

/// The error and its sources on one line, since reqwest's top-level message alone is vague.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
