//! Status, type and client message of the errors that a turn, its model provider or the history
//! store raise.
//!
//! Every message states what failed and what the client or the operator can do next. The details
//! that only an operator needs (a SQLite error, a panic message) stay in the gateway log, which
//! [`super::ApiError`] writes for every 5xx. Upstream error text is passed on only after the
//! provider client has masked the API key in it.

use axum::http::StatusCode;

use crate::agent::AgentError;
use crate::provider::ProviderError;
use crate::store::StoreError;

/// `Retry-After`, in seconds, for errors that are likely gone once a running turn ends or a lock
/// is released: the store was busy, or the gateway was at `app.max_concurrent_turns`.
pub const SHORT_RETRY_SECS: u64 = 1;

/// What the failed request was doing when the store failed, which decides what was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUse {
    /// Running a turn: the turn was not saved.
    Turn,
    /// Reading a session's history: nothing was changed.
    Read,
}

pub fn agent_status(err: &AgentError) -> (StatusCode, &'static str) {
    match err {
        AgentError::Provider(err) => provider_status(err),
        AgentError::Store(err) => store_status(err),
        AgentError::SessionBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "session_busy"),
        AgentError::DeadlineAfterLockWait(_) => (StatusCode::GATEWAY_TIMEOUT, "provider_timeout"),
        AgentError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
    }
}

pub fn agent_message(err: &AgentError) -> String {
    match err {
        AgentError::Provider(err) => provider_message(err),
        AgentError::Store(err) => store_message(err, StoreUse::Turn),
        AgentError::SessionBusy(_) => format!(
            "{err}; nothing was stored, send the message again once the earlier turn has \
             finished, or raise agent.turn_timeout_ms"
        ),
        AgentError::DeadlineAfterLockWait(_) => format!(
            "model provider error: {err}. Nothing was stored; send the message again once the \
             earlier turns have finished, or raise agent.turn_timeout_ms if turns need this long"
        ),
        AgentError::ShuttingDown => {
            format!("{err}; nothing was stored, send the message again once the gateway is back")
        }
    }
}

pub fn provider_status(err: &ProviderError) -> (StatusCode, &'static str) {
    match err {
        ProviderError::Timeout(_) | ProviderError::DeadlineExceeded => {
            (StatusCode::GATEWAY_TIMEOUT, "provider_timeout")
        }
        ProviderError::Status { status: 429, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "provider_rate_limited")
        }
        ProviderError::Connect(_) => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable"),
        ProviderError::Transport(_)
        | ProviderError::Status { .. }
        | ProviderError::InvalidResponse(_)
        | ProviderError::IncompleteStream
        | ProviderError::Setup(_) => (StatusCode::BAD_GATEWAY, "provider_error"),
    }
}

/// Adds a hint on what to do to the provider error. Nothing of the turn was stored in any case.
fn provider_message(err: &ProviderError) -> String {
    let hint = match err {
        ProviderError::Timeout(_) => {
            "try again, or raise the provider's request_timeout_ms if the model is this slow"
        }
        ProviderError::DeadlineExceeded => {
            "try again, or raise agent.turn_timeout_ms if turns need this long"
        }
        ProviderError::Connect(_) => {
            "check that the model server is running and that the provider's base_url points at it"
        }
        ProviderError::Transport(_) => {
            "the connection broke after every retry; try again, and check the model server if it \
             keeps failing"
        }
        ProviderError::Status { status: 429, .. } => {
            "the model server is rate limiting; retry after the Retry-After delay when one is given"
        }
        ProviderError::Status {
            status: 401 | 403, ..
        } => "check the provider's api_key",
        ProviderError::Status { status: 404, .. } => "check the provider's base_url and model",
        ProviderError::Status {
            status: 500..=599, ..
        } => "the model server failed after every retry; try again later",
        ProviderError::Status { .. } => {
            "the model server rejected the request; its message above says why"
        }
        ProviderError::InvalidResponse(_) => {
            "check that the provider's base_url points at an OpenAI-compatible chat-completions \
             server"
        }
        ProviderError::IncompleteStream => {
            "the model server, or a proxy in front of it, closed the stream before the reply was \
             complete; try again, and check the model server's log if it keeps happening"
        }
        ProviderError::Setup(_) => "check the provider's settings in the configuration",
    };
    format!("model provider error: {err}. Nothing was stored; {hint}")
}

pub fn store_status(err: &StoreError) -> (StatusCode, &'static str) {
    if is_busy(err) {
        return (StatusCode::SERVICE_UNAVAILABLE, "store_busy");
    }
    match err {
        StoreError::Stopped
        | StoreError::Open { .. }
        | StoreError::Connect { .. }
        | StoreError::Spawn(_)
        | StoreError::Migrate(_)
        | StoreError::MigrateFile { .. }
        | StoreError::MigratePostgres { .. }
        | StoreError::Unreachable { .. }
        | StoreError::ConnectTimedOut { .. }
        | StoreError::TlsFailed { .. }
        | StoreError::FileMoved { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        StoreError::Postgres(err) if is_connection_lost(err) => {
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
    }
}

/// Returns whether a PostgreSQL error means the server or the connection went away, rather than
/// a failed statement. These are a transport error, a closed pool, an SQLSTATE of class 08
/// (connection exception) or 57 (operator intervention, such as a terminated session), and 55000,
/// which a database that no longer allows connections reports.
fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(err) => err.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57") || code == "55000"
        }),
        _ => false,
    }
}

/// Returns whether the store gave up waiting for a database lock (`store.busy_timeout_ms`),
/// which is likely to pass.
pub fn is_busy(err: &StoreError) -> bool {
    if matches!(err, StoreError::PoolTimedOut { .. }) {
        return true;
    }
    let StoreError::Query(err) = err else {
        return false;
    };
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub fn store_message(err: &StoreError, during: StoreUse) -> String {
    let outcome = match during {
        StoreUse::Turn => "the turn was not saved",
        StoreUse::Read => "nothing was changed",
    };
    if is_busy(err) {
        return format!(
            "the history store is busy: no database lock or connection became free within \
             store.busy_timeout_ms; {outcome}, try again"
        );
    }
    match err {
        StoreError::Stopped => format!(
            "the history store has stopped; {outcome}. Restart the gateway, and see its log for \
             the cause"
        ),
        StoreError::FileMoved { .. } => format!(
            "the history store's database file was moved or deleted after the gateway opened it; \
             {outcome}. Restart the gateway, and see its log for the path"
        ),
        StoreError::Corrupt(_) => format!(
            "the history store holds an invalid row for this session; {outcome}. The gateway log \
             has the details"
        ),
        _ => format!(
            "the history store failed; {outcome}. Try again, and see the gateway log if it keeps \
             failing"
        ),
    }
}
