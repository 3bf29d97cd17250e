//! Saving a turn: every row in one transaction, under the session's advisory lock.

use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgPool;

use crate::store::{NewTurn, StoreError, origin_to_str, status_to_str, without_nul};

/// First key of the session advisory locks. Two-key locks never collide with the one-key lock of
/// sqlx's migrations, and this fixed value keeps them apart from the two-key locks of other
/// programs on the database unless those choose the same number. The value is the ASCII bytes of
/// `xmlv`.
const SESSION_LOCK_CLASS: i32 = 0x786d_6c76;

/// Waits for the session's lock until the transaction ends. `hashtext` maps the session id to the
/// second key, so two sessions with the same hash only wait for each other.
const LOCK_SESSION: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

const UPSERT_SESSION: &str = "INSERT INTO sessions (id, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $2) ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms";

const INSERT_MESSAGE: &str = "INSERT INTO messages (session_id, turn_id, role, content, user_id, \
     created_at_ms, provider, model, finish_reason, prompt_tokens, completion_tokens, \
     total_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const INSERT_TOOL_CALL: &str = "INSERT INTO tool_calls (session_id, turn_id, seq, name, server, \
     tool, arguments, status, error, duration_ms, truncated, origin) \
     VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12)";

const INSERT_CODE_MODE: &str =
    "INSERT INTO code_mode_attempts (session_id, turn_id, record) VALUES ($1, $2, $3::jsonb)";

/// Writes every row of the turn in one transaction: all of them, or none when a statement or the
/// commit fails. Dropping an uncommitted transaction rolls it back.
///
/// The session's advisory lock, taken before any row is written, makes saves of one session from
/// several replicas append one turn after the other, so the rows of two turns never interleave.
/// The upsert of the session row would also wait for a concurrent save, but only as a side effect
/// of its row lock. The advisory lock is held only while the rows are written, and a save waits
/// for it at most `lock_timeout` (`store.busy_timeout_ms`).
///
/// NOTE: whole turns are not serialized across replicas, only their saves. The in-process session
/// lock orders the turns of one gateway, but two replicas can run turns on one session at the
/// same moment: both read the same history, and neither model request includes the other turn.
pub(super) async fn save_turn(pool: &PgPool, turn: &NewTurn) -> Result<(), StoreError> {
    let mut transaction = pool.begin().await.map_err(StoreError::Postgres)?;
    insert_turn(&mut transaction, turn)
        .await
        .map_err(StoreError::Postgres)?;
    transaction.commit().await.map_err(StoreError::Postgres)
}

// PostgreSQL's `text` and `jsonb` reject the NUL character (U+0000), which SQLite stores. The HTTP
// route rejects it in user text and the provider client replaces it in the model's text. Tool
// calls and code-mode records can still carry one, from a tool's output or the model's
// arguments, so this writer stores U+FFFD in its place there.
async fn insert_turn(connection: &mut PgConnection, turn: &NewTurn) -> sqlx::Result<()> {
    sqlx::query(LOCK_SESSION)
        .bind(SESSION_LOCK_CLASS)
        .bind(&turn.session_id)
        .execute(&mut *connection)
        .await?;
    let now = turn.messages.last().map_or(0, |m| m.created_at_ms);
    sqlx::query(UPSERT_SESSION)
        .bind(&turn.session_id)
        .bind(now)
        .execute(&mut *connection)
        .await?;
    insert_messages(connection, turn).await?;
    insert_tool_calls(connection, turn).await?;
    if let Some(record) = &turn.code_mode {
        sqlx::query(INSERT_CODE_MODE)
            .bind(&turn.session_id)
            .bind(&turn.turn_id)
            .bind(jsonb_text(record))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

async fn insert_messages(connection: &mut PgConnection, turn: &NewTurn) -> sqlx::Result<()> {
    for message in &turn.messages {
        let usage = message.usage;
        sqlx::query(INSERT_MESSAGE)
            .bind(&turn.session_id)
            .bind(&turn.turn_id)
            .bind(message.role.as_str())
            .bind(&message.content)
            .bind(&turn.user_id)
            .bind(message.created_at_ms)
            .bind(&message.provider)
            .bind(&message.model)
            .bind(&message.finish_reason)
            .bind(usage.map(|u| saturating_i64(u.prompt_tokens)))
            .bind(usage.map(|u| saturating_i64(u.completion_tokens)))
            .bind(usage.map(|u| saturating_i64(u.total_tokens)))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

async fn insert_tool_calls(connection: &mut PgConnection, turn: &NewTurn) -> sqlx::Result<()> {
    for (seq, call) in turn.tool_calls.iter().enumerate() {
        sqlx::query(INSERT_TOOL_CALL)
            .bind(&turn.session_id)
            .bind(&turn.turn_id)
            .bind(i32::try_from(seq).unwrap_or(i32::MAX))
            .bind(without_nul(call.name.clone()))
            .bind(call.server.clone().map(without_nul))
            .bind(call.tool.clone().map(without_nul))
            .bind(jsonb_text(&call.arguments))
            .bind(status_to_str(call.status))
            .bind(call.error.clone().map(without_nul))
            .bind(saturating_i64(call.duration_ms))
            .bind(call.truncated)
            .bind(origin_to_str(call.origin))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Returns `value` as JSON text for a `jsonb` column, with U+FFFD in place of each U+0000 in its
/// strings and keys.
fn jsonb_text(value: &Value) -> String {
    let text = value.to_string();
    // serde_json writes U+0000 only as the escape `\u0000`, so text without that has none.
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value = value.clone();
    replace_nul(&mut value);
    value.to_string()
}

fn replace_nul(value: &mut Value) {
    match value {
        Value::String(text) => *text = without_nul(std::mem::take(text)),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(key, mut item)| {
                    replace_nul(&mut item);
                    (without_nul(key), item)
                })
                .collect();
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
