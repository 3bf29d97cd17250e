//! The read queries and the pool of read-only connections they run on.
//!
//! Under WAL, reads on these connections run in parallel with each other and with the writer.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};

use super::connect::{self, Location};
use crate::agent::ToolCallRecord;
use crate::store::{
    MessagePage, PageRequest, StoreError, StoredMessage, attach_attempts, attach_tool_calls,
    origin_from_str, role_from_str, status_from_str, usage_from_columns,
};

/// A read to run on a connection. It sends its own result back to the caller.
pub(super) type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

// `message_from_row` reads these columns by position, in this order.
const RECENT_MESSAGES: &str = "SELECT id, turn_id, role, content, user_id, created_at_ms, \
     provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens \
     FROM messages WHERE session_id = ?1 ORDER BY id DESC LIMIT ?2";

// A page without a cursor is read with `RECENT_MESSAGES`. Both read one row more than the page
// contains, to show whether an older page exists.
const OLDER_PAGE: &str = "SELECT id, turn_id, role, content, user_id, created_at_ms, \
     provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens \
     FROM messages WHERE session_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3";

// Selects the records of every turn with a message whose id is from ?2 to ?3, the id range of a
// page.
// `tool_call_from_row` reads these columns by position, in this order.
const PAGE_TOOL_CALLS: &str = "SELECT turn_id, name, server, tool, arguments, status, error, \
     duration_ms, truncated, origin FROM tool_calls WHERE session_id = ?1 AND turn_id IN \
     (SELECT turn_id FROM messages WHERE session_id = ?1 AND id BETWEEN ?2 AND ?3) \
     ORDER BY turn_id, seq";

const PAGE_ATTEMPTS: &str = "SELECT turn_id, record FROM code_mode_attempts \
     WHERE session_id = ?1 AND turn_id IN \
     (SELECT turn_id FROM messages WHERE session_id = ?1 AND id BETWEEN ?2 AND ?3) \
     ORDER BY id";

/// Read-only connections that reads borrow on the calling thread.
///
/// A history read takes tens of microseconds from the page cache, less than handing it to
/// another thread and waking the caller again, so it runs on the async worker that requests it.
/// A worker holds a connection only while its query runs and never across an await, so the pool
/// needs about one connection per worker thread.
#[derive(Debug)]
pub(super) struct ReadPool {
    location: Location,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    pub(super) fn new(location: Location, busy_timeout: Duration, max_idle: usize) -> Self {
        Self {
            location,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Runs `query` on an idle connection, or on a new one when all are in use.
    ///
    /// NOTE: this blocks the calling thread for the query. Under WAL a read does not wait for the
    /// writer, but SQLite's busy handler can still sleep up to the busy timeout in rare cases,
    /// such as while another process recovers the log after a crash.
    pub(super) fn run<T>(
        &self,
        query: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().expect("read pool poisoned").pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => connect::reader(&self.location, self.busy_timeout)?,
        };
        let result = query(&mut connection);
        let mut idle = self.idle.lock().expect("read pool poisoned");
        if idle.len() < self.max_idle {
            idle.push(connection);
        }
        result
    }
}

/// Returns the last `limit` messages of a session, oldest first.
pub(super) fn recent_messages(
    connection: &Connection,
    session_id: &str,
    limit: u32,
) -> Result<Vec<StoredMessage>, StoreError> {
    let mut statement = connection.prepare_cached(RECENT_MESSAGES)?;
    let mut messages = collect(
        statement.query(params![session_id, limit])?,
        message_from_row,
    )?;
    messages.reverse();
    Ok(messages)
}

/// Returns a page of a session's messages with their tool calls and code-mode records, read in
/// one transaction so they come from the same snapshot, or `None` for an unknown session.
pub(super) fn message_page(
    connection: &mut Connection,
    session_id: &str,
    request: PageRequest,
) -> Result<Option<MessagePage>, StoreError> {
    let transaction = connection.transaction()?;
    let exists = transaction
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
        .exists(params![session_id])?;
    if !exists {
        return Ok(None);
    }
    let rows = match request.before {
        None => {
            let mut statement = transaction.prepare_cached(RECENT_MESSAGES)?;
            collect(
                statement.query(params![session_id, request.rows_to_read()])?,
                message_from_row,
            )?
        }
        Some(before) => {
            let mut statement = transaction.prepare_cached(OLDER_PAGE)?;
            collect(
                statement.query(params![session_id, before, request.rows_to_read()])?,
                message_from_row,
            )?
        }
    };
    let mut page = MessagePage::from_newest_first(rows, request.limit);
    if let Some(ids) = page.id_range() {
        let calls = query_page(
            &transaction,
            PAGE_TOOL_CALLS,
            session_id,
            ids,
            tool_call_from_row,
        )?;
        let attempts = query_page(
            &transaction,
            PAGE_ATTEMPTS,
            session_id,
            ids,
            attempt_from_row,
        )?;
        attach_tool_calls(&mut page.messages, calls);
        attach_attempts(&mut page.messages, attempts);
    }
    transaction.commit()?;
    Ok(Some(page))
}

/// Runs a trivial query.
pub(super) fn ping(connection: &Connection) -> Result<(), StoreError> {
    connection
        .prepare_cached("SELECT 1")?
        .query_row([], |_| Ok(()))?;
    Ok(())
}

/// Runs a query on the records of a page, whose parameters are the session id and the lowest
/// and highest message id of the page.
fn query_page<T>(
    connection: &Connection,
    sql: &str,
    session_id: &str,
    (oldest, newest): (i64, i64),
    convert: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    collect(
        statement.query(params![session_id, oldest, newest])?,
        convert,
    )
}

fn collect<T>(
    mut rows: rusqlite::Rows<'_>,
    convert: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut values = Vec::new();
    while let Some(row) = rows.next()? {
        values.push(convert(row)?);
    }
    Ok(values)
}

/// Borrows a text column without copying it.
fn text<'r>(row: &'r Row<'_>, index: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(index)?
        .as_str()
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err)))
}

fn message_from_row(row: &Row<'_>) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: row.get(0)?,
        turn_id: row.get(1)?,
        role: role_from_str(text(row, 2)?)?,
        content: row.get(3)?,
        user_id: row.get(4)?,
        created_at_ms: row.get(5)?,
        provider: row.get(6)?,
        model: row.get(7)?,
        finish_reason: row.get(8)?,
        usage: usage_from_columns(row.get(9)?, row.get(10)?, row.get(11)?),
        tool_calls: Vec::new(),
        code_mode: None,
    })
}

fn tool_call_from_row(row: &Row<'_>) -> Result<(String, ToolCallRecord), StoreError> {
    let arguments = text(row, 4)?;
    let record = ToolCallRecord {
        name: row.get(1)?,
        server: row.get(2)?,
        tool: row.get(3)?,
        arguments: serde_json::from_str(arguments)
            .map_err(|err| StoreError::Corrupt(format!("tool call arguments: {err}")))?,
        status: status_from_str(text(row, 5)?)?,
        error: row.get(6)?,
        duration_ms: row.get::<_, i64>(7)?.max(0) as u64,
        truncated: row.get::<_, i64>(8)? != 0,
        origin: origin_from_str(text(row, 9)?)?,
    };
    Ok((row.get(0)?, record))
}

fn attempt_from_row(row: &Row<'_>) -> Result<(String, serde_json::Value), StoreError> {
    let record = serde_json::from_str(text(row, 1)?)
        .map_err(|err| StoreError::Corrupt(format!("code mode record: {err}")))?;
    Ok((row.get(0)?, record))
}
