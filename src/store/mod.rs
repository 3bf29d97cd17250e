//! Conversation history behind the [`HistoryStore`] trait.
//!
//! Callers only see the trait. [`open`] picks the implementation from the store URL: SQLite by
//! default, PostgreSQL for `postgres://` and `postgresql://` URLs, so that several gateway
//! replicas can share one history. A turn is written with [`HistoryStore::save_turn`] in one
//! transaction, after the model has replied, so no transaction is ever open while the gateway
//! waits on a model.

mod postgres;
mod sqlite;
mod write_health;

use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use write_health::{WriteFailure, WriteFault};

use crate::agent::{ToolCallOrigin, ToolCallRecord, ToolCallStatus};
use crate::config::StoreConfig;
use crate::provider::wire::{Role, Usage};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is invalid, or the migration connection failed.
    #[error("cannot open store {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot open store {url}: {source}")]
    Connect {
        url: String,
        source: rusqlite::Error,
    },
    #[error("cannot start a store thread: {0}")]
    Spawn(std::io::Error),
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A migration of a PostgreSQL database failed.
    #[error(
        "cannot migrate the PostgreSQL store at {server}: {source}; check that the user may \
         create tables in the database (CREATE on its schema), and see docs/store.md on upgrades"
    )]
    MigratePostgres {
        server: String,
        source: sqlx::migrate::MigrateError,
    },
    /// A migration of a SQLite file failed. `check` names what to look at.
    #[error("cannot migrate the SQLite store {url}: {source}; {check}")]
    MigrateFile {
        url: String,
        source: sqlx::migrate::MigrateError,
        check: &'static str,
    },
    /// Shared, because a failed commit fails every turn of its batch with the same error.
    #[error("store query failed: {0}")]
    Query(#[source] Arc<rusqlite::Error>),
    #[error("the store's database thread has stopped")]
    Stopped,
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    /// The PostgreSQL server could not be reached, or it rejected the connection or the login.
    /// `server` names the host, port, database and user, never the password.
    #[error("cannot connect to PostgreSQL at {server}: {source}; check store.url and the server")]
    Unreachable { server: String, source: sqlx::Error },
    #[error(
        "cannot connect to PostgreSQL at {server}: no answer within {timeout_ms} ms \
         (store.busy_timeout_ms); check store.url and the server"
    )]
    ConnectTimedOut { server: String, timeout_ms: u64 },
    /// The TLS handshake failed, or the server offers no TLS where `sslmode` needs it.
    #[error(
        "cannot connect to PostgreSQL at {server} over TLS: {source}; check `sslmode` and \
         `sslrootcert` in store.url, that the URL names the host as the server's certificate \
         does, and any client certificate in `sslcert` (rustls accepts only X.509 version 3)"
    )]
    TlsFailed { server: String, source: sqlx::Error },
    /// No pooled connection became free in time: the server is down or slow, or every connection
    /// is busy.
    #[error(
        "no PostgreSQL connection to {server} became free within {timeout_ms} ms \
         (store.busy_timeout_ms); the server may be down, or store.max_connections too small"
    )]
    PoolTimedOut { server: String, timeout_ms: u64 },
    #[error("store query failed: {0}")]
    Postgres(#[source] sqlx::Error),
    /// The SQLite database file was renamed, deleted or replaced after the store opened it, so
    /// what the store writes would not be found at the path after a restart.
    #[error(
        "the SQLite database file {} was moved, deleted or replaced after the gateway opened it \
         ({reason}); restart the gateway",
        path.display()
    )]
    FileMoved {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Query(Arc::new(err))
    }
}

/// A message to store as part of a turn.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub role: Role,
    pub content: String,
    pub created_at_ms: i64,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Everything one turn adds to a session, written atomically.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub session_id: String,
    pub user_id: String,
    pub turn_id: String,
    pub messages: Vec<NewMessage>,
    pub tool_calls: Vec<ToolCallRecord>,
    /// The audit record of the turn's code-mode attempt, as JSON.
    pub code_mode: Option<serde_json::Value>,
}

/// A message read back from the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub id: i64,
    pub turn_id: String,
    pub role: Role,
    pub content: String,
    pub user_id: String,
    pub created_at_ms: i64,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub finish_reason: Option<String>,
    /// `None` when the provider reported no usage.
    pub usage: Option<Usage>,
    /// On an assistant message: the tool calls of its turn, in request order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRecord>,
    /// On an assistant message: the audit record of its turn's code-mode attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_mode: Option<serde_json::Value>,
}

/// Request for a page of a session's history, the newest `limit` messages whose id is below
/// `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: NonZeroU32,
    /// A message id from [`MessagePage::next_before`]. `None` starts at the newest message.
    pub before: Option<i64>,
}

impl PageRequest {
    /// Returns how many rows a page query reads: one more than the page contains, which shows
    /// whether an older page exists.
    pub(crate) fn rows_to_read(&self) -> i64 {
        i64::from(self.limit.get()) + 1
    }
}

/// One page of a session's history.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    /// Oldest first. Tool calls and code-mode records are attached to their turn's assistant
    /// message when that message is on this page.
    pub messages: Vec<StoredMessage>,
    /// The `before` of the next older page, or `None` when no older message exists.
    pub next_before: Option<i64>,
}

impl MessagePage {
    /// Builds a page from up to `limit + 1` rows read newest first. The extra row only shows that
    /// an older page exists.
    pub(crate) fn from_newest_first(mut rows: Vec<StoredMessage>, limit: NonZeroU32) -> Self {
        let limit = limit.get() as usize;
        let has_older = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let next_before = match rows.first() {
            Some(oldest) if has_older => Some(oldest.id),
            _ => None,
        };
        Self {
            messages: rows,
            next_before,
        }
    }

    /// Returns the lowest and highest message id on the page, or `None` for an empty page.
    pub(crate) fn id_range(&self) -> Option<(i64, i64)> {
        let oldest = self.messages.first()?;
        let newest = self.messages.last()?;
        Some((oldest.id, newest.id))
    }
}

/// Durable conversation history.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Returns the last `limit` messages of a session, oldest first (none for an unknown session).
    async fn recent_messages(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Returns one page of a session's messages with their tool calls and code-mode records, or
    /// `None` when the session does not exist. The page and its cursor come from one snapshot.
    async fn message_page(
        &self,
        session_id: &str,
        request: PageRequest,
    ) -> Result<Option<MessagePage>, StoreError>;

    /// Creates the session if needed and appends the turn's rows atomically: all of them or none.
    async fn save_turn(&self, turn: &NewTurn) -> Result<(), StoreError>;

    /// Runs a trivial query to check that the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Returns the fault of the most recent commit when it failed and no commit has succeeded
    /// since. It reads what the store recorded and runs no query.
    fn write_failure(&self) -> Option<WriteFailure>;

    /// Closes the store's connections to a database server, so each one ends with a goodbye
    /// rather than a reset. A store without such connections has nothing to close.
    async fn close(&self) {}
}

/// Opens the store named by `config.url` and applies pending migrations.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn HistoryStore>, StoreError> {
    if is_postgres_url(&config.url) {
        return Ok(Arc::new(PostgresStore::open(config).await?));
    }
    Ok(Arc::new(SqliteStore::open(config).await?))
}

/// Returns `text` with U+FFFD in place of each NUL character (U+0000), which PostgreSQL's `text`
/// and `jsonb` cannot store. Text without one is returned as it is, without a copy.
pub fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// Returns whether a store URL names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub(crate) fn role_from_str(role: &str) -> Result<Role, StoreError> {
    match role {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        other => Err(StoreError::Corrupt(format!("unknown role `{other}`"))),
    }
}

pub(crate) fn status_from_str(status: &str) -> Result<ToolCallStatus, StoreError> {
    match status {
        "ok" => Ok(ToolCallStatus::Ok),
        "tool_error" => Ok(ToolCallStatus::ToolError),
        "failed" => Ok(ToolCallStatus::Failed),
        "rejected" => Ok(ToolCallStatus::Rejected),
        other => Err(StoreError::Corrupt(format!(
            "unknown tool call status `{other}`"
        ))),
    }
}

pub(crate) fn status_to_str(status: ToolCallStatus) -> &'static str {
    match status {
        ToolCallStatus::Ok => "ok",
        ToolCallStatus::ToolError => "tool_error",
        ToolCallStatus::Failed => "failed",
        ToolCallStatus::Rejected => "rejected",
    }
}

pub(crate) fn usage_from_columns(
    prompt: Option<i64>,
    completion: Option<i64>,
    total: Option<i64>,
) -> Option<Usage> {
    let (prompt, completion, total) = (prompt?, completion?, total?);
    Some(Usage {
        prompt_tokens: prompt.max(0) as u64,
        completion_tokens: completion.max(0) as u64,
        total_tokens: total.max(0) as u64,
    })
}

pub(crate) fn origin_from_str(origin: &str) -> Result<ToolCallOrigin, StoreError> {
    match origin {
        "tool_loop" => Ok(ToolCallOrigin::ToolLoop),
        "code_mode" => Ok(ToolCallOrigin::CodeMode),
        other => Err(StoreError::Corrupt(format!(
            "unknown tool call origin `{other}`"
        ))),
    }
}

pub(crate) fn origin_to_str(origin: ToolCallOrigin) -> &'static str {
    match origin {
        ToolCallOrigin::ToolLoop => "tool_loop",
        ToolCallOrigin::CodeMode => "code_mode",
    }
}

/// Attaches each turn's tool calls to that turn's assistant message.
pub(crate) fn attach_tool_calls(
    messages: &mut [StoredMessage],
    calls: Vec<(String, ToolCallRecord)>,
) {
    for (turn_id, call) in calls {
        if let Some(message) = assistant_of(messages, &turn_id) {
            message.tool_calls.push(call);
        }
    }
}

/// Attaches each turn's code-mode record to that turn's assistant message.
pub(crate) fn attach_attempts(
    messages: &mut [StoredMessage],
    attempts: Vec<(String, serde_json::Value)>,
) {
    for (turn_id, record) in attempts {
        if let Some(message) = assistant_of(messages, &turn_id) {
            message.code_mode = Some(record);
        }
    }
}

/// Finds the last assistant message of a turn.
fn assistant_of<'a>(
    messages: &'a mut [StoredMessage],
    turn_id: &str,
) -> Option<&'a mut StoredMessage> {
    messages
        .iter_mut()
        .rev()
        .find(|message| message.turn_id == turn_id && message.role == Role::Assistant)
}
