//! The read queries and the conversion of their rows.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

use crate::agent::ToolCallRecord;
use crate::store::{
    MessagePage, PageRequest, StoreError, StoredMessage, attach_attempts, attach_tool_calls,
    origin_from_str, role_from_str, status_from_str, usage_from_columns,
};

// `message_from_row` reads these columns by name.
const RECENT_MESSAGES: &str = "SELECT id, turn_id, role, content, user_id, created_at_ms, \
     provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens \
     FROM messages WHERE session_id = $1 ORDER BY id DESC LIMIT $2";

// A page without a cursor is read with `RECENT_MESSAGES`. Both read one row more than the page
// contains, to show whether an older page exists.
const OLDER_PAGE: &str = "SELECT id, turn_id, role, content, user_id, created_at_ms, \
     provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens \
     FROM messages WHERE session_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

// Selects the records of every turn with a message whose id is from $2 to $3, the id range of a
// page.
// The JSON columns are read as text, so the crate needs no JSON support from sqlx.
const PAGE_TOOL_CALLS: &str = "SELECT turn_id, name, server, tool, \
     arguments::text AS arguments, status, error, duration_ms, truncated, origin \
     FROM tool_calls WHERE session_id = $1 AND turn_id IN \
     (SELECT turn_id FROM messages WHERE session_id = $1 AND id BETWEEN $2 AND $3) \
     ORDER BY turn_id, seq";

const PAGE_ATTEMPTS: &str = "SELECT turn_id, record::text AS record \
     FROM code_mode_attempts WHERE session_id = $1 AND turn_id IN \
     (SELECT turn_id FROM messages WHERE session_id = $1 AND id BETWEEN $2 AND $3) \
     ORDER BY id";

/// Returns the last `limit` messages of a session, oldest first.
pub(super) async fn recent_messages(
    pool: &PgPool,
    session_id: &str,
    limit: u32,
) -> Result<Vec<StoredMessage>, StoreError> {
    let rows = sqlx::query(RECENT_MESSAGES)
        .bind(session_id)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(StoreError::Postgres)?;
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    messages.reverse();
    Ok(messages)
}

/// Returns a page of a session's messages with their tool calls and code-mode records, or `None`
/// for an unknown session. The queries share one repeatable-read transaction, so they see the
/// same snapshot even while other replicas commit turns.
pub(super) async fn message_page(
    pool: &PgPool,
    session_id: &str,
    request: PageRequest,
) -> Result<Option<MessagePage>, StoreError> {
    let mut transaction = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(StoreError::Postgres)?;
    let page = read_page(&mut transaction, session_id, request).await?;
    transaction.commit().await.map_err(StoreError::Postgres)?;
    Ok(page)
}

async fn read_page(
    connection: &mut PgConnection,
    session_id: &str,
    request: PageRequest,
) -> Result<Option<MessagePage>, StoreError> {
    let exists = sqlx::query("SELECT 1 FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::Postgres)?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let query = match request.before {
        None => sqlx::query(RECENT_MESSAGES).bind(session_id),
        Some(before) => sqlx::query(OLDER_PAGE).bind(session_id).bind(before),
    };
    let rows = query
        .bind(request.rows_to_read())
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::Postgres)?
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut page = MessagePage::from_newest_first(rows, request.limit);
    let Some(ids) = page.id_range() else {
        return Ok(Some(page));
    };
    let calls = query_page(connection, PAGE_TOOL_CALLS, session_id, ids)
        .await?
        .iter()
        .map(tool_call_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let attempts = query_page(connection, PAGE_ATTEMPTS, session_id, ids)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_tool_calls(&mut page.messages, calls);
    attach_attempts(&mut page.messages, attempts);
    Ok(Some(page))
}

/// Runs a trivial query.
pub(super) async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(StoreError::Postgres)
}

/// Runs a query on the records of a page, whose parameters are the session id and the lowest
/// and highest message id of the page.
async fn query_page(
    connection: &mut PgConnection,
    sql: &'static str,
    session_id: &str,
    (oldest, newest): (i64, i64),
) -> Result<Vec<PgRow>, StoreError> {
    sqlx::query(sql)
        .bind(session_id)
        .bind(oldest)
        .bind(newest)
        .fetch_all(connection)
        .await
        .map_err(StoreError::Postgres)
}

fn message_from_row(row: &PgRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: get(row, "id")?,
        turn_id: get(row, "turn_id")?,
        role: role_from_str(get(row, "role")?)?,
        content: get(row, "content")?,
        user_id: get(row, "user_id")?,
        created_at_ms: get(row, "created_at_ms")?,
        provider: get(row, "provider")?,
        model: get(row, "model")?,
        finish_reason: get(row, "finish_reason")?,
        usage: usage_from_columns(
            get(row, "prompt_tokens")?,
            get(row, "completion_tokens")?,
            get(row, "total_tokens")?,
        ),
        tool_calls: Vec::new(),
        code_mode: None,
    })
}

fn tool_call_from_row(row: &PgRow) -> Result<(String, ToolCallRecord), StoreError> {
    let arguments: &str = get(row, "arguments")?;
    let record = ToolCallRecord {
        name: get(row, "name")?,
        server: get(row, "server")?,
        tool: get(row, "tool")?,
        arguments: serde_json::from_str(arguments)
            .map_err(|err| StoreError::Corrupt(format!("tool call arguments: {err}")))?,
        status: status_from_str(get(row, "status")?)?,
        error: get(row, "error")?,
        duration_ms: get::<i64>(row, "duration_ms")?.max(0) as u64,
        truncated: get(row, "truncated")?,
        origin: origin_from_str(get(row, "origin")?)?,
    };
    Ok((get(row, "turn_id")?, record))
}

fn attempt_from_row(row: &PgRow) -> Result<(String, serde_json::Value), StoreError> {
    let record = serde_json::from_str(get(row, "record")?)
        .map_err(|err| StoreError::Corrupt(format!("code mode record: {err}")))?;
    Ok((get(row, "turn_id")?, record))
}

/// Reads one column, converting a type mismatch into a store error.
fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(StoreError::Postgres)
}
