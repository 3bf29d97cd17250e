//! Writes: one read-write connection, used inline by an idle caller or by the writer thread.
//!
//! A caller that finds no turn queued and the connection free commits its own turn at once on its
//! own thread, so a save at a low rate wakes no other thread. Otherwise it sends the turn to the
//! writer thread and waits for the outcome. The thread takes every turn queued at that moment, up
//! to [`MAX_BATCH_TURNS`], and writes them in one transaction (group commit). Under load one commit
//! and one set of WAL frames then serve many turns, and the thread never waits for more turns to
//! arrive.
//!
//! Every turn of a batch runs inside its own savepoint. A turn whose statements fail is rolled
//! back alone, its caller gets the error and the others still commit. When `BEGIN` or `COMMIT`
//! fails, the whole transaction rolls back and every caller of the batch gets that error, so a
//! turn is stored with all its rows or not at all.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, params};
use tokio::sync::oneshot;

use super::checkpoint::{
    self, COMMITS_PER_CHECKPOINT, CheckpointConnections, Checkpointer, Restart,
};
use super::fault::write_fault;
use super::reader::ReadJob;
use crate::store::write_health::WriteHealth;
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

/// The read-write connection and the busy timeout it has now.
struct WriteConnection {
    connection: Connection,
    /// How long the writer thread waits for a database locked by another process.
    thread_busy_timeout: Duration,
    /// The busy timeout set on the connection now.
    busy_timeout: Duration,
}

impl WriteConnection {
    /// Sets the busy timeout, which is zero inline: a caller on an async worker must never sleep
    /// in SQLite's busy handler, so it hands a turn that finds the database locked to the thread.
    fn with_busy_timeout(&mut self, busy_timeout: Duration) -> rusqlite::Result<&mut Connection> {
        if self.busy_timeout != busy_timeout {
            self.connection.busy_timeout(busy_timeout)?;
            self.busy_timeout = busy_timeout;
        }
        Ok(&mut self.connection)
    }
}

/// The write side of the store. Dropping every clone stops the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    commands: flume::Sender<Command>,
    connection: Arc<Mutex<WriteConnection>>,
    checkpoints: Option<Arc<Checkpoints>>,
    health: Arc<WriteHealth>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &self.commands.len())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread on `connection`, whose busy timeout is `busy_timeout`. With
    /// `checkpoint_connections`, it also starts the checkpointer on them and nudges it every
    /// [`COMMITS_PER_CHECKPOINT`] commits. Every commit's outcome goes to `health`.
    pub(super) fn start(
        connection: Connection,
        busy_timeout: Duration,
        checkpoint_connections: Option<CheckpointConnections>,
        health: Arc<WriteHealth>,
    ) -> std::io::Result<Self> {
        let (commands, queue) = flume::unbounded();
        let connection = Arc::new(Mutex::new(WriteConnection {
            connection,
            thread_busy_timeout: busy_timeout,
            busy_timeout,
        }));
        let checkpoints = match checkpoint_connections {
            Some(connections) => {
                let checkpointer =
                    checkpoint::spawn(connections, restart_on(Arc::clone(&connection)))?;
                Some(Arc::new(Checkpoints {
                    checkpointer,
                    commits: AtomicU32::new(0),
                }))
            }
            None => None,
        };
        let writer = Self {
            commands,
            connection,
            checkpoints,
            health,
        };
        let thread_side = writer.clone_for_thread();
        thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || thread_side.run(&queue))?;
        Ok(writer)
    }

    /// Returns the thread's handle. It has no sender of commands, so dropping the store stops the
    /// thread.
    fn clone_for_thread(&self) -> ThreadSide {
        ThreadSide {
            connection: Arc::clone(&self.connection),
            checkpoints: self.checkpoints.clone(),
            health: Arc::clone(&self.health),
        }
    }

    /// Stores `turn`: inline when nothing is queued and the connection is free, else through the
    /// writer thread. The first commit after a checkpoint also goes through the thread, because
    /// it may wait for an fsync, which must not hold up an async worker and the requests on it.
    pub(super) async fn save(&self, turn: &NewTurn) -> Result<(), StoreError> {
        if self.commands.is_empty()
            && !restart_pending(self.checkpoints.as_deref())
            && let Some(outcome) = self.try_save_inline(turn)
        {
            committed(self.checkpoints.as_deref());
            return outcome;
        }
        let (reply, result) = oneshot::channel();
        let job = SaveJob {
            turn: turn.clone(),
            reply,
        };
        self.commands
            .send(Command::Save(job))
            .map_err(|_| StoreError::Stopped)?;
        result.await.map_err(|_| StoreError::Stopped)?
    }

    /// Commits `turn` alone on the calling thread. Returns `None`, with nothing written, when the
    /// connection is busy here or SQLite reports the database locked, so the turn goes to the
    /// writer thread, which waits for the lock.
    fn try_save_inline(&self, turn: &NewTurn) -> Option<Result<(), StoreError>> {
        let mut guard = match self.connection.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let connection = guard.with_busy_timeout(Duration::ZERO).ok()?;
        let result = commit_batch(connection, std::iter::once(turn));
        if let Err(err) = &result {
            rollback(connection);
            if is_locked(err) {
                return None;
            }
        }
        record_outcome(&self.health, &result);
        match result {
            Ok(mut outcomes) => outcomes.pop(),
            Err(err) => Some(Err(StoreError::Query(Arc::new(err)))),
        }
    }

    /// Runs `read` on the writer's connection, in order with the queued writes.
    pub(super) fn read(&self, read: ReadJob) -> Result<(), StoreError> {
        self.commands
            .send(Command::Read(read))
            .map_err(|_| StoreError::Stopped)
    }
}

/// The writer thread's share of the connection, the checkpoint counter and the commit record.
struct ThreadSide {
    connection: Arc<Mutex<WriteConnection>>,
    checkpoints: Option<Arc<Checkpoints>>,
    health: Arc<WriteHealth>,
}

impl ThreadSide {
    fn run(&self, queue: &flume::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH_TURNS);
        while let Ok(command) = queue.recv() {
            let mut guard = lock(&self.connection);
            let busy_timeout = guard.thread_busy_timeout;
            if let Err(err) = guard.with_busy_timeout(busy_timeout) {
                tracing::error!(error = %err, "Failed to set the busy timeout of the store's write connection.");
            }
            let connection = &mut guard.connection;
            accept(connection, command, &mut batch);
            while batch.len() < MAX_BATCH_TURNS
                && let Ok(command) = queue.try_recv()
            {
                accept(connection, command, &mut batch);
            }
            if batch.is_empty() {
                continue;
            }
            write_batch(connection, &mut batch, &self.health);
            drop(guard);
            if let Some(checkpoints) = &self.checkpoints {
                checkpoints
                    .checkpointer
                    .restart_pending
                    .store(false, Ordering::Release);
            }
            committed(self.checkpoints.as_deref());
        }
    }
}

/// Returns the checkpointer's way to run a restart checkpoint on `connection`, holding it so no
/// turn is written meanwhile.
fn restart_on(connection: Arc<Mutex<WriteConnection>>) -> Restart {
    Box::new(move || {
        let mut guard = lock(&connection);
        let busy_timeout = guard.thread_busy_timeout;
        let connection = guard.with_busy_timeout(busy_timeout)?;
        checkpoint::run_checkpoint(connection, "RESTART")
    })
}

fn lock(connection: &Mutex<WriteConnection>) -> MutexGuard<'_, WriteConnection> {
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts commits and nudges the checkpointer after enough of them.
#[derive(Debug)]
struct Checkpoints {
    checkpointer: Checkpointer,
    commits: AtomicU32,
}

/// Returns whether the next commit may start the log again, see [`Checkpointer`].
fn restart_pending(checkpoints: Option<&Checkpoints>) -> bool {
    checkpoints.is_some_and(|checkpoints| {
        checkpoints
            .checkpointer
            .restart_pending
            .load(Ordering::Acquire)
    })
}

/// Counts a commit. Every [`COMMITS_PER_CHECKPOINT`] commits it nudges the checkpointer without
/// waiting. A full channel already contains a pending nudge.
fn committed(checkpoints: Option<&Checkpoints>) {
    let Some(checkpoints) = checkpoints else {
        return;
    };
    if checkpoints.commits.fetch_add(1, Ordering::Relaxed) + 1 >= COMMITS_PER_CHECKPOINT {
        checkpoints.commits.store(0, Ordering::Relaxed);
        let _ = checkpoints.checkpointer.nudges.try_send(());
    }
}

fn is_locked(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
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
fn write_batch(connection: &Connection, batch: &mut Vec<SaveJob>, health: &WriteHealth) {
    let result = commit_batch(connection, batch.iter().map(|job| &job.turn));
    record_outcome(health, &result);
    let outcomes = match result {
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

/// Records a commit in `health`. It failed when the transaction, or a turn inside it, failed with
/// a store fault. A transaction that failed for one turn's rows, such as a deferred foreign key,
/// is not recorded.
fn record_outcome(health: &WriteHealth, result: &rusqlite::Result<Vec<Result<(), StoreError>>>) {
    let fault = match result {
        Ok(outcomes) => outcomes.iter().find_map(|outcome| match outcome {
            Err(StoreError::Query(err)) => write_fault(err),
            _ => None,
        }),
        Err(err) => match write_fault(err) {
            Some(fault) => Some(fault),
            None => return,
        },
    };
    match fault {
        Some(fault) => health.failed(fault),
        None => health.succeeded(),
    }
}

/// Returns each turn's own outcome, or the error that failed the whole transaction.
fn commit_batch<'a>(
    connection: &Connection,
    turns: impl Iterator<Item = &'a NewTurn>,
) -> rusqlite::Result<Vec<Result<(), StoreError>>> {
    // IMMEDIATE takes the write lock up front, where the busy timeout applies. A deferred
    // transaction could fail to upgrade its read lock without waiting.
    execute(connection, "BEGIN IMMEDIATE")?;
    let outcomes = turns
        .map(|turn| save_in_savepoint(connection, turn))
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
        write_batch(connection, &mut batch, &WriteHealth::new("sqlite"));
        assert!(batch.is_empty(), "every job is answered");
        replies
            .into_iter()
            .map(|mut result| result.try_recv().unwrap())
            .collect()
    }

    fn count(connection: &Connection, sql: &str) -> i64 {
        connection.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// Creates a migrated database file and starts a writer on it.
    fn file_writer(dir: &tempfile::TempDir) -> (Writer, std::path::PathBuf) {
        let path = dir.path().join("history.db");
        let location =
            super::super::connect::Location::parse(&format!("sqlite://{}", path.display()))
                .unwrap();
        let connection = super::super::connect::writer(&location, Duration::from_secs(5)).unwrap();
        for migration in sqlx::migrate!("./migrations/sqlite").iter() {
            connection.execute_batch(&migration.sql).unwrap();
        }
        let health = Arc::new(WriteHealth::new("sqlite"));
        let writer = Writer::start(connection, Duration::from_secs(5), None, health).unwrap();
        (writer, path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn save_waits_out_locked_database() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = file_writer(&dir);
        // Another connection holds the write lock for a while, so the inline attempt finds the
        // database locked. The turn must then wait on the writer thread, not fail.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
            other
        });

        writer.save(&turn("s1", "a")).await.unwrap();

        let other = release.join().unwrap();
        assert_eq!(count(&other, "SELECT count(*) FROM messages"), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_saves_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = file_writer(&dir);
        let saves = (0..400).map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .save(&turn(&format!("s{}", i % 7), &i.to_string()))
                    .await
            })
        });
        for save in futures_util::future::join_all(saves).await {
            save.unwrap().unwrap();
        }
        let reader = Connection::open(&path).unwrap();
        assert_eq!(count(&reader, "SELECT count(*) FROM messages"), 800);
        assert_eq!(
            count(&reader, "SELECT count(DISTINCT turn_id) FROM messages"),
            400
        );
    }

    #[tokio::test]
    async fn new_session_turn_writes_three_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = file_writer(&dir);
        writer.save(&turn("s1", "a")).await.unwrap();
        let other = Connection::open(&path).unwrap();
        let emptied = checkpoint::run_checkpoint(&other, "TRUNCATE").unwrap();
        assert_eq!(emptied.pages, 0, "the log starts empty");

        writer.save(&turn("s2", "b")).await.unwrap();

        // One page each for the sessions B-tree, the messages table and the messages index.
        let written = checkpoint::run_checkpoint(&other, "PASSIVE").unwrap();
        assert_eq!(written.pages, 3);
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

    #[test]
    fn rejected_rows_are_not_store_faults() {
        let health = WriteHealth::new("sqlite");
        let constraint = Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            None,
        ));
        record_outcome(&health, &constraint);
        assert_eq!(health.failure(), None, "a failed deferred foreign key");

        let turn_rejected = Ok(vec![Ok(()), Err(StoreError::Corrupt("bad".to_owned()))]);
        record_outcome(&health, &turn_rejected);
        assert_eq!(health.failure(), None, "one turn failed inside a commit");
    }

    #[test]
    fn io_error_is_recorded_until_commit() {
        let health = WriteHealth::new("sqlite");
        let io_error = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
            None,
        );
        record_outcome(&health, &Err(io_error));
        let failure = health.failure().expect("the failed commit is recorded");
        assert_eq!(failure.fault.kind, "io_error");

        record_outcome(&health, &Ok(vec![Ok(())]));
        assert_eq!(health.failure(), None, "a commit clears the failure");
    }
}
