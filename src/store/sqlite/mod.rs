//! SQLite history store: one file in WAL mode, migrations embedded in the binary.
//!
//! The store runs SQLite through rusqlite on one read-write connection ([`writer`]). A save that
//! finds the connection idle commits on the calling thread. Otherwise it goes to a writer thread,
//! which commits the turns waiting for it in one transaction. Reads run on the calling thread with
//! a pooled read-only connection ([`reader`]), and a checkpointer thread keeps the write-ahead log
//! short ([`checkpoint`]). Statements are prepared once per connection.
//!
//! sqlx ran every statement as a round trip to a per-connection worker thread, and those
//! hand-offs and the thread wake-ups around them cost more than SQLite itself. It remains only
//! for the embedded migrations, so existing databases keep their migration history.

mod checkpoint;
mod connect;
mod fault;
mod file_identity;
mod idle_copier;
mod reader;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::write_health::WriteHealth;
use super::{
    HistoryStore, MessagePage, NewTurn, PageRequest, StoreError, StoredMessage, WriteFailure,
};
use crate::config::StoreConfig;
use checkpoint::CheckpointConnections;
use connect::Location;
use file_identity::FileIdentity;
use reader::{ReadJob, ReadPool};
use writer::Writer;

/// SQLite history with one read-write connection and a pool of read connections.
///
/// SQLite allows one writer at a time, so all writes go through the single read-write
/// connection, whose thread also batches them. Reads run on the calling thread on read-only
/// connections, in parallel under WAL. An in-memory database exists only inside its connections,
/// so there the writer thread serves reads too.
///
/// Every read and save first checks that the database file is still the one opened, so a turn
/// is never confirmed after its file was moved or deleted.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Writer,
    /// `None` for an in-memory database.
    readers: Option<Arc<ReadPool>>,
    /// `None` for an in-memory database.
    file: Option<FileIdentity>,
    /// The outcome of the most recent commit.
    health: Arc<WriteHealth>,
}

impl SqliteStore {
    /// Opens or creates the database, applies pending migrations and starts the threads.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let location = Location::parse(&config.url)?;
        let busy_timeout = config.busy_timeout();
        let writer = {
            let location = location.clone();
            blocking(move || connect::writer(&location, busy_timeout)).await?
        };
        // The writer connection is already open, so an in-memory database lives on while the
        // migration connection comes and goes.
        connect::migrate(&location, busy_timeout).await?;
        let file = match &location {
            Location::Memory { .. } => None,
            Location::File { path, .. } => Some(FileIdentity::record(path)?),
        };
        let (checkpoints, readers) = match location {
            Location::Memory { .. } => (None, None),
            Location::File { .. } => (
                Some(open_checkpointer(&location, busy_timeout).await?),
                Some(open_readers(location, config).await?),
            ),
        };
        let health = Arc::new(WriteHealth::new("sqlite"));
        let writer = Writer::start(writer, busy_timeout, checkpoints, Arc::clone(&health))
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            writer,
            readers,
            file,
            health,
        })
    }

    /// Fails with [`StoreError::FileMoved`] when the database file is no longer at its path.
    fn check_file(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(file) => file.check(),
            None => Ok(()),
        }
    }

    /// Runs `query` on a read connection of the calling thread, or on the writer thread for an
    /// in-memory database.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.check_file()?;
        if let Some(readers) = &self.readers {
            return readers.run(query);
        }
        let (reply, result) = oneshot::channel();
        let job: ReadJob = Box::new(move |connection| {
            let _ = reply.send(query(connection));
        });
        self.writer.read(job)?;
        result.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Opens the first read connection now, so a broken database fails at startup. The pool opens
/// the others when reads overlap.
async fn open_readers(
    location: Location,
    config: &StoreConfig,
) -> Result<Arc<ReadPool>, StoreError> {
    let pool = ReadPool::new(
        location,
        config.busy_timeout(),
        config.max_connections as usize,
    );
    let pool = Arc::new(pool);
    let opened = Arc::clone(&pool);
    blocking(move || opened.run(|_| Ok(()))).await?;
    Ok(pool)
}

async fn open_checkpointer(
    location: &Location,
    busy_timeout: std::time::Duration,
) -> Result<CheckpointConnections, StoreError> {
    let location = location.clone();
    blocking(move || {
        Ok(CheckpointConnections {
            own: connect::checkpointer(&location, busy_timeout)?,
            idle: connect::checkpointer(&location, busy_timeout)?,
        })
    })
    .await
}

/// Runs blocking setup work, such as opening a database file, off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::Stopped)?
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn recent_messages(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let session_id = session_id.to_owned();
        self.read(move |connection| reader::recent_messages(connection, &session_id, limit))
            .await
    }

    async fn message_page(
        &self,
        session_id: &str,
        request: PageRequest,
    ) -> Result<Option<MessagePage>, StoreError> {
        self.check_file()?;
        let session_id = session_id.to_owned();
        let query = move |connection: &mut Connection| {
            reader::message_page(connection, &session_id, request)
        };
        match &self.readers {
            // A page can contain up to 1000 long messages, so it is read off the async workers.
            Some(readers) => {
                let readers = Arc::clone(readers);
                blocking(move || readers.run(query)).await
            }
            None => self.read(query).await,
        }
    }

    async fn save_turn(&self, turn: &NewTurn) -> Result<(), StoreError> {
        // Both the inline commit and the writer thread start here, so one check covers both.
        self.check_file()?;
        self.writer.save(turn).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| reader::ping(connection)).await
    }

    fn write_failure(&self) -> Option<WriteFailure> {
        self.health.failure()
    }
}
