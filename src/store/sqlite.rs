//! SQLite history store: one file in WAL mode, migrations embedded in the binary.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    HistoryStore, NewTurn, StoreError, StoredMessage, origin_from_str, origin_to_str,
    role_from_str, status_from_str, status_to_str, usage_from_columns,
};
use crate::agent::ToolCallRecord;
use crate::config::StoreConfig;

/// Largest write-ahead log kept on disk after a checkpoint, in bytes.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const MESSAGE_COLUMNS: &str = "id, turn_id, role, content, user_id, created_at_ms, provider, \
     model, finish_reason, prompt_tokens, completion_tokens, total_tokens";

/// SQLite history with one writer connection and a pool of readers.
///
/// SQLite allows one writer at a time. Letting several pooled connections race for the write lock
/// makes the losers sleep in SQLite's busy handler (in steps of up to 100 ms), so writes queue on
/// the single writer connection instead, asynchronously, while reads run in parallel under WAL.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl SqliteStore {
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            url: config.url.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&config.url)
            .map_err(open_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.busy_timeout())
            .foreign_keys(true)
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES.to_string());
        let writer = pool(options.clone(), 1).await.map_err(open_error)?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        // An in-memory database exists once per connection, so it must use the writer alone.
        let reader = if config.url.contains(":memory:") {
            writer.clone()
        } else {
            pool(options.read_only(true), config.max_connections)
                .await
                .map_err(open_error)?
        };
        Ok(Self { reader, writer })
    }
}

async fn pool(options: SqliteConnectOptions, size: u32) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        // A ping before every acquire would add a round trip to the connection's worker thread;
        // a broken connection surfaces on the query itself instead.
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn message_from_row(row: &SqliteRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: row.try_get("id")?,
        turn_id: row.try_get("turn_id")?,
        role: role_from_str(row.try_get("role")?)?,
        content: row.try_get("content")?,
        user_id: row.try_get("user_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        finish_reason: row.try_get("finish_reason")?,
        usage: usage_from_columns(
            row.try_get("prompt_tokens")?,
            row.try_get("completion_tokens")?,
            row.try_get("total_tokens")?,
        ),
        tool_calls: Vec::new(),
        code_mode: None,
    })
}

fn tool_call_from_row(row: &SqliteRow) -> Result<(String, ToolCallRecord), StoreError> {
    let arguments: String = row.try_get("arguments")?;
    let record = ToolCallRecord {
        name: row.try_get("name")?,
        server: row.try_get("server")?,
        tool: row.try_get("tool")?,
        arguments: serde_json::from_str(&arguments)
            .map_err(|err| StoreError::Corrupt(format!("tool call arguments: {err}")))?,
        status: status_from_str(row.try_get("status")?)?,
        error: row.try_get("error")?,
        duration_ms: row.try_get::<i64, _>("duration_ms")?.max(0) as u64,
        truncated: row.try_get::<i64, _>("truncated")? != 0,
        origin: origin_from_str(row.try_get("origin")?)?,
    };
    Ok((row.try_get("turn_id")?, record))
}

/// Attaches each turn's tool calls to that turn's assistant message.
fn attach_tool_calls(messages: &mut [StoredMessage], calls: Vec<(String, ToolCallRecord)>) {
    for (turn_id, call) in calls {
        let assistant = messages
            .iter_mut()
            .rev()
            .find(|m| m.turn_id == turn_id && m.role == crate::provider::wire::Role::Assistant);
        if let Some(message) = assistant {
            message.tool_calls.push(call);
        }
    }
}

fn attempt_from_row(row: &SqliteRow) -> Result<(String, serde_json::Value), StoreError> {
    let record: String = row.try_get("record")?;
    let record = serde_json::from_str(&record)
        .map_err(|err| StoreError::Corrupt(format!("code mode record: {err}")))?;
    Ok((row.try_get("turn_id")?, record))
}

/// Attaches each turn's code-mode record to that turn's assistant message.
fn attach_attempts(messages: &mut [StoredMessage], attempts: Vec<(String, serde_json::Value)>) {
    for (turn_id, record) in attempts {
        let assistant = messages
            .iter_mut()
            .rev()
            .find(|m| m.turn_id == turn_id && m.role == crate::provider::wire::Role::Assistant);
        if let Some(message) = assistant {
            message.code_mode = Some(record);
        }
    }
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn recent_messages(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY id DESC LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn session_messages(
        &self,
        session_id: &str,
    ) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        let mut tx = self.reader.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM sessions WHERE id = ?")
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .fetch_all(&mut *tx)
            .await?;
        let call_rows = sqlx::query(
            "SELECT turn_id, name, server, tool, arguments, status, error, duration_ms, truncated, \
             origin FROM tool_calls WHERE session_id = ? ORDER BY turn_id, seq",
        )
        .bind(session_id)
        .fetch_all(&mut *tx)
        .await?;
        let attempt_rows = sqlx::query(
            "SELECT turn_id, record FROM code_mode_attempts WHERE session_id = ? ORDER BY id",
        )
        .bind(session_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let calls = call_rows
            .iter()
            .map(tool_call_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        attach_tool_calls(&mut messages, calls);
        let attempts = attempt_rows
            .iter()
            .map(attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        attach_attempts(&mut messages, attempts);
        Ok(Some(messages))
    }

    // TODO: each statement is a hand-off to sqlx's per-connection worker thread, and those
    // hand-offs, not SQLite, dominate the cost per message (docs/benchmarks.md). Batching the
    // turns that wait for the writer into one transaction would amortize BEGIN and COMMIT.
    async fn save_turn(&self, turn: &NewTurn) -> Result<(), StoreError> {
        let now = turn.messages.last().map_or(0, |m| m.created_at_ms);
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, created_at_ms, updated_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&turn.session_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // One statement for all messages: each statement is a round trip to sqlx's worker thread.
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (session_id, turn_id, role, content, user_id, created_at_ms, \
             provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens) ",
        );
        insert.push_values(&turn.messages, |mut row, message| {
            let usage = message.usage;
            row.push_bind(&turn.session_id)
                .push_bind(&turn.turn_id)
                .push_bind(message.role.as_str())
                .push_bind(&message.content)
                .push_bind(&turn.user_id)
                .push_bind(message.created_at_ms)
                .push_bind(&message.provider)
                .push_bind(&message.model)
                .push_bind(&message.finish_reason)
                .push_bind(usage.map(|u| saturating_i64(u.prompt_tokens)))
                .push_bind(usage.map(|u| saturating_i64(u.completion_tokens)))
                .push_bind(usage.map(|u| saturating_i64(u.total_tokens)));
        });
        insert.build().execute(&mut *tx).await?;
        for (seq, call) in turn.tool_calls.iter().enumerate() {
            sqlx::query(
                "INSERT INTO tool_calls (session_id, turn_id, seq, name, server, tool, arguments, \
                 status, error, duration_ms, truncated, origin) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&turn.session_id)
            .bind(&turn.turn_id)
            .bind(seq as i64)
            .bind(&call.name)
            .bind(&call.server)
            .bind(&call.tool)
            .bind(call.arguments.to_string())
            .bind(status_to_str(call.status))
            .bind(&call.error)
            .bind(saturating_i64(call.duration_ms))
            .bind(i64::from(call.truncated))
            .bind(origin_to_str(call.origin))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(record) = &turn.code_mode {
            sqlx::query(
                "INSERT INTO code_mode_attempts (session_id, turn_id, record) VALUES (?, ?, ?)",
            )
            .bind(&turn.session_id)
            .bind(&turn.turn_id)
            .bind(record.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
