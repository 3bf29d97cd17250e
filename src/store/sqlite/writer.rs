//! The writer thread: one connection that commits the turns waiting for it together.
//!
//! Each `save_turn` sends its turn over a channel and waits for the outcome. The thread takes every
//! turn queued at that moment, up to [`MAX_BATCH_TURNS`], and writes them in one transaction
//! (group commit). Under load one commit and one set of WAL frames then serve many turns, and a
//! lone turn is still written at once, because the thread never waits for more turns to arrive.
//!
//! Every turn of a batch runs inside its own savepoint. A turn whose statements fail is rolled
//! back alone, its caller gets the error and the others still commit. When `BEGIN` or `COMMIT`
//! fails, the whole transaction rolls back and every caller of the batch gets that error, so a
//! turn is stored with all its rows or not at all.

use std::sync::Arc;
use std::thread;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::reader::ReadJob;
use crate::store::{NewTurn, StoreError, origin_to_str, status_to_str};

/// Most turns written in one transaction, which bounds how long the first caller of a batch waits.
const MAX_BATCH_TURNS: usize = 128;

const UPSERT_SESSION: &str = "INSERT INTO sessions (id, created_at_ms, updated_at_ms) \
     VALUES (?1, ?2, ?2) ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms";

const INSERT_MESSAGE: &str = "INSERT INTO messages (session_id, turn_id, role, content, user_id, \
     created_at_ms, provider, model, finish_reason, prompt_tokens, completion_tokens, \
     total_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

const INSERT_TOOL_CALL: &str = "INSERT INTO tool_calls (session_id, turn_id, seq, name, server, \
     tool, arguments, status, error, duration_ms, truncated, origin) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

const INSERT_CODE_MODE: &str =
    "INSERT INTO code_mode_attempts (session_id, turn_id, record) VALUES (?1, ?2, ?3)";

/// A turn to save and where to send the outcome.
pub(super) struct SaveJob {
    pub turn: NewTurn,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Work for the writer thread, in arrival order.
pub(super) enum Command {
    Save(SaveJob),
    /// A read, for an in-memory database, which only the writer's connection can see.
    Read(ReadJob),
}

/// Batches written between two requests to the checkpointer. A batch of one turn adds about five
/// log pages and a larger batch adds more, so this requests a checkpoint every few hundred pages
/// at the least. That keeps the log small, while the checkpoint's fsyncs stay a small cost per
/// turn at low rates.
const BATCHES_PER_CHECKPOINT: u32 = 64;

/// Starts the writer thread. It stops when every sender of `commands` is dropped. Every
/// [`BATCHES_PER_CHECKPOINT`] batches it sends on `checkpoints`, when given, without waiting.
pub(super) fn spawn(
    connection: Connection,
    commands: flume::Receiver<Command>,
    checkpoints: Option<flume::Sender<()>>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || run(connection, commands, checkpoints))
        .map(drop)
}

fn run(
    mut connection: Connection,
    commands: flume::Receiver<Command>,
    checkpoints: Option<flume::Sender<()>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH_TURNS);
    let mut batches = 0u32;
    while let Ok(command) = commands.recv() {
        accept(&mut connection, command, &mut batch);
        while batch.len() < MAX_BATCH_TURNS
            && let Ok(command) = commands.try_recv()
        {
            accept(&mut connection, command, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        write_batch(&connection, &mut batch);
        batches += 1;
        if batches == BATCHES_PER_CHECKPOINT {
            batches = 0;
            if let Some(checkpoints) = &checkpoints {
                let _ = checkpoints.try_send(());
            }
        }
    }
}

/// Queues a save, or runs a read at once. No transaction is open while turns are collected, so a
/// read returns only committed turns.
fn accept(connection: &mut Connection, command: Command, batch: &mut Vec<SaveJob>) {
    match command {
        Command::Save(job) => batch.push(job),
        Command::Read(read) => read(connection),
    }
}

/// Writes the batch in one transaction and sends every caller its outcome. A caller that stopped
/// waiting does not stop its turn from being written.
fn write_batch(connection: &Connection, batch: &mut Vec<SaveJob>) {
    let outcomes = match commit_batch(connection, batch) {
        Ok(outcomes) => outcomes,
        Err(err) => {
            rollback(connection);
            let err = Arc::new(err);
            batch
                .iter()
                .map(|_| Err(StoreError::Query(Arc::clone(&err))))
                .collect()
        }
    };
    for (job, outcome) in batch.drain(..).zip(outcomes) {
        let _ = job.reply.send(outcome);
    }
}

/// Returns each turn's own outcome, or the error that failed the whole transaction.
fn commit_batch(
    connection: &Connection,
    batch: &[SaveJob],
) -> rusqlite::Result<Vec<Result<(), StoreError>>> {
    // IMMEDIATE takes the write lock up front, where the busy timeout applies. A deferred
    // transaction could fail to upgrade its read lock without waiting.
    execute(connection, "BEGIN IMMEDIATE")?;
    let outcomes = batch
        .iter()
        .map(|job| save_in_savepoint(connection, &job.turn))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    execute(connection, "COMMIT")?;
    Ok(outcomes)
}

/// Inserts one turn inside a savepoint and rolls back to it when an insert fails. The outer error
/// is a failure of the savepoint itself, after which the transaction cannot go on.
fn save_in_savepoint(
    connection: &Connection,
    turn: &NewTurn,
) -> rusqlite::Result<Result<(), StoreError>> {
    execute(connection, "SAVEPOINT turn")?;
    let outcome = insert_turn(connection, turn);
    if outcome.is_err() {
        execute(connection, "ROLLBACK TO turn")?;
    }
    execute(connection, "RELEASE turn")?;
    Ok(outcome)
}

fn execute(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Ends a failed transaction. COMMIT can fail and leave the transaction open, for example on
/// SQLITE_BUSY, so an explicit ROLLBACK is needed before the next batch.
fn rollback(connection: &Connection) {
    if connection.is_autocommit() {
        return;
    }
    if let Err(err) = connection.execute_batch("ROLLBACK") {
        tracing::error!(error = %err, "Failed to roll back a failed batch of turns.");
    }
}

fn insert_turn(connection: &Connection, turn: &NewTurn) -> Result<(), StoreError> {
    let now = turn.messages.last().map_or(0, |m| m.created_at_ms);
    connection
        .prepare_cached(UPSERT_SESSION)?
        .execute(params![turn.session_id, now])?;
    insert_messages(connection, turn)?;
    insert_tool_calls(connection, turn)?;
    if let Some(record) = &turn.code_mode {
        connection
            .prepare_cached(INSERT_CODE_MODE)?
            .execute(params![turn.session_id, turn.turn_id, record.to_string()])?;
    }
    Ok(())
}

fn insert_messages(connection: &Connection, turn: &NewTurn) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(INSERT_MESSAGE)?;
    for message in &turn.messages {
        let usage = message.usage;
        insert.execute(params![
            turn.session_id,
            turn.turn_id,
            message.role.as_str(),
            message.content,
            turn.user_id,
            message.created_at_ms,
            message.provider,
            message.model,
            message.finish_reason,
            usage.map(|u| saturating_i64(u.prompt_tokens)),
            usage.map(|u| saturating_i64(u.completion_tokens)),
            usage.map(|u| saturating_i64(u.total_tokens)),
        ])?;
    }
    Ok(())
}

fn insert_tool_calls(connection: &Connection, turn: &NewTurn) -> rusqlite::Result<()> {
    if turn.tool_calls.is_empty() {
        return Ok(());
    }
    let mut insert = connection.prepare_cached(INSERT_TOOL_CALL)?;
    for (seq, call) in turn.tool_calls.iter().enumerate() {
        insert.execute(params![
            turn.session_id,
            turn.turn_id,
            seq as i64,
            call.name,
            call.server,
            call.tool,
            call.arguments.to_string(),
            status_to_str(call.status),
            call.error,
            saturating_i64(call.duration_ms),
            call.truncated,
            origin_to_str(call.origin),
        ])?;
    }
    Ok(())
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wire::Role;
    use crate::store::NewMessage;

    /// An in-memory database with the embedded migrations applied.
    fn database() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .pragma_update(None, "foreign_keys", true)
            .unwrap();
        for migration in sqlx::migrate!("./migrations/sqlite").iter() {
            connection.execute_batch(&migration.sql).unwrap();
        }
        connection
    }

    fn turn(session: &str, reply: &str) -> NewTurn {
        let message = |role, content: &str| NewMessage {
            role,
            content: content.to_owned(),
            created_at_ms: 1_700_000_000_000,
            provider: None,
            model: None,
            finish_reason: None,
            usage: None,
        };
        NewTurn {
            session_id: session.to_owned(),
            user_id: "u1".to_owned(),
            turn_id: format!("{session}-{reply}"),
            messages: vec![message(Role::User, "q"), message(Role::Assistant, reply)],
            tool_calls: Vec::new(),
            code_mode: None,
        }
    }

    /// Writes `turns` as one batch and returns each caller's outcome.
    fn write(connection: &Connection, turns: &[NewTurn]) -> Vec<Result<(), StoreError>> {
        let (mut batch, mut replies) = (Vec::new(), Vec::new());
        for turn in turns {
            let (reply, result) = oneshot::channel();
            batch.push(SaveJob {
                turn: turn.clone(),
                reply,
            });
            replies.push(result);
        }
        write_batch(connection, &mut batch);
        assert!(batch.is_empty(), "every job is answered");
        replies
            .into_iter()
            .map(|mut result| result.try_recv().unwrap())
            .collect()
    }

    fn count(connection: &Connection, sql: &str) -> i64 {
        connection.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn batch_stores_every_turn() {
        let connection = database();
        let outcomes = write(
            &connection,
            &[turn("s1", "a"), turn("s2", "b"), turn("s1", "c")],
        );
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(count(&connection, "SELECT count(*) FROM sessions"), 2);
        assert_eq!(count(&connection, "SELECT count(*) FROM messages"), 6);
        assert!(connection.is_autocommit(), "no transaction is left open");
    }

    #[test]
    fn failing_turn_rolls_back_alone() {
        let connection = database();
        connection
            .execute_batch(
                "CREATE TRIGGER reject_boom BEFORE INSERT ON messages WHEN NEW.content = 'boom' \
                 BEGIN SELECT RAISE(ABORT, 'rejected by test trigger'); END",
            )
            .unwrap();
        let turns = [turn("s1", "a"), turn("s2", "boom"), turn("s3", "c")];
        let outcomes = write(&connection, &turns);

        assert!(outcomes[0].is_ok());
        let error = outcomes[1].as_ref().unwrap_err().to_string();
        assert!(error.contains("rejected by test trigger"), "{error}");
        assert!(outcomes[2].is_ok());
        let sessions = "SELECT count(*) FROM sessions WHERE id = 's2'";
        assert_eq!(
            count(&connection, sessions),
            0,
            "the failed turn's session row"
        );
        let messages = "SELECT count(*) FROM messages WHERE session_id = 's2'";
        assert_eq!(
            count(&connection, messages),
            0,
            "the failed turn's user message"
        );
        assert_eq!(count(&connection, "SELECT count(*) FROM messages"), 4);
    }

    #[test]
    fn failed_commit_fails_every_turn_and_writes_nothing() {
        let connection = database();
        // A deferred foreign key is checked at COMMIT, so the turn with `late` fails the commit
        // of the whole batch after every insert succeeded.
        connection
            .execute_batch(
                "CREATE TABLE guard (session_id TEXT REFERENCES sessions (id) \
                     DEFERRABLE INITIALLY DEFERRED); \
                 CREATE TRIGGER guard_late AFTER INSERT ON messages WHEN NEW.content = 'late' \
                 BEGIN INSERT INTO guard VALUES ('missing'); END",
            )
            .unwrap();
        let outcomes = write(&connection, &[turn("s1", "a"), turn("s2", "late")]);

        for outcome in &outcomes {
            let error = outcome.as_ref().unwrap_err().to_string();
            assert!(error.contains("FOREIGN KEY"), "{error}");
        }
        assert_eq!(count(&connection, "SELECT count(*) FROM sessions"), 0);
        assert_eq!(count(&connection, "SELECT count(*) FROM messages"), 0);
        assert!(
            connection.is_autocommit(),
            "the failed transaction is rolled back"
        );

        let outcomes = write(&connection, &[turn("s1", "a")]);
        assert!(outcomes[0].is_ok(), "the next batch commits: {outcomes:?}");
    }
}
